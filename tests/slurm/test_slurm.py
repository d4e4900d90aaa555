"""The engine on a real Slurm cluster (slurm/start.sh): same results as local, afterok chains,
failures cancel dependents, impossible requests refused at submit time, scancel then resume."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run_cli

from taylorlab.engine.executors import LIVE_STATES

pytestmark = pytest.mark.slurm
FAST = ["debug=fast"]


def stage_dir(out, run, node):
    (d,) = [p for p in (Path(out) / run).glob(f"{node}-*") if p.is_dir()]
    return d


def sacct_state(job_id, settle_s=60.0):
    """The job's state in Slurm's accounting. slurmdbd learns of a job's end a moment after slurmctld:
    a state that is still live is asked again until ``settle_s`` has passed."""
    deadline = time.time() + settle_s
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"],
                             capture_output=True, text=True)
        state = out.stdout.split()[0] if out.stdout.split() else "UNKNOWN"
        if (state not in LIVE_STATES and state != "UNKNOWN") or time.time() > deadline:
            return state
        time.sleep(1.0)


def test_graph_through_slurm_matches_local(slurm_cluster, tmp_path):
    args = FAST + ["stages=[train,evaluate_dense]"]
    run_cli(args + ["run=local", "launcher=local"], tmp_path, check=True)
    t0 = time.time()
    run_cli(args + ["run=viaslurm", "launcher=slurm", "launcher.wait=true"], tmp_path, check=True)
    assert time.time() - t0 < 240
    a = json.loads((stage_dir(tmp_path, "local", "evaluate_dense") / "result.json").read_text())
    b = json.loads((stage_dir(tmp_path, "viaslurm", "evaluate_dense") / "result.json").read_text())
    assert a["ppl"] == b["ppl"] and a["tokens"] == b["tokens"]
    # each stage was its own Slurm job, chained with afterok on its parents
    sub = json.loads((stage_dir(tmp_path, "viaslurm", "train") / "submission.json").read_text())
    parents = [json.loads((stage_dir(tmp_path, "viaslurm", n) / "submission.json").read_text())["job_id"]
               for n in ("data", "base_model")]
    assert sub["dependencies"] == [parents[0], parents[1]] or set(sub["dependencies"]) == set(parents)
    prov = json.loads((stage_dir(tmp_path, "viaslurm", "train") / "provenance.json").read_text())
    assert prov["job_id"] == sub["job_id"]
    assert sacct_state(sub["job_id"]) == "COMPLETED"
    status = subprocess.run([sys.executable, "-m", "taylorlab.cli", "status", str(tmp_path / "viaslurm")],
                            capture_output=True, text=True)
    assert status.stdout.count(" done ") >= 4


def test_failed_stage_cancels_its_dependents(slurm_cluster, tmp_path):
    proc = run_cli(FAST + ["run=fail", "launcher=slurm", "launcher.wait=true", "model=llama2_7b",
                           "model.name_or_path=/nonexistent/llama", "stages=[evaluate_dense]"], tmp_path,
                   env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "stage base_model failed" in err[0] and "/nonexistent/llama" in err[0]
    ev = json.loads((stage_dir(tmp_path, "fail", "evaluate_dense") / "submission.json").read_text())
    assert sacct_state(ev["job_id"]) == "CANCELLED"
    assert not (stage_dir(tmp_path, "fail", "evaluate_dense") / "DONE").exists()


def test_impossible_resources_are_refused_at_submit_time(slurm_cluster, tmp_path):
    t0 = time.time()
    proc = run_cli(FAST + ["run=huge", "launcher=slurm", "stages=[data]", "data.resources.cpus=512"], tmp_path)
    assert proc.returncode == 2 and time.time() - t0 < 60
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "Slurm refused stage data" in err[0]
    assert not (stage_dir(tmp_path, "huge", "data") / "submission.json").exists()


def test_stand_in_gpu_request_is_scheduled(slurm_cluster, tmp_path):
    """GPU requests reach Slurm's GRES (the node's 'GPUs' are character-device stand-ins)."""
    run_cli(FAST + ["run=gres", "launcher=slurm", "launcher.wait=true", "stages=[data]",
                    "data.resources.gpus=1"], tmp_path, check=True)
    sub = json.loads((stage_dir(tmp_path, "gres", "data") / "submission.json").read_text())
    assert sub["parameters"]["slurm_gres"] == "gpu:1"
    assert sacct_state(sub["job_id"]) == "COMPLETED"


def test_submit_returns_rerun_does_not_duplicate_and_scancel_then_rerun_resumes(slurm_cluster, tmp_path):
    # long enough that it cannot finish in the KillWait seconds between scancel's SIGTERM and SIGKILL
    args = FAST + ["run=resume", "launcher=slurm", "stages=[train]", "data.max_train_docs=2500", "train.max_batches=2000",
                   "train.checkpoint_every=5"]
    t0 = time.time()
    run_cli(args, tmp_path, check=True)
    assert time.time() - t0 < 30  # submitting returns at once
    train = stage_dir(tmp_path, "resume", "train")
    first = json.loads((train / "submission.json").read_text())["job_id"]
    run_cli(args, tmp_path, check=True)  # the same command while it is queued/running
    assert json.loads((train / "submission.json").read_text())["job_id"] == first
    deadline = time.time() + 180
    while time.time() < deadline and not list(train.glob("checkpoints/step-*/meta.json")):
        time.sleep(0.3)
    assert list(train.glob("checkpoints/step-*/meta.json")), "no checkpoint before the deadline"
    subprocess.run(["scancel", first], check=True)
    sacct_state(first)  # until accounting has it ended
    assert not (train / "DONE").exists()
    run_cli(args + ["launcher.wait=true"], tmp_path, check=True)
    second = json.loads((train / "submission.json").read_text())["job_id"]
    assert second != first and (train / "DONE").exists()
    assert "resumed from step-" in (train / "stage.log").read_text()


def test_hydra_submitit_sweep_shares_upstream_stages(slurm_cluster, tmp_path):
    """A sweep of whole pipelines, one Slurm job per member (hydra-submitit-launcher); members
    share the cached upstream stages (one calibrate for all pruning methods)."""
    proc = run_cli(FAST + ["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10",
                           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "run=hsweep",
                           "launcher=inline", "stages=[evaluate_pruned]", "prune.method=magnitude,wanda"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Path(tmp_path) / "hsweep"
    assert len(list(run.glob("calibrate-*/DONE"))) == 1
    assert len(list(run.glob("prune-*/DONE"))) == 2
    assert len(list(run.glob("evaluate_pruned-*/DONE"))) == 2
    jobs = {json.loads(p.read_text())["job_id"] for p in run.glob("prune-*/provenance.json")}
    assert len(jobs) == 2 and all(jobs)  # each member ran as its own Slurm job


def test_preemption_signal_requeues_and_resumes_from_checkpoint(slurm_cluster, tmp_path):
    """USR2 (what Slurm sends before a time limit or preemption) makes submitit call the stage's
    checkpoint hook, which requeues the same job; it resumes from the stage's own checkpoint and
    ends with the same weights as an uninterrupted run."""
    from safetensors.torch import load_file

    args = FAST + ["stages=[train]", "data.max_train_docs=2500", "train.max_batches=2000", "train.checkpoint_every=5"]
    run_cli(args + ["run=straight", "launcher=inline"], tmp_path, check=True)
    run_cli(args + ["run=preempt", "launcher=slurm"], tmp_path, check=True)
    train = stage_dir(tmp_path, "preempt", "train")
    job = json.loads((train / "submission.json").read_text())["job_id"]
    deadline = time.time() + 180
    while time.time() < deadline and not list(train.glob("checkpoints/step-*/meta.json")):
        time.sleep(0.3)
    assert list(train.glob("checkpoints/step-*/meta.json")), "no checkpoint before the deadline"
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # to the job step, where submitit listens
    # Slurm 22.05 holds a requeued job back for ~2 minutes (its begin time moves ahead); once it is
    # pending again, let it start now, as an operator would: only the wait is cut, not the requeue
    deadline = time.time() + 120
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout
        if out.startswith("PENDING"):
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
            break
        time.sleep(0.5)
    deadline = time.time() + 280
    while time.time() < deadline and not (train / "DONE").exists():
        time.sleep(1)
    assert (train / "DONE").exists(), (train / "stage.log").read_text()[-2000:]
    assert "resumed from step-" in (train / "stage.log").read_text()
    a = load_file(str(stage_dir(tmp_path, "straight", "train") / "model" / "model.safetensors"))
    b = load_file(str(train / "model" / "model.safetensors"))
    assert all(torch_equal(a[k], b[k]) for k in a)


def torch_equal(x, y):
    import torch

    return torch.equal(x, y)


def test_two_task_gloo_train_job_matches_one_process(slurm_cluster, tmp_path):
    """train with resources.tasks_per_node=2: one Slurm job of two tasks, torch.distributed (gloo)
    initialised from the job's environment, each task on half of every global batch; the weights
    match one process on the whole batch."""
    from safetensors.torch import load_file
    import torch

    args = FAST + ["stages=[train]"]
    # float64 on both sides: two half-batch gradients averaged equal one whole-batch gradient only
    # up to rounding, which Adam amplifies in rare tokens' embedding rows (3.6e-5 in float32)
    args += ["train.dtype=float64"]
    run_cli(args + ["run=one", "launcher=inline"], tmp_path, check=True)
    run_cli(args + ["run=two", "launcher=slurm", "launcher.wait=true", "train.resources.tasks_per_node=2",
                    "train.resources.cpus=1"], tmp_path, check=True)
    train = stage_dir(tmp_path, "two", "train")
    sub = json.loads((train / "submission.json").read_text())
    assert sub["parameters"]["tasks_per_node"] == 2
    assert sacct_state(sub["job_id"]) == "COMPLETED"
    assert "(2 tasks)" in (train / "stage.log").read_text()
    assert json.loads((train / "train_result.json").read_text())["world_size"] == 2
    a = load_file(str(stage_dir(tmp_path, "one", "train") / "model" / "model.safetensors"))
    b = load_file(str(train / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
