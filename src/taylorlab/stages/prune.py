"""prune: one method at one sparsity and pattern, layer by layer; writes the pruned model with
save_pretrained, a per-layer sparsity report and the recipe that made it."""

from __future__ import annotations

import dataclasses
import time

import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from taylorlab.config.schema import effective_sparsity
from taylorlab.errors import ArtifactError, ConfigError
from taylorlab.io import atomic_write_json
from taylorlab.models import load_model_artifact, resolve_device
from taylorlab.pruning import Calibration, Profile, prune_model, registry, sparsity_report
from taylorlab.pruning.compact import save_compact
from taylorlab.stages.common import save_model


def _load_safetensors(path):
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return load_file(str(path)), meta
    except Exception as exc:
        raise ArtifactError(f"{path} is corrupt ({type(exc).__name__}); force the calibrate stage to re-run.") from exc


def run(ctx):
    c = ctx.cfg
    device = resolve_device(c.device)
    method = registry.get(c.method)
    options = method.make_options(OmegaConf.to_container(c.options, resolve=True))
    model, tok = load_model_artifact(ctx.artifact("model", "model"), device="cpu", dtype=c.dtype)
    windows, wmeta = _load_safetensors(ctx.artifact("calibrate", "windows"))
    gradients, gmeta = None, {}
    if method.needs_gradients:
        gpath = ctx.artifact("calibrate", "gradients", required=False)
        if gpath is None:
            raise ConfigError(f"prune.method={c.method} needs gradient norms, but the calibrate stage ran with "
                              "calibrate.gradients=false; set it to true.")
        gradients, gmeta = _load_safetensors(gpath)
    calibration = Calibration(windows=windows["windows"], gradients=gradients,
                              gradient_samples=int(gmeta.get("num_samples", 0)) or None,
                              gradient_norm=gmeta.get("norm", "l2"))
    sparsity = effective_sparsity(c)
    t0 = time.time()
    profile = Profile(c.profile, c.owl_m, c.owl_lambda)
    per_block = prune_model(model, c.method, sparsity=sparsity, pattern=c.pattern, options=options,
                            calibration=calibration, profile=profile, batch_size=c.batch_size, device=device,
                            offload=c.offload, progress=ctx.progress, walk=c.walk,
                            kernels=c.kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.time() - t0
    report = sparsity_report(model)
    recipe = {"method": c.method, "sparsity": sparsity, "pattern": c.pattern, "mask_device": device.type,
              "options": dataclasses.asdict(options), "calibration": wmeta,
              "profile": dataclasses.asdict(profile), "walk": c.walk, "kernels": c.kernels, "block_sparsity": [per_block[i] for i in sorted(per_block)],
              "gradient_norm": gmeta.get("norm"), "calibrate_stage": ctx.parents["calibrate"].name,
              "model_stage": ctx.parents["model"].name, "prune_wall_s": wall}
    save_model(model.cpu(), tok, ctx.dir / "model")
    recipe["dense_bytes"] = sum(f.stat().st_size for f in (ctx.dir / "model").glob("*.safetensors"))
    if c.save_compact:  # what the user gained, on disk: kept values and a bitmask
        recipe["compact_bytes"] = save_compact(model, ctx.dir / "model.compact.safetensors")
        ctx.log.info("compact form: %.1f MB against %.1f MB dense (model.compact.safetensors; "
                     "taylorlab.pruning.compact.load_compact reads it back)", recipe["compact_bytes"] / 1e6,
                     recipe["dense_bytes"] / 1e6)
    atomic_write_json(ctx.dir / "sparsity.json", report)
    atomic_write_json(ctx.dir / "recipe.json", recipe)
    ctx.tracker.summary({"prune/sparsity": report["total"]["sparsity"], "prune/wall_s": wall})
    ctx.tracker.artifact(ctx.dir.name, "model", {"model": ctx.dir / "model", "recipe.json": ctx.dir / "recipe.json",
                                                 "sparsity.json": ctx.dir / "sparsity.json"},
                         uses=[p.name for p in ctx.parents.values()], metadata=recipe)
    ctx.log.info("%s %s at %.2f: %.4f of block weights are zero (%.1f s)", c.method, c.pattern, sparsity,
                 report["total"]["sparsity"], wall)
    return {"model": "model", "sparsity": "sparsity.json", "recipe": "recipe.json",
            **({"compact": "model.compact.safetensors"} if c.save_compact else {})}
