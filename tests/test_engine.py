"""The engine on a toy graph: planning, hashing, skipping, forcing, failures, executors."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from taylorlab.engine import Graph, Node, StageSpec
from taylorlab.engine.executors import execute
from taylorlab.engine.runner import make_plan
from taylorlab.errors import ConfigError, StageFailed

ROOT = Path(__file__).resolve().parent

PRODUCE = StageSpec("produce", "toy_stages:produce")
EXPLODE = StageSpec("explode", "toy_stages:explode")


def toy_graph(fail_b=False):
    return Graph([
        Node("a", PRODUCE, config="a"),
        Node("b", EXPLODE if fail_b else PRODUCE, parents={"x": ("a",)}, config="b"),
        Node("c", PRODUCE, parents={"x": ("b",)}, config="c"),
        Node("d", PRODUCE, parents={"x": ("a",)}, config="d"),
    ])


def toy_cfg(tmp_path, launcher="inline", **over):
    res = {"cpus": 1, "gpus": 0, "mem_gb": 1, "timeout_min": 5, "nodes": 1, "tasks_per_node": 1}
    cfg = {
        "run": "toy", "out_dir": str(tmp_path), "stages": [], "force": None, "dry_run": False, "progress": False,
        "launcher": {"name": launcher, "max_parallel": 2, "cpu_budget": 2, "poll_interval_s": 0.1},
        "wandb": {"mode": "disabled"},
        **{k: {"value": i + 1, "device": "cpu", "resources": res} for i, k in enumerate("abcd")},
    }
    c = OmegaConf.create(cfg)
    for k, v in over.items():
        OmegaConf.update(c, k, v)
    return c


def calls(tmp_path):
    p = Path(tmp_path) / "toy" / "calls.log"
    return p.read_text().split() if p.exists() else []


def test_resolve_pulls_in_parents_in_topological_order():
    bound = toy_graph().resolve(["c"])
    assert list(bound) == ["a", "b", "c"]
    assert bound["c"] == {"x": "b"}


def test_candidate_parents_bind_to_the_selected_one():
    g = Graph([Node("base", PRODUCE), Node("trained", PRODUCE, parents={"m": ("base",)}),
               Node("eval", PRODUCE, parents={"m": ("trained", "base")})])
    assert g.resolve(["eval"])["eval"] == {"m": "base"}
    assert g.resolve(["trained", "eval"])["eval"] == {"m": "trained"}


def test_unknown_stage_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nosuch"):
        make_plan(toy_graph(), toy_cfg(tmp_path, stages=["nosuch"]))


def test_hash_depends_on_config_and_parents(tmp_path):
    p1 = make_plan(toy_graph(), toy_cfg(tmp_path))
    p2 = make_plan(toy_graph(), toy_cfg(tmp_path, **{"a.value": 5}))
    assert p1.stages["a"].hash != p2.stages["a"].hash
    assert p1.stages["c"].hash != p2.stages["c"].hash  # through the parents
    p3 = make_plan(toy_graph(), toy_cfg(tmp_path, **{"a.resources.cpus": 2}))
    assert p1.stages["a"].hash == p3.stages["a"].hash  # resources do not change results


def test_run_then_skip_then_force(tmp_path):
    execute(toy_graph(), toy_cfg(tmp_path))
    assert calls(tmp_path) == ["a", "b", "c", "d"]
    c_dir = make_plan(toy_graph(), toy_cfg(tmp_path)).stages["c"].dir
    assert (c_dir / "out.txt").read_text() == "6"  # 1 + 2 + 3
    for f in ("config.yaml", "provenance.json", "manifest.json", "stage.log", "metrics.jsonl", "DONE"):
        assert (c_dir / f).exists(), f
    prov = json.loads((c_dir / "provenance.json").read_text())
    assert "torch" in prov["libraries"] and prov["host"]
    plan = execute(toy_graph(), toy_cfg(tmp_path))
    assert all(s.action == "skip" for s in plan.stages.values())
    assert calls(tmp_path) == ["a", "b", "c", "d"]
    execute(toy_graph(), toy_cfg(tmp_path, force="b"))
    assert calls(tmp_path)[4:] == ["b", "c"]


def test_dry_run_runs_nothing(tmp_path, capsys):
    execute(toy_graph(), toy_cfg(tmp_path, dry_run=True))
    assert calls(tmp_path) == []
    assert "run  a" in capsys.readouterr().out


@pytest.mark.parametrize("launcher", ["inline", "local"])
def test_failed_stage_leaves_no_done_and_blocks_dependents(tmp_path, launcher, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{ROOT.parent / 'src'}")
    with pytest.raises(StageFailed) as err:
        execute(toy_graph(fail_b=True), toy_cfg(tmp_path, launcher=launcher))
    msg = str(err.value)
    assert "stage b failed" in msg and "boom in the toy stage" in msg and "stage.log" in msg
    assert "\n" not in msg
    plan = make_plan(toy_graph(fail_b=True), toy_cfg(tmp_path))
    b = plan.stages["b"].dir
    assert not (b / "DONE").exists() and (b / "FAILED").exists()
    assert "boom" in (b / "stage.log").read_text()
    assert "c" not in calls(tmp_path)  # the dependent never ran
    assert not plan.stages["c"].dir.exists() or not (plan.stages["c"].dir / "DONE").exists()
    if launcher == "local":
        assert "d" in calls(tmp_path)  # an independent branch still ran


def test_local_executor_runs_in_separate_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{ROOT.parent / 'src'}")
    plan = execute(toy_graph(), toy_cfg(tmp_path, launcher="local"))
    pids = {json.loads((s.dir / "provenance.json").read_text())["pid"] for s in plan.stages.values()}
    assert len(pids) == 4
    assert all(json.loads((s.dir / "provenance.json").read_text())["job_id"] for s in plan.stages.values())


def test_done_with_corrupt_manifest_is_rerun(tmp_path):
    execute(toy_graph(), toy_cfg(tmp_path))
    d = make_plan(toy_graph(), toy_cfg(tmp_path)).stages["d"].dir
    (d / "manifest.json").write_text("{half")
    plan = make_plan(toy_graph(), toy_cfg(tmp_path))
    assert plan.stages["d"].action == "run"
