"""Memory that plans itself: how many orders (parameter copies) a batched pass may hold at once,
from the device's free memory and a probe of what one copy costs, never more than a user's bound.

Every streaming consumer of K orders (batched retraining, ``fut-carry``'s vmapped passes, the
surrogate's training retrainings) asks ``plan_chunk``; the record stage asks ``plan_checkpoints``
how sparsely to store its states. On the CPU nothing is probed (host memory is not what ran out in
practice; the bound, if any, applies)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from taylorlab.errors import TaylorlabError

log = logging.getLogger("taylorlab.order")

# of the free device memory at planning time, the share a planned chunk may fill: the rest is for
# the allocator's fragmentation and for the buffers the probe does not see (eval passes, the output)
FILL = 0.7


@dataclass
class ChunkPlan:
    what: str
    chunk: int
    requested: int
    bound: Optional[int]
    per_copy_bytes: Optional[int] = None
    free_bytes: Optional[int] = None

    def as_dict(self) -> dict:
        return asdict(self)


def free_bytes(device: torch.device) -> Optional[int]:
    """Free memory of a CUDA device, counting what PyTorch's cache holds but does not use; None on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def probe_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak memory ``fn()`` allocates above what is allocated now (CUDA), None on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return int(peak)


def plan_chunk(what: str, n: int, device: torch.device, probe_one: Callable[[], object], state_bytes: int = 0,
               bound: Optional[int] = None) -> ChunkPlan:
    """Copies of ``what`` to process together: at most ``n`` and ``bound``; on a GPU as many as fit in
    ``FILL`` of the free memory, one copy costing what ``probe_one()`` (a pass for one copy) allocates
    plus ``state_bytes`` (the copy's own persistent state, e.g. parameters and Adam's moments)."""
    cap = n if bound is None else max(1, min(n, int(bound)))
    if device.type != "cuda" or cap <= 1:
        return ChunkPlan(what, cap, n, bound)
    per = (probe_bytes(probe_one, device) or 0) + state_bytes
    free = free_bytes(device)
    fit = int(FILL * free // max(per, 1))
    if fit < 1:
        raise TaylorlabError(f"{what}: one copy needs {per / 2**30:.1f} GiB, the GPU has {free / 2**30:.1f} GiB free; "
                             "use fewer sequences per pass (record.micro_batch), a smaller batch "
                             "(record.batch_size / seq_len) or a larger GPU.")
    plan = ChunkPlan(what, min(cap, fit), n, bound, per, free)
    log.info("%s: %d of %d copies at a time (%.2f GiB each, %.1f GiB free%s)", what, plan.chunk, n, per / 2**30,
             free / 2**30, f", bound {bound}" if bound else "")
    return plan


def host_available_bytes() -> Optional[int]:
    """MemAvailable of /proc/meminfo (Linux), None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def require_bytes(what: str, need: int, device: torch.device, fix: str) -> None:
    """One clear line instead of an out-of-memory traceback (or the kernel's OOM killer on the CPU)
    when ``need`` bytes cannot fit the device."""
    free = free_bytes(device) if device.type == "cuda" else host_available_bytes()
    where = "the GPU" if device.type == "cuda" else "this machine's memory"
    if free is not None and need > free:
        raise TaylorlabError(f"{what} needs {need / 2**30:.1f} GiB in {where}, which has {free / 2**30:.1f} GiB "
                             f"available; {fix}.")


def plan_checkpoints(T: int, state_bytes: int, device: torch.device, out_dir: Path, every: int,
                     share: float = 0.25) -> dict:
    """The record's storage: with ``every=0`` the smallest k such that the stored states (every k-th,
    and the last) take at most ``share`` of the free GPU memory (every step on the CPU); the size on
    disk, checked against the free space of ``out_dir``'s disk before anything runs."""
    if every < 0:
        raise TaylorlabError(f"record.checkpoint_every={every}: use 0 (planned) or a positive step count.")
    free = free_bytes(device)
    if every == 0:
        every = 1
        if free is not None:
            while (T // every + 2) * state_bytes > share * free and every < T:
                every += 1
    stored = T // every + 1 + (1 if T % every else 0)
    disk = stored * state_bytes
    have = shutil.disk_usage(out_dir).free
    if disk > have:
        raise TaylorlabError(f"the record's {stored} states need {disk / 2**30:.1f} GiB on disk; {out_dir} has "
                             f"{have / 2**30:.1f} GiB free: raise record.checkpoint_every, or free space.")
    return {"checkpoint_every": every, "stored_states": stored, "bytes_per_state": state_bytes, "disk_bytes": disk,
            "device_free_bytes": free}
