"""Fan-out of a stage's sub-jobs through the pipeline's own launcher and the stage's own
resources: in this process (``inline``), as parallel local processes (``local``: submitit's
LocalExecutor) or as one Slurm job array (``slurm``). A stage calls ``ctx.fan_out``; nothing else
in a stage knows which launcher runs it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import submitit

log = logging.getLogger("taylorlab.engine")


def resource_parameters(resources: Dict[str, Any], launcher: Dict[str, Any], job_name: str) -> Dict[str, Any]:
    """submitit's Slurm parameters for a stage's (or a sub-job's) resources under ``launcher``."""
    r = resources
    params = dict(
        slurm_job_name=job_name,
        timeout_min=int(r["timeout_min"]),
        nodes=int(r["nodes"]),
        tasks_per_node=int(r["tasks_per_node"]),
        cpus_per_task=int(r["cpus"]),
        slurm_mem=f"{int(float(r['mem_gb']) * 1024)}M",
    )
    if int(r["gpus"]) > 0:
        params["slurm_gres"] = f"{launcher.get('gres_name', 'gpu')}:{int(r['gpus'])}"
    for key in ("partition", "account", "qos", "constraint"):
        if launcher.get(key):
            params[f"slurm_{key}"] = launcher[key]
    return params


def visible_gpus() -> List[int]:
    """This host's GPUs as the sub-jobs should see them: CUDA_VISIBLE_DEVICES's ids, else all."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [x.strip() for x in env.split(",") if x.strip()]
        if all(x.isdigit() for x in ids):
            return [int(x) for x in ids]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except ImportError:  # pragma: no cover - torch is a dependency
        return []


def gpu_sets(n_jobs: int, per_job: int, visible: Sequence[int]) -> List[List[int]]:
    """Which GPUs each local sub-job gets: consecutive ``per_job`` of ``visible``, round robin, so N
    jobs of one GPU on an N-GPU host run one per GPU (submitit's local executor alone would give every
    job the first ``per_job`` GPUs)."""
    if per_job <= 0 or not visible:
        return [[] for _ in range(n_jobs)]
    return [[visible[(i * per_job + k) % len(visible)] for k in range(min(per_job, len(visible)))]
            for i in range(n_jobs)]


def fan_out(folder: Path, launcher: Dict[str, Any], resources: Dict[str, Any], name: str, fn: Callable,
            *arg_lists: Sequence) -> List[Any]:
    """``[fn(*args) for args in zip(*arg_lists)]``, each call one sub-job with ``resources``
    (one task each), run the way the pipeline's launcher runs stages. Returns the results in order."""
    kind = launcher.get("name", "local")
    calls = list(zip(*arg_lists))
    if kind == "inline" or not calls:
        return [fn(*args) for args in calls]
    sub = {**resources, "nodes": 1, "tasks_per_node": 1}
    ex = submitit.AutoExecutor(folder=str(Path(folder) / "%j"), cluster="local" if kind == "local" else "slurm")
    if kind == "slurm":
        params = resource_parameters(sub, launcher, name)
        extra = dict(launcher.get("additional_parameters") or {})
        ex.update_parameters(**params, slurm_additional_parameters=extra)
    else:
        ex.update_parameters(timeout_min=int(sub["timeout_min"]), cpus_per_task=int(sub["cpus"]),
                             gpus_per_node=int(sub["gpus"]), mem_gb=float(sub["mem_gb"]), name=name)
    if kind == "local" and int(sub["gpus"]) > 0:  # one job per GPU of this host, not all on the first
        jobs = []
        for args, gpus in zip(calls, gpu_sets(len(calls), int(sub["gpus"]), visible_gpus())):
            ex.update_parameters(visible_gpus=gpus)
            jobs.append(ex.submit(fn, *args))
    else:
        jobs = ex.map_array(fn, *[list(a) for a in arg_lists])
    log.info("%s: %d %s sub-jobs: %s", name, len(jobs), kind, ", ".join(str(j.job_id) for j in jobs))
    return [j.result() for j in jobs]
