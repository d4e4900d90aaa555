"""Data-parallel training across the tasks of one job.

The process group is initialised from the environment: torchrun's variables (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT) when they are set, else the Slurm/submitit job (several tasks), through
``submitit.helpers.TorchDistributedEnvironment``. NCCL on GPUs, gloo on the CPU. One task (the
default) means no process group at all.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from taylorlab.errors import TaylorlabError

log = logging.getLogger("taylorlab.training")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def detect() -> DistInfo:
    """Rank and world size from the environment (torchrun's variables, else the Slurm/submitit job),
    without starting anything."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if "SUBMITIT_EXECUTOR" in os.environ or "SLURM_JOB_ID" in os.environ:
        try:
            import submitit

            env = submitit.JobEnvironment()
            return DistInfo(int(env.global_rank), int(env.num_tasks), int(env.local_rank))
        except Exception:  # a Slurm job not started by submitit (e.g. an interactive allocation)
            pass
    return DistInfo()


def init(info: DistInfo, device_kind: str = "cpu") -> None:
    """Initialise the default process group for a job of several tasks (``detect()``); idempotent."""
    if not info.enabled or torch.distributed.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ:  # a Slurm job of several tasks started by submitit
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise TaylorlabError("distributed training on cuda was asked for but this task sees no GPU.")
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
    torch.distributed.init_process_group(backend=backend)
    log.info("process group up: rank %d of %d (%s)", info.rank, info.world_size, backend)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """Each task of a multi-GPU job takes the GPU of its local rank."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def shard(batch: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's rows of a global batch; the global batch size must divide evenly."""
    if not info.enabled:
        return batch
    if batch.shape[0] % info.world_size:
        raise TaylorlabError(
            f"the global batch of {batch.shape[0]} sequences does not split evenly over {info.world_size} "
            f"tasks; make train.batch_size a multiple of the number of tasks."
        )
    per = batch.shape[0] // info.world_size
    return batch[info.rank * per:(info.rank + 1) * per]


def mean_across(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return value
    value = value.detach().clone()
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
    return value / info.world_size


def barrier(info: DistInfo) -> None:
    if info.enabled:
        torch.distributed.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
