"""calibrate: N seeded windows of L tokens from the calibration split (L capped by the model's
context) and, for GBLM, the dense model's exact per-sequence gradient norms of every block linear.
Computed once and shared by every method, sparsity and pattern of a sweep."""

from __future__ import annotations

import time

import torch

from taylorlab.data.tokens import sample_windows
from taylorlab.io import atomic_save_tensors
from taylorlab.models import context_length, load_model_artifact, resolve_device
from taylorlab.pruning import per_sequence_gradient_stats
from taylorlab.stages.common import split_tokens


def run(ctx):
    c = ctx.cfg
    device = resolve_device(c.device)
    model, tok = load_model_artifact(ctx.artifact("model", "model"), device=device, dtype=c.dtype)
    seq_len = context_length(model, c.seq_len)
    windows = sample_windows(split_tokens(ctx, "calibration", tok), c.num_samples, seq_len, c.seed)
    meta = {"num_samples": str(c.num_samples), "seq_len": str(seq_len), "seed": str(c.seed), "split": "calibration"}
    atomic_save_tensors(ctx.dir / "windows.safetensors", {"windows": windows}, metadata=meta)
    artifacts = {"windows": "windows.safetensors"}
    if c.gradients:
        t0 = time.time()
        stats = per_sequence_gradient_stats(model, windows, batch_size=c.batch_size, norm=c.grad_norm, device=device,
                                            progress=ctx.progress, kernels=c.kernels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.time() - t0
        atomic_save_tensors(ctx.dir / "gradients.safetensors", stats, metadata={**meta, "norm": c.grad_norm})
        ctx.tracker.summary({"calibrate/gradient_wall_s": wall, "calibrate/layers": len(stats)})
        artifacts["gradients"] = "gradients.safetensors"
    ctx.log.info("calibration: %d windows of %d tokens%s", c.num_samples, seq_len,
                 ", gradient norms" if c.gradients else "")
    return artifacts
