"""train: AdamW over the training split in an explicit batch order (the order is an artifact).

Checkpoints the full resume state every ``checkpoint_every`` steps; a re-run resumes from the newest
complete checkpoint and reaches the same final weights (bitwise on CPU). Data parallel when the job
has several tasks (``resources.tasks_per_node`` on Slurm, or torchrun): each task takes its rows of
every global batch; rank 0 evaluates and writes the artifacts.
"""

from __future__ import annotations

import shutil

from taylorlab.evaluation import perplexity
from taylorlab.io import atomic_write_json
from taylorlab.models import context_length, load_model_artifact, resolve_device
from taylorlab.stages.common import save_model, split_tokens
from taylorlab.training import TrainSettings, batch_order, distributed, make_batches, train


def run(ctx):
    c = ctx.cfg
    device = resolve_device(c.device)
    dist = ctx.dist if ctx.dist is not None else distributed.DistInfo()
    if dist.enabled:
        distributed.init(dist, device.type)
        device = distributed.device_for(dist, device)
    model, tok = load_model_artifact(ctx.artifact("model", "model"), dtype=c.dtype)
    seq_len = context_length(model, c.seq_len)
    batches = make_batches(split_tokens(ctx, "train", tok), seq_len, c.batch_size, c.max_batches)
    order = batch_order(batches.shape[0], c.order, c.order_seed)
    if dist.is_main:
        atomic_write_json(ctx.dir / "order.json", order)
    settings = TrainSettings.of(c)
    ctx.log.info("training on %d batches of %dx%d tokens on %s (%d task%s)", batches.shape[0], c.batch_size,
                 seq_len, device, dist.world_size, "s" if dist.enabled else "")
    try:
        result = train(model, batches, order, settings, ckpt_dir=ctx.checkpoint_dir, device=device,
                       progress=ctx.progress, on_step=lambda step, m: ctx.tracker.log(m, step=step),
                       on_resume=ctx.tracker.drop_steps_from, dist=dist)
    finally:
        distributed.shutdown(dist)
    if not dist.is_main:
        return {}
    val = perplexity(model, split_tokens(ctx, "validation", tok), seq_len, batch_size=c.batch_size,
                     max_windows=64, device=device)
    ctx.tracker.summary({"train/final_loss": result["final_loss"], "validation/ppl": val["ppl"],
                         "validation/nll": val["nll"], "train/steps": result["steps"],
                         "train/resumed_from": result["resumed_from"]})
    save_model(model.cpu(), tok, ctx.dir / "model")
    atomic_write_json(ctx.dir / "train_result.json", {**result, "validation": val, "seq_len": seq_len})
    shutil.rmtree(ctx.checkpoint_dir, ignore_errors=True)  # the final weights are in model/
    return {"model": "model", "order": "order.json", "result": "train_result.json"}
