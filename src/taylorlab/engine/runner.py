"""Plan and run a stage graph.

Each stage instance owns ``<out_dir>/<run>/<stage>-<hash>/`` where the hash covers the node's
resolved config (resources excluded), its parents' hashes and the package version. A stage is done
when its DONE marker (written last, atomically) holds that hash; a done stage is skipped and the
skip is logged. ``force`` re-runs the named nodes and their dependents.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import submitit
import torch
from omegaconf import DictConfig, OmegaConf

import taylorlab
from taylorlab.engine import provenance
from taylorlab.engine.context import StageContext
from taylorlab.engine.graph import Graph, StageSpec
from taylorlab.engine.rundir import StageDir
from taylorlab.errors import ConfigError, DeviceError, StageFailed, TaylorlabError
from taylorlab.io import atomic_write_json, atomic_write_text, clean_stale_temporaries, read_json
from taylorlab.tracking import Tracker
from taylorlab.training import distributed

log = logging.getLogger("taylorlab.engine")



@dataclass
class PlannedStage:
    node: str
    stage: str
    hash: str
    dir: Path
    parents: Dict[str, str]  # role -> node
    cfg: Dict[str, Any]
    resources: Dict[str, Any]
    action: str = "run"  # run | skip
    reason: str = ""


@dataclass
class Plan:
    run_dir: Path
    stages: Dict[str, PlannedStage] = field(default_factory=dict)

    def to_run(self) -> List[PlannedStage]:
        return [s for s in self.stages.values() if s.action == "run"]

    def describe(self) -> str:
        lines = [f"plan for {self.run_dir}:"]
        for s in self.stages.values():
            parents = ", ".join(f"{r}={p}" for r, p in s.parents.items()) or "-"
            lines.append(f"  {s.action:4s} {s.node:18s} {s.dir.name:28s} <- {parents}  {s.reason}")
        return "\n".join(lines)


def stage_hash(stage: str, cfg: Dict[str, Any], parent_hashes: Dict[str, str]) -> str:
    payload = json.dumps(
        {"stage": stage, "config": cfg, "parents": parent_hashes, "version": taylorlab.__version__},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def is_done(stage_dir: Path, expected_hash: str) -> bool:
    return StageDir(Path(stage_dir)).is_done(expected_hash)


def _node_config(cfg: DictConfig, key: str) -> Dict[str, Any]:
    section = OmegaConf.to_container(cfg[key], resolve=True)
    section.pop("resources", None)
    return section


def make_plan(graph: Graph, cfg: DictConfig) -> Plan:
    selected = list(cfg.stages) or list(graph.nodes)
    bound = graph.resolve(selected)
    forced: set = set()
    if cfg.force:
        names = [s for s in str(cfg.force).replace(",", " ").split() if s]
        if names == ["all"]:
            names = list(bound)
        unknown = [n for n in names if n not in bound]
        if unknown:
            raise ConfigError(f"force={cfg.force}: {', '.join(unknown)} is not a stage of this run; stages: {', '.join(bound)}.")
        forced = graph.descendants(bound, names)
    run_dir = Path(cfg.out_dir).expanduser().resolve() / cfg.run
    plan = Plan(run_dir=run_dir)
    for name, parents in bound.items():
        node = graph.nodes[name]
        node_cfg = _node_config(cfg, node.config_key)
        h = stage_hash(node.spec.name, node_cfg, {r: plan.stages[p].hash for r, p in parents.items()})
        d = StageDir.of(run_dir, name, h).path
        ps = PlannedStage(
            node=name, stage=node.spec.name, hash=h, dir=d, parents=dict(parents), cfg=node_cfg,
            resources=OmegaConf.to_container(cfg[node.config_key].resources, resolve=True),
        )
        if name in forced:
            ps.action, ps.reason = "run", "(forced)"
        elif is_done(d, h):
            ps.action, ps.reason = "skip", "(done)"
        elif any(plan.stages[p].action == "run" for p in parents.values()):
            ps.reason = "(parent runs)"
        elif StageDir(d).failed():
            ps.reason = "(failed before: retry)"
        elif StageDir(d).has_checkpoints():
            ps.reason = "(resume from checkpoint)"
        else:
            ps.reason = "(new)"
        plan.stages[name] = ps
    return plan


def check_devices(plan: Plan, launcher: str) -> None:
    """A stage that asks for a GPU on a machine without one fails now, before anything runs."""
    if launcher == "slurm":
        return
    wants = [s for s in plan.to_run() if str(s.cfg.get("device", "")).startswith("cuda") or s.resources.get("gpus", 0) > 0]
    if not wants:
        return
    if not torch.cuda.is_available():
        s = wants[0]
        raise DeviceError(
            f"stage {s.node} asks for a GPU ({s.stage}.device=cuda or {s.stage}.resources.gpus>0) but this machine "
            f"has none (torch.cuda.is_available() is False); set {s.stage}.device=cpu, or use launcher=slurm."
        )


# ----------------------------------------------------------------------------------- the job


@dataclass
class StageJob:
    """Everything a stage needs to run in another process (picklable)."""

    node: str
    stage: str
    function: str
    hash: str
    dir: str
    parents: Dict[str, str]  # role -> parent stage dir
    cfg: Dict[str, Any]
    run_name: str
    run_dir: str
    wandb: Dict[str, Any]
    progress: bool = True
    distributed: bool = False
    threads: Optional[int] = None  # torch CPU threads: the stage's resources.cpus under local/slurm
    launcher: Dict[str, Any] = field(default_factory=dict)  # how sub-jobs fan out (ctx.fan_out)
    resources: Dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Dict[str, Any]:
        return run_stage_job(self)

    def checkpoint(self):  # submitit: on preemption/timeout requeue the same job; it resumes itself
        return submitit.helpers.DelayedSubmission(self)


def _job_id() -> Optional[str]:
    try:
        return str(submitit.JobEnvironment().job_id)
    except Exception:
        return os.environ.get("SLURM_JOB_ID")


class _SilentTracker:
    """The tracker of tasks other than rank 0 of a data-parallel stage: rank 0 reports for all."""

    def __getattr__(self, name):
        return lambda *a, **k: None


def _context(job: StageJob, tracker, log, progress: bool, dist) -> StageContext:
    return StageContext(node=job.node, stage=job.stage, cfg=OmegaConf.create(job.cfg), dir=Path(job.dir),
                        parents={r: Path(p) for r, p in job.parents.items()}, tracker=tracker, log=log,
                        progress=progress, dist=dist, launcher=job.launcher, resources=job.resources)


def _follow(job: StageJob, spec, info) -> Dict[str, Any]:
    """Rank > 0 of a multi-task job: take part in the computation of a data-parallel stage, write
    nothing (rank 0 holds the lock and writes the stage directory)."""
    if not spec.distributed or is_done(Path(job.dir), job.hash):
        return {}
    spec.load()(_context(job, _SilentTracker(), logging.getLogger(f"taylorlab.stage.{job.node}.rank{info.rank}"),
                         False, info))
    return {}


def run_stage_job(job: StageJob) -> Dict[str, Any]:
    spec = StageSpec(job.stage, job.function, distributed=job.distributed)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # started from a background shell job, SIGINT is inherited as ignored: restore Python's
        # handler so that Ctrl-C / a cancelling driver stops the stage (FAILED written, lock released)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if job.threads:  # stages running side by side must not each take every core (oversubscribed
        # OpenMP threads: two stages side by side on 2 cores each taking both ran several times slower
        torch.set_num_threads(job.threads)
    info = distributed.detect()
    if not info.is_main:
        return _follow(job, spec, info)
    if info.enabled and not spec.distributed:
        info = distributed.DistInfo()  # other tasks return at once; this one runs the stage alone
    d = Path(job.dir)
    sd = StageDir(d)
    d.mkdir(parents=True, exist_ok=True)
    lock_fh = open(d / ".lock", "w")
    fcntl.flock(lock_fh, fcntl.LOCK_EX)  # a concurrent sweep member running the same stage waits here
    try:
        if is_done(d, job.hash):
            return read_json(d / "manifest.json")
        sd.clear_markers()
        clean_stale_temporaries(d)
        handler = logging.FileHandler(d / "stage.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("taylorlab")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        slog = logging.getLogger(f"taylorlab.stage.{job.node}")
        _quiet_libraries(job.progress)
        atomic_write_text(d / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(job.cfg)))
        atomic_write_json(d / "provenance.json", {**provenance.collect(_job_id()), "hash": job.hash,
                                                   "node": job.node, "parents": job.parents})
        tracker = None
        t0 = time.time()
        try:
            tracker = Tracker(d, run_dir=Path(job.run_dir), run_name=job.run_name, node=job.node,
                              job_type=job.stage, config=job.cfg, wandb_cfg=job.wandb)
            ctx = _context(job, tracker, slog, job.progress, info)
            slog.info("stage %s (%s) starts in %s", job.node, job.stage, d)
            fn = spec.load()
            artifacts = fn(ctx) or {}
            elapsed = time.time() - t0
            tracker.summary({"stage/wall_s": elapsed})
            tracker.finish()
            tracker = None
            manifest = {"node": job.node, "stage": job.stage, "hash": job.hash, "artifacts": artifacts,
                        "parents": {r: Path(p).name for r, p in job.parents.items()}, "wall_s": elapsed}
            sd.mark_done(job.hash, manifest)
            slog.info("stage %s done in %.1f s", job.node, elapsed)
            return manifest
        except BaseException as exc:
            cause = describe_failure(exc, d)
            slog.error("stage %s failed: %s\n%s", job.node, cause, traceback.format_exc())
            clean_stale_temporaries(d)  # on a full disk this frees the half-written files first
            try:
                sd.mark_failed(cause, job.hash)
            except OSError as write_error:  # a full or read-only disk: the cause still reaches the user
                slog.error("could not record the failure in %s: %s", d, write_error)
            if tracker is not None:
                try:
                    tracker.finish(failed=True)
                except Exception:
                    pass
            raise StageFailed(f"stage {job.node} failed: {cause} (log: {d / 'stage.log'})") from exc
        finally:
            root.removeHandler(handler)
            handler.close()
            clean_stale_temporaries(d)
    finally:
        fcntl.flock(lock_fh, fcntl.LOCK_UN)
        lock_fh.close()


_DISK_FULL = ("No space left on device", "enforce fail at inline_container", "file write failed")


def describe_failure(exc: BaseException, stage_dir: Path) -> str:
    """One line for the user. A full disk shows up as OSError(ENOSPC) or, from torch.save, as a
    RuntimeError naming PyTorch's zip writer; both say the same thing to the user."""
    text = " ".join(str(exc).split())
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or any(s in text for s in _DISK_FULL):
        return (f"no space left on the disk that holds {stage_dir} ({type(exc).__name__}: {text[:120]}); free space "
                f"or set out_dir to another disk, then run the same command again (partly written files were removed; "
                f"finished stages and checkpoints are kept)")
    return text if isinstance(exc, TaylorlabError) else f"{type(exc).__name__}: {text}"


def _quiet_libraries(progress: bool) -> None:
    """Library chatter off; their progress bars follow ours."""
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        if not progress:
            transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:
        pass


def make_job(graph: Graph, plan: Plan, ps: PlannedStage, cfg: DictConfig) -> StageJob:
    return StageJob(
        node=ps.node, stage=ps.stage, function=graph.nodes[ps.node].spec.function, hash=ps.hash,
        dir=str(ps.dir), parents={r: str(plan.stages[p].dir) for r, p in ps.parents.items()}, cfg=ps.cfg,
        run_name=str(cfg.run), run_dir=str(plan.run_dir),
        wandb=OmegaConf.to_container(cfg.wandb, resolve=True), progress=bool(cfg.progress),
        distributed=graph.nodes[ps.node].spec.distributed,
        threads=None if cfg.launcher.name == "inline" else max(1, int(ps.resources.get("cpus", 1))),
        launcher=OmegaConf.to_container(cfg.launcher, resolve=True), resources=dict(ps.resources),
    )


def failure_cause(stage_dir: Path) -> str:
    return StageDir(Path(stage_dir)).failure_cause()
