"""Executors: ``inline`` (this process), ``local`` (submitit LocalExecutor, one process per stage,
independent stages at once within the CPU budget), ``slurm`` (submitit AutoExecutor, every stage
submitted at once and chained with Slurm's own ``afterok`` dependencies)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import threading
import time
from typing import Callable, Dict, List

import psutil
import submitit
from omegaconf import DictConfig, OmegaConf

from taylorlab.engine.fanout import resource_parameters
from taylorlab.engine.graph import Graph
from taylorlab.engine.rundir import StageDir
from taylorlab.engine.runner import Plan, PlannedStage, check_devices, failure_cause, make_job, make_plan
from taylorlab.errors import ConfigError, StageFailed
from taylorlab.io import atomic_write_json

log = logging.getLogger("taylorlab.engine")


def _blocked_by(ps: PlannedStage, failed: set) -> bool:
    return any(p in failed for p in ps.parents.values())


def run_inline(graph: Graph, plan: Plan, cfg: DictConfig) -> None:
    """Run every stage in this process, in topological order (for debugging: breakpoints work)."""
    for ps in plan.to_run():
        log.info("run %s inline in %s", ps.node, ps.dir.name)
        make_job(graph, plan, ps, cfg)()


def run_local(graph: Graph, plan: Plan, cfg: DictConfig) -> None:
    lc = cfg.launcher
    pending: List[PlannedStage] = plan.to_run()
    running: Dict[str, tuple] = {}
    finished: set = {n for n, s in plan.stages.items() if s.action == "skip"}
    failed: Dict[str, str] = {}
    blocked: set = set()
    restore = _raise_on_sigterm()
    try:
        while pending or running:
            # start what is ready, within the budget
            for ps in list(pending):
                if _blocked_by(ps, set(failed) | blocked):
                    pending.remove(ps)
                    blocked.add(ps.node)
                    log.error("not running %s: a stage it depends on failed", ps.node)
                    continue
                if not all(p in finished for p in ps.parents.values()):
                    continue
                cpus_used = sum(r[1].resources.get("cpus", 1) for r in running.values())
                cpus = int(ps.resources.get("cpus", 1))
                if running and (len(running) >= lc.max_parallel or cpus_used + cpus > lc.cpu_budget):
                    continue
                ex = submitit.LocalExecutor(folder=str(ps.dir / "submitit"))
                ex.update_parameters(timeout_min=int(ps.resources.get("timeout_min", 60)), gpus_per_node=0)
                job = ex.submit(make_job(graph, plan, ps, cfg))
                log.info("started %s (local job %s) in %s", ps.node, job.job_id, ps.dir.name)
                running[ps.node] = (job, ps)
                pending.remove(ps)
            time.sleep(lc.poll_interval_s if running else 0)
            for name, (job, ps) in list(running.items()):
                if not job.done():
                    continue
                del running[name]
                try:
                    job.result()
                    finished.add(name)
                    log.info("finished %s", name)
                except Exception as exc:  # noqa: BLE001 - the cause is in the stage's FAILED marker
                    cause = failure_cause(ps.dir) if StageDir(ps.dir).failed() else died_without_cause(ps.dir, exc)
                    failed[name] = f"stage {name} failed: {cause} (log: {ps.dir / 'stage.log'})"
                    log.error(failed[name])
    except BaseException:  # Ctrl-C, SIGTERM, a bug: stop the stage processes too, never leave them running
        _cancel_local(running)
        raise
    finally:
        restore()
    if failed:
        first = next(iter(failed.values()))
        extra = f"; not run because of it: {', '.join(sorted(blocked))}" if blocked else ""
        raise StageFailed(first + extra)


def died_without_cause(stage_dir, exc: BaseException) -> str:
    """The cause of a stage process that ended without writing FAILED: it was killed (SIGKILL, the
    out-of-memory killer) before it could. submitit's own last log line ("Loading pickle ...") says
    nothing, so say what is known and where to look."""
    return (f"its process ended without recording a cause ({type(exc).__name__}: killed, e.g. by SIGKILL or the "
            f"out-of-memory killer?); run the same command again to resume from its last checkpoint; submitit's "
            f"logs: {stage_dir / 'submitit'}")


def _raise_on_sigterm() -> Callable[[], None]:
    """SIGTERM (kill, a batch system, a closing terminal) raises KeyboardInterrupt in the driver, so
    its clean-up runs; returns the function that restores the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)


