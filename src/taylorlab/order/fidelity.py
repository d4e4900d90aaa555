"""How an estimator is judged against real retraining (../shared/methods/order-effects.md)."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from taylorlab.order.registry import get as get_estimator, names as estimator_names
from taylorlab.order.functional import ppl
from taylorlab.order.trajectory import retrain


def _baselines():
    """The estimators that stand for "no change" (the ratio's denominator)."""
    return {n for n in estimator_names() if get_estimator(n).baseline}


def row_distances(a: torch.Tensor, b: torch.Tensor, rows: Sequence[int], b_rows: Optional[Sequence[int]] = None
                  ) -> torch.Tensor:
    """||a[i] - b[j]|| for the paired rows (``b`` a single [d] vector: against it), one pair at a time:
    [K, d] differences and row selections of a 135M model's answers are 17 GB each in host memory,
    which four estimators' copies at once had run out of."""
    b_rows = rows if b_rows is None else b_rows
    if not len(rows):
        return a.new_empty(0)
    return torch.stack([torch.linalg.vector_norm(a[i] - (b if b.dim() == 1 else b[j])) for i, j in zip(rows, b_rows)])


def fidelity_table(true_loss: List[float], est_loss: Dict[str, List[float]], true_params: torch.Tensor,
                   est_params: Dict[str, torch.Tensor], theta0: torch.Tensor, cost: Dict[str, float],
                   retrain_cost: float, rows: Optional[Sequence[int]] = None) -> List[dict]:
    """One row per estimator: Spearman and Pearson of estimated vs true final validation loss,
    mean |PPL_est - PPL_true| and its ratio to "no change"'s (a baseline estimator in the table), relative
    parameter error, cost in retraining-equivalents. ``rows``: the rows of the [K, d] parameters that
    the losses stand for (None: all), read in place."""
    from scipy.stats import pearsonr, spearmanr

    idx = list(range(len(true_params))) if rows is None else list(rows)
    true_ppl = [ppl(x) for x in true_loss]
    disp = row_distances(true_params, theta0, idx)
    rows = []
    for name, est in est_loss.items():
        constant = len(set(round(x, 12) for x in est)) == 1
        sp = float("nan") if constant else float(spearmanr(est, true_loss).statistic)
        pe = float("nan") if constant else float(pearsonr(est, true_loss).statistic)
        mae = sum(abs(ppl(e) - t) for e, t in zip(est, true_ppl)) / len(est)  # inf when an estimate diverged
        rel = (float((row_distances(est_params[name], true_params, idx) / disp).mean())
               if name in est_params else None)  # estimators that give losses only (additive)
        rows.append({"estimator": name, "spearman": sp, "pearson": pe, "mae_ppl": mae, "rel_param_error": rel,
                     "wall_s": cost.get(name), "retrainings_equivalent": (cost.get(name) or 0) / retrain_cost})
    base = next((r["mae_ppl"] for r in rows if r["estimator"] in _baselines()), None)
    for r in rows:
        r["mae_ratio_to_none"] = r["mae_ppl"] / base if base else None
    return rows


def truth_sensitivity(flat, traj, batches, val, orders, true_params: torch.Tensor, true_loss: List[float], eps: float,
                      batched: bool = False, chunk=None, seed: int = 123, compile: bool = False,
                      rows: Optional[Sequence[int]] = None) -> dict:
    """How reproducible the ground truth itself is: the same orders retrained from
    ``theta_0 * (1 + eps * z)`` (z seeded Gaussian) against the unperturbed retraining. Where a nudge
    far below any estimator's error already reshuffles the orders' ranking, the order -> loss map is
    not a smooth function of the run and no expansion around one run can rank the orders: the
    Spearman here bounds what an estimator can reach. ``median_rel_param_difference`` is the change
    of the final weights as a fraction of the training displacement. ``rows``: the rows of
    ``true_params`` that ``orders`` are (None: all, in order), read in place."""
    from scipy.stats import spearmanr

    gen = torch.Generator(device=traj.theta0.device).manual_seed(seed)
    z = torch.randn(traj.theta0.shape, generator=gen, device=traj.theta0.device, dtype=traj.theta0.dtype)
    moved = retrain(flat, traj.theta0 * (1 + eps * z), batches, orders, traj.lrs, traj.hp, batched=batched, chunk=chunk,
                    compile=compile)
    loss = [flat.eval_loss(p, val) for p in moved]
    moved, theta0 = moved.to(true_params.device), traj.theta0.to(true_params.device)
    rows = list(range(len(orders))) if rows is None else list(rows)
    mine = list(range(len(orders)))
    rel = row_distances(moved, true_params, mine, rows) / row_distances(true_params, theta0, rows)
    spread = max(true_loss) - min(true_loss)
    mae = sum(abs(x - y) for x, y in zip(loss, true_loss)) / len(loss)
    constant = len(set(round(x, 12) for x in true_loss)) == 1
    return {"relative_perturbation": eps,
            "spearman_true_vs_perturbed": float("nan") if constant else float(spearmanr(loss, true_loss).statistic),
            "mae_loss": mae, "mae_over_spread": mae / spread if spread else None,
            "median_rel_param_difference": float(rel.median())}
