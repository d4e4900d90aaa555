"""record: the reference run of T batches for the order-effect estimators — the optimiser state
(parameters, Adam's m and v) every ``checkpoint_every`` steps (1: every step; more: sparse
checkpoints, the steps between replayed exactly by the estimators), the batch order (identity:
batch t at step t), the learning rates and Adam's settings. The T batches are the training split's
first, or the ones after ``skip_batches`` — for continued training from a checkpoint (the model stage
with ``source=pretrained``) that has seen those."""

from __future__ import annotations

import torch

from taylorlab.errors import ConfigError, TaylorlabError
from taylorlab.io import atomic_save_tensors, atomic_write_json
from taylorlab.models import load_model_artifact, resolve_device
from taylorlab.order import AdamHP, FlatModel, record
from taylorlab.order.memory import plan_checkpoints
from taylorlab.stages.common import save_model, split_tokens
from taylorlab.training import TrainSettings, make_batches
from taylorlab.training.trainer import lr_lambda


def run(ctx):
    c = ctx.cfg
    device = resolve_device(c.device)
    model, tok = load_model_artifact(ctx.artifact("model", "model"), dtype="float32")
    dtype = ("float32" if device.type == "cuda" else "float64") if c.dtype == "auto" else c.dtype
    model = model.to(device=device, dtype=torch.float64 if dtype == "float64" else torch.float32)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and c.seq_len > positions:
        raise ConfigError(f"record.seq_len={c.seq_len} is longer than the model's context ({positions} positions); "
                          f"set record.seq_len={positions} or less.")
    tokens, per_batch = split_tokens(ctx, "train", tok), c.batch_size * c.seq_len
    if tokens.numel() < (c.skip_batches + c.num_batches) * per_batch:
        raise TaylorlabError(f"record needs {c.skip_batches} skipped + {c.num_batches} batches of {c.batch_size}x{c.seq_len} "
                             f"tokens; the training split has {tokens.numel() // per_batch}: lower record.num_batches, "
                             "record.skip_batches or the batch shape, or add data.")
    batches = make_batches(tokens[c.skip_batches * per_batch:], c.seq_len, c.batch_size, c.num_batches).to(device)
    val = make_batches(split_tokens(ctx, "validation", tok), c.seq_len, c.batch_size, c.validation_batches).to(device)
    T = batches.shape[0]
    sched = lr_lambda(TrainSettings.of(c, checkpoint_every=1), T)
    lrs = [c.lr * sched(t) for t in range(T)]
    hp = AdamHP(betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay, grad_clip=c.grad_clip)
    flat = FlatModel(model, micro_batch=c.micro_batch)
    state_bytes = 3 * flat.dim * (8 if dtype == "float64" else 4)
    plan = plan_checkpoints(T, state_bytes, device, ctx.dir, c.checkpoint_every)
    ctx.log.info("record: %d states of %.2f GiB stored (every %d steps), %.2f GiB on disk%s", plan["stored_states"],
                 state_bytes / 2**30, plan["checkpoint_every"], plan["disk_bytes"] / 2**30,
                 f"; {plan['device_free_bytes'] / 2**30:.1f} GiB free on the GPU" if plan["device_free_bytes"] else "")
    traj = record(flat, batches, list(range(T)), lrs, hp, every=plan["checkpoint_every"], progress=ctx.progress)
    ref_val = flat.eval_loss(traj.final, val)
    atomic_save_tensors(ctx.dir / "trajectory.safetensors", {**traj.tensors(), "batches": batches, "validation": val})
    atomic_write_json(ctx.dir / "trajectory.json", {"order": traj.order, "lrs": lrs, "betas": list(hp.betas),
                                                    "eps": hp.eps, "weight_decay": hp.weight_decay,
                                                    "grad_clip": hp.grad_clip, "T": T, "dim": flat.dim,
                                                    "skip_batches": c.skip_batches,
                                                    "micro_batch": c.micro_batch,
                                                    "checkpoint_every": plan["checkpoint_every"],
                                                    "storage": plan,
                                                    "reference_validation_loss": ref_val, "dtype": dtype})
    # the record never changes the module's own weights (gradients are functional): they are theta_0
    save_model(model.cpu().float(), tok, ctx.dir / "model")  # the architecture (initial weights) for the estimators
    ctx.tracker.summary({"record/T": T, "record/parameters": flat.dim, "record/validation_loss": ref_val,
                         "record/stored_states": len(traj.stored), "record/disk_bytes": plan["disk_bytes"],
                         "record/checkpoint_every": plan["checkpoint_every"]})
    ctx.log.info("recorded %d steps of a %d-parameter model (%d states stored); reference validation loss %.4f",
                 T, flat.dim, len(traj.stored), ref_val)
    return {"trajectory": "trajectory.safetensors", "meta": "trajectory.json", "model": "model"}
