"""The real pipeline end to end on the tiny config, through the real entry point."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import ENTRY, ROOT, run_cli

pytestmark = pytest.mark.integration
FAST = ["debug=fast"]


def stage_dirs(out, run, node):
    return sorted(p for p in (Path(out) / run).glob(f"{node}-*") if p.is_dir())


def test_default_graph_runs_locally_then_skips_everything(tmp_path):
    first = run_cli(FAST + ["run=e2e", "launcher=local", "prune.method=gblm"], tmp_path, check=True)
    assert "ran 13 stage(s)" in first.stdout
    for node in ("data", "base_model", "train", "evaluate_dense", "calibrate", "prune", "evaluate_pruned", "inference", "record",
                 "estimate", "memorize", "curriculum", "report"):
        (d,) = stage_dirs(tmp_path, "e2e", node)
        assert (d / "DONE").exists() and (d / "manifest.json").exists(), node
    res = json.loads(next(iter(stage_dirs(tmp_path, "e2e", "evaluate_pruned")))
                     .joinpath("result.json").read_text())
    assert res["recipe"]["method"] == "gblm" and res["ppl"] > 1 and res["seq_len"] == 32
    est = json.loads(stage_dirs(tmp_path, "e2e", "estimate")[0].joinpath("estimates.json").read_text())
    assert {r["estimator"] for r in est["fidelity"]} == {"none", "fut", "fut2", "fut-carry", "fut-ckpt", "additive", "surrogate"}
    search = est["proposals"]["additive"]  # the order it proposes, retrained for real
    assert sorted(search["order"]) == list(range(6)) and search["true_loss"] > 0
    assert len(est["orders"]) == 5 and all(o["true_loss"] > 0 for o in est["orders"])
    mem_dir = stage_dirs(tmp_path, "e2e", "memorize")[0]
    mem = json.loads((mem_dir / "memorization.json").read_text())
    assert len(mem["cells"]) == 6 and mem["mae"] >= 0 and mem["mae_no_change"] > 0
    assert all(mem["true"][i][j] > 0 and mem["estimated"][i][j] > 0 for i, j in mem["cells"])
    gen = mem["generalization"]
    assert all(gen["true"][i][j] > 0 and gen["estimated"][i][j] > 0 for i, j in mem["cells"])
    assert gen["mae_no_change"] > 0 and gen["mae"] >= 0
    assert (mem_dir / "memorization.png").stat().st_size > 1000
    cur = json.loads(stage_dirs(tmp_path, "e2e", "curriculum")[0].joinpath("curriculum.json").read_text())
    verified = {r["name"]: r["true_loss"] for r in cur["candidates"] if r["true_loss"] is not None}
    assert len(verified) == 3 and "reference" in verified  # the reference and the 2 best by estimate
    assert cur["best_true_loss"] == min(verified.values()) and sorted(cur["best_order"]) == list(range(6))
    spars = json.loads(stage_dirs(tmp_path, "e2e", "prune")[0].joinpath("sparsity.json").read_text())
    assert abs(spars["total"]["sparsity"] - 0.5) < 0.01
    t0 = time.time()
    second = run_cli(FAST + ["run=e2e", "launcher=local", "prune.method=gblm"], tmp_path, check=True)
    assert "ran 0 stage(s)" in second.stdout and "skipped 13 done" in second.stdout
    assert "skip train: done with the same hash" in second.stdout + second.stderr
    assert time.time() - t0 < 30
    forced = run_cli(FAST + ["run=e2e", "launcher=inline", "prune.method=gblm", "force=prune"], tmp_path, check=True)
    assert "ran 4 stage(s) prune, evaluate_pruned, inference, report" in forced.stdout


def test_sweep_shares_one_calibrate_stage(tmp_path):
    run_cli(FAST + ["-m", "run=sweep", "launcher=inline", "prune.method=magnitude,wanda,sparsegpt",
                    "prune.pattern=unstructured,2:4"], tmp_path, check=True)
    assert len(stage_dirs(tmp_path, "sweep", "calibrate")) == 1
    assert len(stage_dirs(tmp_path, "sweep", "train")) == 1
    assert len(stage_dirs(tmp_path, "sweep", "prune")) == 6
    report = subprocess.run([sys.executable, "-m", "taylorlab.cli", "report", str(tmp_path / "sweep")],
                            capture_output=True, text=True, check=True)
    for m in ("magnitude", "wanda", "sparsegpt", "dense", "2:4"):
        assert m in report.stdout


def test_a_failed_sweep_member_is_reported_and_the_others_still_run(tmp_path):
    # 2:3 passes the config checks; M=3 does not divide the tiny model's widths, which only the prune
    # stage can see (the model is known there)
    proc = run_cli(FAST + ["-m", "run=sweepfail", "launcher=inline", "stages=[prune]", "prune.method=wanda,magnitude",
                           "prune.pattern=2:3,unstructured"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    done = [d for d in stage_dirs(tmp_path, "sweepfail", "prune") if (d / "DONE").exists()]
    assert len(done) == 2  # wanda and magnitude, unstructured: both ran after the first member failed
    assert "sweep: 2 of 4 member(s) succeeded" in proc.stdout
    summary = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: sweep member")]
    assert len(summary) == 2 and all("prune.pattern=2:3" in ln and "stage prune failed" in ln
                                     and "M=3 does not divide" in ln and "stage.log" in ln for ln in summary)
    assert "Traceback" not in proc.stderr


def wait_for_checkpoint(proc, run_dir: Path, timeout: float = 300) -> None:
    """Until the train stage of ``run_dir`` has written a checkpoint (while ``proc`` still runs)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list(run_dir.glob("train-*/checkpoints/step-*/meta.json")):
            return
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared before the run ended")


