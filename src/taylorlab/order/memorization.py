"""Memorization by position: M[i, j] = loss on training batch i at the end of training when batch i
is placed at position j (the other batches keep their relative order, shifted), by an estimator and
by real retraining, with the numeric error between them (the paper reported none).
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
                        estimator: str = "fut-carry", with_retraining: bool = True, **options) -> Dict:
    """Estimated (and retrained) M over ``cells`` [(i, j), ...]; NaN where a cell was not asked for."""
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
        mask = ~torch.isnan(m_true)
        out.update(true=m_true, mae=float((m_est - m_true)[mask].abs().mean()),
                   mae_no_change=float((m_none - m_true)[mask].abs().mean()),
                   spearman=float(spearmanr(m_est[mask].numpy(), m_true[mask].numpy()).statistic))
    return out