def _cancel_local(running: Dict[str, tuple], wait_s: float = 20.0) -> None:
    """Stop every running stage: SIGINT to its submitit controller and to the stage process itself
    (a shell that starts the driver in the background makes its children ignore SIGINT, so the
    controller may not pass it on; the stage restores Python's handler), then SIGKILL for whatever
    is left after ``wait_s``. The stages resume from their checkpoints on the next run."""
    procs = []
    for name, (job, _) in running.items():
        log.error("interrupted: stopping %s (local job %s)", name, job.job_id)
        try:
            job.cancel(check=False)
        except Exception:  # noqa: BLE001 - already gone
            pass
        ctrl = getattr(job, "_process", None)
        try:
            parent = psutil.Process(ctrl.pid) if ctrl is not None else None
            kids = parent.children(recursive=True) if parent is not None else []
        except psutil.Error:
            parent, kids = None, []
        for p in kids:
            try:
                p.send_signal(signal.SIGINT)
            except psutil.Error:
                pass
        procs += kids + ([parent] if parent is not None else [])
    _, alive = psutil.wait_procs(procs, timeout=wait_s)
    for p in alive:
        log.error("process %d did not stop within %.0f s: killed", p.pid, wait_s)
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def slurm_parameters(ps: PlannedStage, cfg: DictConfig) -> Dict:
    return resource_parameters(ps.resources, OmegaConf.to_container(cfg.launcher, resolve=True),
                               f"{cfg.run}-{ps.node}")


LIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
               "REQUEUE_FED", "SIGNALING", "STAGE_OUT")