def test_sigkill_mid_training_then_rerun_gives_identical_weights(tmp_path):
    args = FAST + ["stages=[train]", "launcher=inline", "train.max_batches=60", "train.checkpoint_every=5"]
    run_cli(args + ["run=straight"], tmp_path, check=True)
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen([sys.executable, str(ENTRY), f"out_dir={tmp_path}", "run=killed", *args], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_checkpoint(proc, tmp_path / "killed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (train_dir,) = stage_dirs(tmp_path, "killed", "train")
    assert not (train_dir / "DONE").exists()
    again = run_cli(args + ["run=killed"], tmp_path, check=True)
    assert "ran 1 stage(s) train" in again.stdout
    log = (train_dir / "stage.log").read_text()
    assert "resumed from step-" in log
    # each step's metrics once: the steps between the last checkpoint and the kill are not repeated
    steps = [r["step"] for r in map(json.loads, (train_dir / "metrics.jsonl").read_text().splitlines())
             if "train/loss" in r]
    assert steps == list(range(60)), steps
    a = load_file(str(stage_dirs(tmp_path, "straight", "train")[0] / "model" / "model.safetensors"))
    b = load_file(str(train_dir / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _processes_mentioning(text: str):
    """PIDs of live processes whose command line contains ``text`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                out.append(int(d.name))
    return out


def test_sigterm_to_a_local_driver_stops_its_stage_processes_and_the_rerun_resumes(tmp_path):
    args = FAST + ["stages=[train]", "launcher=local", "train.max_batches=3000", "train.checkpoint_every=5", "run=term"]
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen([sys.executable, str(ENTRY), f"out_dir={tmp_path}", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(proc, tmp_path / "term")
    assert _processes_mentioning(str(tmp_path / "term")), "the stage does not run in its own process"
    proc.send_signal(signal.SIGTERM)  # the driver only, as `kill PID` would
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "interrupted" in lines[0] and "run the same command again" in lines[0]
    end = time.time() + 30
    while _processes_mentioning(str(tmp_path / "term")) and time.time() < end:
        time.sleep(0.2)
    assert not _processes_mentioning(str(tmp_path / "term")), "stage processes outlived their driver"
    (train_dir,) = stage_dirs(tmp_path, "term", "train")
    assert not (train_dir / "DONE").exists(), err + (train_dir / "stage.log").read_text()[-2000:]
    again = run_cli(args, tmp_path, check=True)
    assert "ran 1 stage(s) train" in again.stdout
    assert "resumed from step-" in (train_dir / "stage.log").read_text()


def test_missing_model_path_fails_with_one_line_and_runs_no_dependent(tmp_path):
    proc = run_cli(FAST + ["run=bad", "launcher=local", "model=llama2_7b", "model.name_or_path=/nonexistent/llama",
                           "stages=[evaluate_dense]"], tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "base_model" in err[0] and "/nonexistent/llama" in err[0] and "stage.log" in err[0]
    (bm,) = stage_dirs(tmp_path, "bad", "base_model")
    assert not (bm / "DONE").exists() and not (bm / "model").exists()
    assert not stage_dirs(tmp_path, "bad", "evaluate_dense")
    assert stage_dirs(tmp_path, "bad", "data")[0].joinpath("DONE").exists()  # nothing lost upstream


def test_nan_loss_fails_the_stage_with_one_line(tmp_path):
    proc = run_cli(FAST + ["run=nan", "launcher=inline", "stages=[train]", "train.lr=1e30", "train.grad_clip=null",
                           "train.warmup_steps=0"], tmp_path)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "train.lr" in err[0]
    (t,) = stage_dirs(tmp_path, "nan", "train")
    assert not (t / "DONE").exists() and (t / "FAILED").exists()


def test_gpu_request_without_gpu_is_refused_before_running(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_cli(FAST + ["run=gpu", "train.device=cuda"], tmp_path)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "GPU" in err[0] and "train.device=cpu" in err[0]
    assert not (tmp_path / "gpu").exists() or not list((tmp_path / "gpu").glob("data-*/DONE"))


def test_wandb_offline_runs_hold_the_logged_metrics(tmp_path):
    proc = run_cli(FAST + ["run=wb", "launcher=inline", "stages=[train]", "wandb.mode=offline"], tmp_path,
                   env={"WANDB_MODE": "", "WANDB_API_KEY": ""}, check=True)
    assert proc.returncode == 0
    runs = sorted((tmp_path / "wb" / "wandb").rglob("offline-run-*"))
    assert len(runs) == 3  # data, base_model, train
    train_run = None
    for r in runs:
        out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json", str(r)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["project"] == "taylorlab" and info["state"] == "finished"
        if info["name"] == "wb/train":
            train_run = info
    assert train_run is not None
    metrics = [json.loads(l) for l in stage_dirs(tmp_path, "wb", "train")[0].joinpath("metrics.jsonl").read_text().splitlines()]
    final = [m for m in metrics if m.get("summary") and "train/final_loss" in m][-1]
    assert train_run["summary"]["train/final_loss"] == pytest.approx(final["train/final_loss"])
    assert train_run["config"]["max_batches"] == 12
    assert not list(Path.home().glob(".config/wandb/settings-taylorlab*"))


def _records(wandb_bin, run_dir):
    out = subprocess.run([wandb_bin, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         timeout=120)
    recs = []
    for line in out.stdout.splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:
            pass
    return recs


def test_wandb_artifacts_with_lineage_images_and_no_secrets(tmp_path):
    proc = run_cli(FAST + ["run=wba", "launcher=inline", "wandb.mode=offline", "prune.method=gblm"], tmp_path,
                   env={"WANDB_MODE": "", "WANDB_API_KEY": "sk-secret-123"}, check=True)
    assert proc.returncode == 0
    wandb_bin = str(Path(sys.executable).parent / "wandb")
    run_dir = tmp_path / "wba"
    by_name = {}
    for r in sorted((run_dir / "wandb").rglob("offline-run-*")):
        info = json.loads(subprocess.run([wandb_bin, "leet", "inspect", "--summary", "--json", str(r)],
                                         capture_output=True, text=True, timeout=120).stdout)
        by_name[info["name"]] = r
        assert info["config"] is not None
    prune_dir = stage_dirs(tmp_path, "wba", "prune")[0]
    calib_dir = stage_dirs(tmp_path, "wba", "calibrate")[0]
    arts = [r["artifact"] for r in _records(wandb_bin, by_name["wba/prune"]) if r.get("type") == "artifact"]
    mine = [a for a in arts if a.get("name") == prune_dir.name]
    assert mine and mine[0]["type"] == "model"
    assert calib_dir.name in json.dumps(mine[0])  # lineage recorded (offline: in the metadata)
    report_summary = json.loads(subprocess.run([wandb_bin, "leet", "inspect", "--summary", "--json",
                                                str(by_name["wba/report"])], capture_output=True, text=True).stdout)
    assert "report/perplexity_vs_sparsity" in report_summary["summary"]
    assert (stage_dirs(tmp_path, "wba", "report")[0] / "order_estimates.png").stat().st_size > 1000
    for f in run_dir.rglob("*"):
        if f.is_file() and f.suffix not in (".safetensors", ".png", ".bin"):
            assert b"sk-secret-123" not in f.read_bytes(), f


def test_the_prune_stage_walks_blocks_sequentially_when_asked(tmp_path):
    """prune.walk is a stage key: each walk its own stage (its own hash), recorded in recipe.json, and
    the two give different masks from the same calibration."""
    run_cli(FAST + ["-m", "run=walks", "launcher=inline", "stages=[evaluate_pruned]", "prune.method=wanda",
                    "prune.walk=block,sequential"], tmp_path, check=True)
    dirs = stage_dirs(tmp_path, "walks", "prune")
    assert len(dirs) == 2 and len(stage_dirs(tmp_path, "walks", "calibrate")) == 1
    recipes = {json.loads((d / "recipe.json").read_text())["walk"]: d for d in dirs}
    assert set(recipes) == {"block", "sequential"}
    a = load_file(str(recipes["block"] / "model" / "model.safetensors"))
    b = load_file(str(recipes["sequential"] / "model" / "model.safetensors"))
    name = next(k for k in a if k.endswith("layers.0.mlp.down_proj.weight"))
    assert not torch.equal(a[name] == 0, b[name] == 0)
    assert (a[name] == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    report = subprocess.run([sys.executable, "-m", "taylorlab.cli", "report", str(tmp_path / "walks")],
                            capture_output=True, text=True, check=True)
    rows = [ln for ln in report.stdout.splitlines() if "wanda" in ln]
    assert any("wanda+seq" in ln for ln in rows) and any("wanda+seq" not in ln for ln in rows), report.stdout
