"""Nothing from a run tree or a user path is ever unpickled; run names cannot leave out_dir."""

import ast
import json
import pickle
import re
from pathlib import Path

import pytest

from helpers import ROOT, run_cli

FAST = ["debug=fast", "launcher=inline"]


def test_no_torch_load_without_weights_only_anywhere_in_the_repository():
    offenders = []
    for path in [*ROOT.glob("src/**/*.py"), *ROOT.glob("benchmarks/**/*.py"), *ROOT.glob("tests/**/*.py"),
                 *ROOT.glob("pipelines/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)
                if not ok:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _plant(ckpt_dir: Path, marker: Path, step: int = 4) -> Path:
    d = ckpt_dir / f"step-{step:07d}"
    d.mkdir(parents=True)
    (d / "state.pt").write_bytes(pickle.dumps({"model": _Payload(marker), "step": step}))
    (d / "meta.json").write_text(json.dumps({"step": step, "batches_done": step}))
    return d


def _train_dir(tmp_path, run):
    plan = run_cli(FAST + [f"run={run}", "stages=[train]", "dry_run=true"], tmp_path, check=True).stdout
    name = re.search(r"(train-[0-9a-f]{12})", plan).group(1)
    return tmp_path / run / name


def test_a_planted_pickle_is_inert_on_resume_and_on_force(tmp_path):
    marker = tmp_path / "PWNED"
    d = _train_dir(tmp_path, "sec")
    planted = _plant(d / "checkpoints", marker)
    resumed = run_cli(FAST + ["run=sec", "stages=[train]"], tmp_path)
    assert resumed.returncode != 0 and not marker.exists()
    lines = [ln for ln in resumed.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(planted) in lines[0] and "delete that folder" in lines[0], resumed.stderr[-2000:]
    assert planted.exists()  # nothing is removed behind the user's back
    forced = run_cli(FAST + ["run=sec", "stages=[train]", "force=train"], tmp_path)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert not marker.exists() and (d / "DONE").exists() and not planted.exists()


@pytest.mark.parametrize("name", ["../escape", "..", "/tmp/taylorlab-abs", "a/b", "~user"])
def test_run_names_are_names_not_paths(name, tmp_path):
    out = tmp_path / "out"
    for extra in (["dry_run=true"], []):
        proc = run_cli(FAST + [f"run={name}", *extra], out)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:") and "run=" in lines[0], \
            proc.stderr
    assert not (tmp_path / "escape").exists() and not Path("/tmp/taylorlab-abs").exists()
    assert not out.exists() or not any(out.rglob("*"))
