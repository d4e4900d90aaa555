"""Memorization by position: M[i, j] = loss on training batch i at the end of training when batch i
is placed at position j (the other batches keep their relative order, shifted), by an estimator and
by real retraining, with the numeric error between them (the paper reported none). With validation
batches, generalization by position too: G[i, j] = held-out loss at the end for the same orders.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch

from taylorlab.order.estimators import estimate
from taylorlab.order.trajectory import Trajectory, retrain


def moved_order(T: int, i: int, j: int) -> List[int]:
    """The reference order (batch t at step t) with batch i moved to position j."""
    rest = [b for b in range(T) if b != i]
    return rest[:j] + [i] + rest[j:]


def memorization_matrix(flat, traj: Trajectory, batches: torch.Tensor, cells: Sequence[Tuple[int, int]],
                        estimator: str = "fut-carry", with_retraining: bool = True, val=None, **options) -> Dict:
    """Estimated (and retrained) M over ``cells`` [(i, j), ...]; NaN where a cell was not asked for.
    With ``val``, G (held-out loss) as well, under ``generalization``."""
    from scipy.stats import spearmanr

    T = traj.T
    orders = [moved_order(T, i, j) for i, j in cells]
    est = estimate(estimator, flat, traj, batches, orders, **options)
    shape = (T, T)
    m_est = torch.full(shape, math.nan, dtype=torch.float64)
    m_true = torch.full(shape, math.nan, dtype=torch.float64)
    m_none = torch.full(shape, math.nan, dtype=torch.float64)
    true = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=False) if with_retraining else None
    for k, (i, j) in enumerate(cells):
        m_est[i, j] = float(flat.loss(est["params"][k], batches[i]).detach())
        m_none[i, j] = float(flat.loss(traj.final, batches[i]).detach())
        if true is not None:
            m_true[i, j] = float(flat.loss(true[k], batches[i]).detach())
    out = {"cells": list(map(list, cells)), "estimated": m_est, "no_change": m_none, "estimator": estimator,
           "estimate_wall_s": est["wall_s"]}
    if true is not None:
        out.update(true=m_true, **_agreement(m_est, m_true, m_none, spearmanr))
    if val is not None:
        g_est, g_true, g_none = (torch.full(shape, math.nan, dtype=torch.float64) for _ in range(3))
        ref_val = flat.eval_loss(traj.final, val)
        for k, (i, j) in enumerate(cells):
            g_est[i, j] = flat.eval_loss(est["params"][k], val)
            g_none[i, j] = ref_val
            if true is not None:
                g_true[i, j] = flat.eval_loss(true[k], val)
        gen = {"estimated": g_est, "no_change": g_none}
        if true is not None:
            gen.update(true=g_true, **_agreement(g_est, g_true, g_none, spearmanr))
        out["generalization"] = gen
    return out


def _agreement(est, true, none, spearmanr) -> Dict:
    mask = ~torch.isnan(true)
    rho = spearmanr(est[mask].numpy(), true[mask].numpy()).statistic if int(mask.sum()) > 1 else math.nan
    return {"mae": float((est - true)[mask].abs().mean()), "mae_no_change": float((none - true)[mask].abs().mean()),
            "spearman": float(rho)}
