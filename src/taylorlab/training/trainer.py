from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

from taylorlab.errors import ArtifactError, TaylorlabError
from taylorlab.io import atomic_path
from taylorlab.training.distributed import DistInfo, mean_across, shard

log = logging.getLogger("taylorlab.training")


@dataclass
class TrainSettings:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.0
    betas: Sequence[float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: Optional[float] = 1.0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0

    @classmethod
    def of(cls, section, **overrides) -> "TrainSettings":
        """The settings from any config section that has (some of) these keys (the train stage's, the
        record stage's): one list of fields, here, instead of a copy in every stage."""
        keys = {f.name for f in fields(cls)}
        values = {k: section[k] for k in keys if k in section}
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**{**values, **overrides})


def make_batches(tokens: torch.Tensor, seq_len: int, batch_size: int, max_batches: Optional[int] = None) -> torch.Tensor:
    """[T, batch_size, seq_len]: batch ``b`` is windows ``b*B .. b*B+B-1`` of the token stream."""
    n_windows = tokens.numel() // seq_len
    t = n_windows // batch_size
    if max_batches is not None:
        t = min(t, max_batches)
    if t == 0:
        raise TaylorlabError(f"the training split has {tokens.numel()} tokens: not one batch of {batch_size}x{seq_len}; lower train.batch_size or train.seq_len.")
    return tokens[: t * batch_size * seq_len].view(t, batch_size, seq_len)


def batch_order(num_batches: int, kind: str = "shuffled", seed: int = 0) -> List[int]:
    if kind == "identity":
        return list(range(num_batches))
    if kind == "reverse":
        return list(range(num_batches - 1, -1, -1))
    if kind == "shuffled":
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(num_batches, generator=g).tolist()
    raise ValueError(f"unknown order {kind}")


def lr_lambda(s: TrainSettings, total: int) -> Callable[[int], float]:
    """The multiplier of the peak learning rate at each of the ``total`` steps: linear warmup to the
    peak, reached once (at the last warmup step, or at step 0 without warmup), then constant or a
    cosine that reaches ``min_lr_ratio`` exactly at the last step."""
    peak = max(s.warmup_steps - 1, 0)
    span = max(1, total - 1 - peak)

    def f(step: int) -> float:
        if s.warmup_steps > 0 and step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - peak) / span)
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def make_optimizer(model: torch.nn.Module, s: TrainSettings, total: int):
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=tuple(s.betas), eps=s.eps, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(s, total))
    return opt, sched


# ----------------------------------------------------------------------------- checkpoints


def _ckpt_dirs(ckpt_dir: Path) -> List[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir() and (p / "meta.json").exists())


def save_checkpoint(ckpt_dir: Path, step: int, model, opt, sched, order: List[int], keep: int) -> Path:
    """Weights, optimizer, scheduler, data position and RNG, written to a temporary folder and
    renamed into place; meta.json inside marks it complete."""
    final = ckpt_dir / f"step-{step:07d}"
    with atomic_path(final) as tmp:
        tmp.mkdir()
        torch.save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "step": step, "order": order, "rng": torch.get_rng_state()},
            tmp / "state.pt",
        )
        (tmp / "meta.json").write_text(json.dumps({"step": step, "batches_done": step}))
    for old in _ckpt_dirs(ckpt_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest_checkpoint(ckpt_dir: Path, model, opt, sched, order: List[int]) -> int:
    """Restore the newest complete checkpoint; returns the step to continue from (0 if none)."""
    dirs = _ckpt_dirs(ckpt_dir)
    if not dirs:
        return 0
    latest = dirs[-1]
    try:
        # weights_only: a run tree may be shared, and a full unpickler would run whatever code a planted
        # state.pt carries; tensors, numbers, strings and containers are all a checkpoint holds
        state = torch.load(latest / "state.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except Exception as exc:
        raise ArtifactError(
            f"checkpoint {latest} cannot be read ({type(exc).__name__}); delete that folder to resume from the "
            f"checkpoint before it, or run with force=<this stage> to start the stage over (force discards its "
            f"checkpoints)."
        ) from exc
    if list(state["order"]) != list(order):
        raise ArtifactError(f"checkpoint {latest} was written for another batch order; force the stage to start over.")
    torch.set_rng_state(state["rng"])
    log.info("resumed from %s (step %d)", latest.name, state["step"])
    return int(state["step"])


# ----------------------------------------------------------------------------- the loop


def train(
    model: torch.nn.Module,
    batches: torch.Tensor,
    order: List[int],
    settings: TrainSettings,
    *,
    ckpt_dir: Optional[Path] = None,
    device: torch.device = torch.device("cpu"),
    progress: bool = False,
    on_step: Optional[Callable[[int, dict], None]] = None,
    on_resume: Optional[Callable[[int], None]] = None,
    dist: DistInfo = DistInfo(),
) -> dict:
    """Train ``model`` on ``batches[order[0]], batches[order[1]], ...`` (one step each).

    Checkpoints every ``checkpoint_every`` steps into ``ckpt_dir`` and resumes from the newest one,
    so a killed run re-run reaches the same final weights (bitwise on CPU).

    With ``dist`` of several tasks (an initialised process group) every task takes its rows of each
    global batch and DistributedDataParallel averages the gradients, so the step is that of one
    process on the whole batch (to float tolerance); only rank 0 writes checkpoints and reports.
    """
    from tqdm.auto import tqdm

    total = len(order)
    if any(not 0 <= i < batches.shape[0] for i in order):
        raise TaylorlabError(f"batch order has ids outside 0..{batches.shape[0] - 1}.")
    torch.manual_seed(settings.seed)
    model.to(device).train()
    forward = model
    if dist.enabled:
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt, sched = make_optimizer(model, settings, total)
    start = load_latest_checkpoint(ckpt_dir, model, opt, sched, order) if ckpt_dir else 0
    if on_resume is not None and dist.is_main:
        on_resume(start)  # steps from ``start`` on are about to be logged (again)
    last_loss = float("nan")
    bar = tqdm(range(start, total), total=total, initial=start, desc="train",
               disable=not progress or not dist.is_main, leave=False)
    for step in bar:
        batch = shard(batches[order[step]], dist).to(device)
        out = forward(input_ids=batch, labels=batch)
        loss = out.loss
        global_loss = mean_across(loss, dist)  # every task sees the same value, so all stop together
        if not torch.isfinite(global_loss):
            raise TaylorlabError(
                f"training loss is {global_loss.item()} at step {step} (batch {order[step]}); lower train.lr "
                f"(now {settings.lr:g}) or set train.grad_clip; checkpoints before step {step} are kept."
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if settings.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip))
        opt.step()
        sched.step()
        last_loss = float(global_loss.item())
        if on_step is not None and dist.is_main:
            on_step(step, {"train/loss": last_loss, "train/lr": sched.get_last_lr()[0],
                           **({"train/grad_norm": grad_norm} if grad_norm is not None else {})})
        bar.set_postfix(loss=f"{last_loss:.3f}")
        done = step + 1
        if ckpt_dir is not None and dist.is_main and (done % settings.checkpoint_every == 0) and done < total:
            save_checkpoint(ckpt_dir, done, model, opt, sched, order, settings.keep_checkpoints)
    bar.close()
    return {"steps": total, "resumed_from": start, "final_loss": last_loss, "settings": asdict(settings),
            "world_size": dist.world_size}
