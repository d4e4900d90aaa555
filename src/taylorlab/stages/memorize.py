"""memorize: memorization by position — M[i, j], the loss on training batch i at the end of training
when batch i is moved to position j (the others keep their order), by an estimator and by real
retraining, with the error between them and against "no change"; the same for the held-out loss
(generalization by position); heatmaps beside the truth."""

from __future__ import annotations

import math

import torch
from omegaconf import OmegaConf

from taylorlab.errors import ConfigError
from taylorlab.io import atomic_path, atomic_write_json
from taylorlab.models import resolve_device
from taylorlab.order.curriculum import memorization_cells
from taylorlab.order.memorization import memorization_matrix
from taylorlab.report import figures
from taylorlab.order import Record
from taylorlab.stages.common import check_linearisation, record_paths


def _plain(x):
    """The result as JSON: matrices as rows with null where a cell was not computed."""
    if isinstance(x, torch.Tensor):
        return [[None if math.isnan(v) else v for v in row] for row in x.tolist()]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def run(ctx):
    c = ctx.cfg
    device = resolve_device(c.device)
    rec = Record.load(record_paths(ctx), device)
    traj = rec.traj
    bad = [i for i in c.batches if not 0 <= i < traj.T]
    if bad:
        raise ConfigError(f"memorize.batches has ids {bad} outside the recorded run's 0..{traj.T - 1}.")
    cells = memorization_cells(traj.T, list(c.batches), c.num_batches, c.num_positions)
    ctx.log.info("memorization: %d cells (batch, position) by %s%s", len(cells), c.estimator,
                 " and by retraining" if c.with_retraining else "")
    res = memorization_matrix(rec, cells, estimator=c.estimator, options=OmegaConf.to_container(c.options, resolve=True),
                              with_retraining=c.with_retraining, retrain_batched=device.type == "cuda")
    check_linearisation(ctx, c.estimator, res["linearisation"])
    out = {"T": traj.T, **_plain(res)}
    if "true" in res:
        gen = res["generalization"]
        ctx.tracker.summary({**{f"memorize/{k}": res[k] for k in ("mae", "mae_no_change", "spearman")},
                             **{f"memorize/generalization_{k}": gen[k] for k in ("mae", "mae_no_change", "spearman")}})
        ctx.log.info("memorization: %s MAE %.4g (no change %.4g), Spearman %.3f", c.estimator, res["mae"],
                     res["mae_no_change"], res["spearman"])
    atomic_write_json(ctx.dir / "memorization.json", out)
    artifacts = {"memorization": "memorization.json"}
    with atomic_path(ctx.dir / "memorization.png") as tmp:
        figures.memorization_heatmaps(out, tmp)
    artifacts["figure"] = "memorization.png"
    ctx.tracker.image("memorize/heatmaps", ctx.dir / "memorization.png")
    return artifacts
