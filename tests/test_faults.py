"""Fault injection: every case gets one `error:` line that names the cause and a fix that works, and
nothing is lost — after recovery the final artifacts hash the same as an undisturbed run.

(Kill mid-training and SIGTERM of a driver: tests/test_pipeline.py; a planted pickle and run names
that are paths: tests/test_security.py.)
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import ENTRY, ROOT, run_cli

pytestmark = pytest.mark.integration
FAST = ["debug=fast", "launcher=inline"]
TRAIN = FAST + ["stages=[train]"]


def _one_error_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _trained(out: Path, run: str) -> Path:
    (d,) = [p for p in (out / run).glob("train-*") if (p / "DONE").exists()]
    return d / "model" / "model.safetensors"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An undisturbed run: data, base model and training; the final weights' hash."""
    out = tmp_path_factory.mktemp("ref")
    run_cli(TRAIN + ["run=ref"], out, check=True)
    return out, _sha(_trained(out, "ref"))


@pytest.fixture
def tmpfs(tmp_path):
    """A small filesystem of our own, where the machine allows mounting (root, CI)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_one_line_and_the_rerun_recovers_the_same_weights(tmpfs, reference):
    ref_out, ref_hash = reference
    out = tmpfs / "out"
    run_cli(FAST + ["stages=[base_model]", "run=ref"], out, check=True)
    st = os.statvfs(tmpfs)
    filler = tmpfs / "filler"
    with open(filler, "wb") as fh:  # leave ~200 KB: less than one training checkpoint
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 200_000))
    line = _one_error_line(run_cli(TRAIN + ["run=ref"], out))
    assert "no space left" in line and "free space" in line and "train-" in line, line
    assert not any(p.name.startswith(".") and ".tmp-" in p.name for p in (out / "ref").rglob("*"))
    filler.unlink()
    again = run_cli(TRAIN + ["run=ref"], out, check=True)
    assert "skip data" in again.stdout + again.stderr
    assert _sha(_trained(out, "ref")) == ref_hash


def test_a_read_only_tree_allows_dry_run_status_and_report_elsewhere(tmpfs, reference, tmp_path):
    ref_out, _ = reference
    shutil.copytree(ref_out / "ref", tmpfs / "ref")
    assert subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)]).returncode == 0
    dry = run_cli(TRAIN + ["run=ref", "dry_run=true"], tmpfs)
    assert dry.returncode == 0 and "skip train" in dry.stdout, dry.stderr[-2000:]
    line = _one_error_line(run_cli(TRAIN + ["run=ref", "force=train"], tmpfs))
    assert "read-only" in line and "out_dir" in line
    status = subprocess.run([sys.executable, "-m", "taylorlab.cli", "status", str(tmpfs / "ref")],
                            capture_output=True, text=True)
    assert status.returncode == 0 and "done" in status.stdout
    page = tmp_path / "page" / "index.html"
    rep = subprocess.run([sys.executable, "-m", "taylorlab.cli", "report", str(tmpfs / "ref"), "-o", str(page)],
                         capture_output=True, text=True)
    assert rep.returncode == 0 and page.exists(), rep.stderr
    here = subprocess.run([sys.executable, "-m", "taylorlab.cli", "report", str(tmpfs / "ref")],
                          capture_output=True, text=True)
    assert here.returncode != 0 and here.stderr.startswith("error:") and "--output" in here.stderr


def test_two_pipelines_on_one_tree_and_stale_locks_give_the_same_weights(reference, tmp_path):
    _, ref_hash = reference
    plan = run_cli(TRAIN + ["run=ref", "dry_run=true"], tmp_path, check=True).stdout
    for name in (w for w in plan.split() if w.startswith(("data-", "base_model-", "train-"))):
        (tmp_path / "ref" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "ref" / name / ".lock").write_text("held by a process that was killed\n")  # stale
    env = {**os.environ, "CI": "1"}
    cmd = [sys.executable, str(ENTRY), f"out_dir={tmp_path}", "run=ref", *TRAIN]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    assert len([p for p in (tmp_path / "ref").glob("train-*")]) == 1
    assert _sha(_trained(tmp_path, "ref")) == ref_hash


@pytest.mark.parametrize("override, words", [
    ("prune.batch_size=0", "prune.batch_size"), ("evaluate.batch_size=0", "evaluate.batch_size"),
    ("calibrate.batch_size=0", "calibrate.batch_size"), ("prune.device=gpu", "prune.device"),
    ("record.device=cuda:x", "record.device"), ("memorize.device=tpu", "memorize.device"),
    ("estimate.orders=[[0,1,1,2,3,4]]", "estimate.orders[0]"),
])
def test_bad_values_are_config_errors_naming_the_key(override, words):
    """Caught before anything runs; the entry point prints such an error as its one line
    (tests/test_configs.py runs that path through the real entry point)."""
    from hydra import compose, initialize_config_dir

    from taylorlab.config import register_configs
    from taylorlab.config.schema import validate
    from taylorlab.errors import ConfigError

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="pipeline", overrides=["debug=fast", override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_bad_inputs_found_at_run_time_each_get_one_line(reference, tmp_path):
    ref_out, _ = reference
    empty = tmp_path / "empty-model"
    empty.mkdir()
    cases = [
        (["run=ref", "stages=[record]", "record.seq_len=100"], "record.seq_len=100"),
        (["run=ref", "model.source=pretrained", f"model.name_or_path={empty}", "stages=[base_model]"], "config.json"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["run=ref", "stages=[train]", "force=train", "train.device=cuda:0"], "GPU"))
    for args, words in cases:
        line = _one_error_line(run_cli(FAST + args, ref_out))
        assert words in line, (args, line)
    # Slurm's tools missing from PATH: one line, nothing submitted
    bin_dir = tmp_path / "bin"  # an empty PATH
    bin_dir.mkdir()
    proc = subprocess.run([sys.executable, str(ENTRY), f"out_dir={tmp_path / 'slurm'}", "debug=fast",
                           "launcher=slurm", f"run=s{uuid.uuid4().hex[:6]}"], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": str(bin_dir), "CI": "1", "HOME": os.environ.get("HOME", "/root")})
    assert "sbatch" in _one_error_line(proc) and not list((tmp_path / "slurm").rglob("submission.json"))


def test_status_and_report_refuse_what_is_not_a_run_directory(reference, tmp_path):
    ref_out, _ = reference
    stage = next((ref_out / "ref").glob("train-*"))
    for target, words in ((tmp_path, "holds no stage directories"), (stage, "is a stage directory")):
        for cmd in ("status", "report"):
            proc = subprocess.run([sys.executable, "-m", "taylorlab.cli", cmd, str(target)], capture_output=True,
                                  text=True)
            assert proc.returncode != 0 and proc.stderr.startswith("error:") and words in proc.stderr, proc.stderr
    assert not (tmp_path / "report").exists() and not (stage / "report").exists()


def test_status_prints_a_multi_line_coloured_cause_as_one_plain_line(reference, tmp_path):
    ref_out, _ = reference
    run = tmp_path / "ref"
    shutil.copytree(ref_out / "ref", run)
    failed = next(run.glob("train-*"))
    (failed / "DONE").unlink()
    (failed / "FAILED").write_text(json.dumps({"cause": "\x1b[31mRuntimeError\x1b[0m: first line\n  second line"}))
    proc = subprocess.run([sys.executable, "-m", "taylorlab.cli", "status", str(run)], capture_output=True, text=True)
    row = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("train ")]
    assert row and "\x1b" not in proc.stdout and "RuntimeError: first line second line" in row[0], proc.stdout


def test_a_stage_process_killed_by_sigkill_is_one_line_and_the_rerun_resumes(reference, tmp_path):
    """The out-of-memory killer's way: the stage's own process dies at once, its driver survives.
    (That the resumed weights equal an uninterrupted run's: the SIGKILL test of tests/test_pipeline.py.)"""
    import signal
    import time

    out = tmp_path / "out"
    shutil.copytree(reference[0] / "ref", out / "ref")  # data and base model done: only train runs
    args = [f"out_dir={out}", "debug=fast", "launcher=local", "stages=[train]", "run=ref",
            "train.max_batches=150", "train.checkpoint_every=5"]
    env = {**os.environ, "CI": "1"}
    driver = subprocess.Popen([sys.executable, str(ENTRY), *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    new_ckpt = lambda: [p for p in (out / "ref").glob("train-*/checkpoints/step-*/meta.json")]  # noqa: E731
    while time.time() < deadline and not new_ckpt():
        time.sleep(0.05)
    victims = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and int(d.name) != driver.pid
               and str(out / "ref") in _cmdline(d) and "submitit" in _cmdline(d)]
    assert victims, "no stage process found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    _, err = driver.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert driver.returncode != 0 and len(lines) == 1, err[-3000:]
    assert "without recording a cause" in lines[0] and "run the same command again" in lines[0], lines[0]
    again = run_cli(args[1:], out, check=True)
    assert "ran 1 stage(s) train" in again.stdout
    (train_dir,) = [d for d in (out / "ref").glob("train-*") if "resumed from step-" in (d / "stage.log").read_text()]
    assert (train_dir / "DONE").exists()


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
