"""Memorization by position: M[i, j] = loss on training batch i at the end of training when batch i
is placed at position j (the other batches keep their relative order, shifted), by an estimator and
by real retraining, with the numeric error between them (the paper reported none). With validation
batches, generalization by position too: G[i, j] = held-out loss at the end for the same orders.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import torch

from scipy.stats import spearmanr

from taylorlab.order.recorded import Record
from taylorlab.order.registry import estimate
from taylorlab.order.trajectory import retrain


def moved_order(T: int, i: int, j: int) -> List[int]:
    """The reference order (batch t at step t) with batch i moved to position j."""
    rest = [b for b in range(T) if b != i]
    return rest[:j] + [i] + rest[j:]


def memorization_matrix(rec: Record, cells: Sequence[Tuple[int, int]], estimator: str = "fut-carry",
                        options: Any = None, with_retraining: bool = True, retrain_batched: bool = False) -> Dict:
    """Estimated (and retrained) M over ``cells`` [(i, j), ...]; NaN where a cell was not asked for.
    With ``val``, G (held-out loss) as well, under ``generalization``. The truth starts each moved order
    from the recorded state after the min(i, j) steps it shares with the reference; ``retrain_batched``
    trains the cells' orders together (vmap; on a GPU)."""
    flat, traj, batches, val = rec.flat, rec.traj, rec.batches, rec.val
    T = traj.T
    orders = [moved_order(T, i, j) for i, j in cells]
    est = estimate(estimator, rec, orders, options)
    if est.params is None:
        raise ValueError(f"memorization needs final parameters; {estimator} gives losses only")
    true = (retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=retrain_batched, reference=traj)
            if with_retraining else None)
    none_loss = {i: float(flat.loss(traj.final, batches[i]).detach()) for i in {i for i, _ in cells}}
    ref_val = flat.eval_loss(traj.final, val) if val is not None else None
    M = {k: torch.full((T, T), math.nan, dtype=torch.float64) for k in ("est", "true", "none")}
    G = {k: torch.full((T, T), math.nan, dtype=torch.float64) for k in ("est", "true", "none")}
    for k, (i, j) in enumerate(cells):
        runs = {"est": est.params[k], **({"true": true[k]} if true is not None else {})}
        M["none"][i, j] = none_loss[i]
        G["none"][i, j] = ref_val if val is not None else math.nan
        for name, theta in runs.items():
            M[name][i, j] = float(flat.loss(theta, batches[i]).detach())
            if val is not None:
                G[name][i, j] = flat.eval_loss(theta, val)

    def result(R):
        out = {"estimated": R["est"], "no_change": R["none"]}
        if true is not None:
            out.update(true=R["true"], **_agreement(R["est"], R["true"], R["none"]))
        return out

    out = {"cells": list(map(list, cells)), "estimator": estimator, "estimate_wall_s": est.wall_s, **result(M),
           "linearisation": est.linearisation}
    if val is not None:
        out["generalization"] = result(G)
    return out


def _agreement(est, true, none) -> Dict:
    mask = ~torch.isnan(true)
    rho = spearmanr(est[mask].numpy(), true[mask].numpy()).statistic if int(mask.sum()) > 1 else math.nan
    return {"mae": float((est - true)[mask].abs().mean()), "mae_no_change": float((none - true)[mask].abs().mean()),
            "spearman": float(rho)}