def slurm_job_state(job_id: str) -> str:
    """The job's state: squeue first (slurmctld knows a new job at once; sacct learns of it through
    slurmdbd a moment later), then sacct for ended jobs; ``UNKNOWN`` when neither answers."""
    for cmd in (["squeue", "-h", "-j", str(job_id), "-o", "%T"],
                ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.split()
        except (OSError, subprocess.SubprocessError):
            continue
        if out:
            return out[0]
    return "UNKNOWN"


class _Submitted:
    def __init__(self, job_id: str):
        self.job_id = job_id


def run_slurm(graph: Graph, plan: Plan, cfg: DictConfig) -> None:
    missing = [tool for tool in ("sbatch", "squeue") if shutil.which(tool) is None]
    if missing and plan.to_run():
        raise ConfigError(f"launcher=slurm needs Slurm's {' and '.join(missing)} on PATH, and this machine has none; "
                          f"run on a Slurm login node, start the local test cluster (bash slurm/start.sh), or use "
                          f"launcher=local.")

    jobs: Dict[str, object] = {}
    for ps in plan.to_run():
        sub = ps.dir / "submission.json"
        if sub.exists() and ps.reason != "(forced)":
            try:
                old = json.loads(sub.read_text())["job_id"]
            except (OSError, ValueError, KeyError):
                old = None
            state = slurm_job_state(old) if old else "UNKNOWN"
            for _ in range(120):  # a job that is ending (e.g. just cancelled) decides nothing yet
                if state != "COMPLETING":
                    break
                time.sleep(0.5)
                state = slurm_job_state(old)
            if old and state in LIVE_STATES:
                jobs[ps.node] = _Submitted(old)  # still queued or running: do not duplicate it
                log.info("%s is already Slurm job %s (%s); not resubmitted", ps.node, old, slurm_job_state(old))
                continue
        ex = submitit.AutoExecutor(folder=str(ps.dir / "submitit"), cluster="slurm")
        deps = [jobs[p].job_id for p in ps.parents.values() if p in jobs]
        extra = dict(OmegaConf.to_container(cfg.launcher.additional_parameters, resolve=True))
        if deps:
            extra["dependency"] = "afterok:" + ":".join(deps)
            extra["kill-on-invalid-dep"] = "yes"
        params = slurm_parameters(ps, cfg)
        ex.update_parameters(**params, slurm_additional_parameters=extra)
        try:
            job = ex.submit(make_job(graph, plan, ps, cfg))
        except Exception as exc:  # sbatch refused the request
            msg = str(exc).strip().splitlines()
            raise ConfigError(f"Slurm refused stage {ps.node}: {msg[-1] if msg else exc}") from exc
        jobs[ps.node] = job
        atomic_write_json(ps.dir / "submission.json", {"job_id": job.job_id, "dependencies": deps,
                                                        "submitted": time.time(), "parameters": params})
        log.info("submitted %s as Slurm job %s (after %s)", ps.node, job.job_id, ",".join(deps) or "-")
    if cfg.launcher.wait:
        wait_for_slurm(plan, {n: j.job_id for n, j in jobs.items()}, cfg.launcher.poll_interval_s)


def wait_for_slurm(plan: Plan, job_ids: Dict[str, str], poll_s: float) -> None:
    """Block until every job has ended; raise for the first stage that failed (its dependents were
    cancelled by Slurm through --kill-on-invalid-dep)."""
    pending = dict(job_ids)
    failed = []
    while pending:
        for name, jid in list(pending.items()):
            d = plan.stages[name].dir
            state = slurm_job_state(jid)
            if StageDir(d).done_marker() is not None:
                # the marker is written before the job's process exits: "waited" means Slurm has
                # seen the job end, so that what follows (sacct, a dependent submission) finds it ended
                if state not in LIVE_STATES:
                    del pending[name]
                continue
            if state not in LIVE_STATES and state != "UNKNOWN":
                if state != "COMPLETED" or StageDir(d).done_marker() is None:
                    failed.append((name, state))
                del pending[name]
        time.sleep(max(poll_s, 0.5))
    real = [(n, s) for n, s in failed if StageDir(plan.stages[n].dir).failed()] or failed
    if real:
        name, state = real[0]
        d = plan.stages[name].dir
        cause = failure_cause(d) if StageDir(d).failed() else f"Slurm job ended {state}"
        others = ", ".join(n for n, _ in failed if n != name)
        raise StageFailed(f"stage {name} failed: {cause} (log: {d / 'stage.log'})"
                          + (f"; cancelled or not run because of it: {others}" if others else ""))


_EXECUTORS: Dict[str, Callable] = {"inline": run_inline, "local": run_local, "slurm": run_slurm}


def get(name: str) -> Callable:
    if name not in _EXECUTORS:
        raise ConfigError(f"launcher.name={name!r} is not one of {', '.join(_EXECUTORS)}.")
    return _EXECUTORS[name]


def execute(graph: Graph, cfg: DictConfig) -> Plan:
    """Plan, then run what is not done with the configured launcher. Returns the plan."""
    plan = make_plan(graph, cfg)
    for s in plan.stages.values():
        if s.action == "skip":
            log.info("skip %s: done with the same hash (%s)", s.node, s.dir.name)
    if cfg.dry_run:
        print(plan.describe())
        return plan
    check_devices(plan, cfg.launcher.name)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    with open(plan.run_dir / "plans.jsonl", "a", encoding="utf-8") as fh:  # cache hits for the report
        fh.write(json.dumps({"time": time.time(), "launcher": cfg.launcher.name,
                             "actions": {s.dir.name: s.action for s in plan.stages.values()}}) + "\n")
    for s in plan.to_run():
        if s.reason == "(forced)":
            # force means start over: the marker and any checkpoints of an earlier attempt go
            StageDir(s.dir).clear_markers()
            shutil.rmtree(s.dir / "checkpoints", ignore_errors=True)
    get(cfg.launcher.name)(graph, plan, cfg)
    return plan

