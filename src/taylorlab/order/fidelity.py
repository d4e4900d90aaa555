"""How an estimator is judged against real retraining (../shared/methods/order-effects.md)."""

from __future__ import annotations

from typing import Dict, List

import torch

from taylorlab.order.registry import get as get_estimator, names as estimator_names
from taylorlab.order.functional import ppl
from taylorlab.order.trajectory import retrain


def _baselines():
    """The estimators that stand for "no change" (the ratio's denominator)."""
    return {n for n in estimator_names() if get_estimator(n).baseline}


def fidelity_table(true_loss: List[float], est_loss: Dict[str, List[float]], true_params: torch.Tensor,
                   est_params: Dict[str, torch.Tensor], theta0: torch.Tensor, cost: Dict[str, float],
                   retrain_cost: float) -> List[dict]:
    """One row per estimator: Spearman and Pearson of estimated vs true final validation loss,
    mean |PPL_est - PPL_true| and its ratio to "no change"'s (a baseline estimator in the table), relative
    parameter error, cost in retraining-equivalents."""
    from scipy.stats import pearsonr, spearmanr

    true_ppl = [ppl(x) for x in true_loss]
    disp = torch.linalg.vector_norm(true_params - theta0, dim=1)
    rows = []
    for name, est in est_loss.items():
        constant = len(set(round(x, 12) for x in est)) == 1
        sp = float("nan") if constant else float(spearmanr(est, true_loss).statistic)
        pe = float("nan") if constant else float(pearsonr(est, true_loss).statistic)
        mae = sum(abs(ppl(e) - t) for e, t in zip(est, true_ppl)) / len(est)  # inf when an estimate diverged
        rel = (float((torch.linalg.vector_norm(est_params[name] - true_params, dim=1) / disp).mean())
               if name in est_params else None)  # estimators that give losses only (additive)
        rows.append({"estimator": name, "spearman": sp, "pearson": pe, "mae_ppl": mae, "rel_param_error": rel,
                     "wall_s": cost.get(name), "retrainings_equivalent": (cost.get(name) or 0) / retrain_cost})
    base = next((r["mae_ppl"] for r in rows if r["estimator"] in _baselines()), None)
    for r in rows:
        r["mae_ratio_to_none"] = r["mae_ppl"] / base if base else None
    return rows


def truth_sensitivity(flat, traj, batches, val, orders, true_params: torch.Tensor, true_loss: List[float], eps: float,
                      batched: bool = False, chunk=None, seed: int = 123, compile: bool = False) -> dict:
    """How reproducible the ground truth itself is: the same orders retrained from
    ``theta_0 * (1 + eps * z)`` (z seeded Gaussian) against the unperturbed retraining. Where a nudge
    far below any estimator's error already reshuffles the orders' ranking, the order -> loss map is
    not a smooth function of the run and no expansion around one run can rank the orders: the
    Spearman here bounds what an estimator can reach. ``median_rel_param_difference`` is the change
    of the final weights as a fraction of the training displacement."""
    from scipy.stats import spearmanr

    gen = torch.Generator(device=traj.theta0.device).manual_seed(seed)
    z = torch.randn(traj.theta0.shape, generator=gen, device=traj.theta0.device, dtype=traj.theta0.dtype)
    moved = retrain(flat, traj.theta0 * (1 + eps * z), batches, orders, traj.lrs, traj.hp, batched=batched, chunk=chunk,
                    compile=compile)
    loss = [flat.eval_loss(p, val) for p in moved]
    moved, theta0 = moved.to(true_params.device), traj.theta0.to(true_params.device)
    rel = torch.linalg.vector_norm(moved - true_params, dim=1) / torch.linalg.vector_norm(true_params - theta0, dim=1)
    spread = max(true_loss) - min(true_loss)
    mae = sum(abs(x - y) for x, y in zip(loss, true_loss)) / len(loss)
    constant = len(set(round(x, 12) for x in true_loss)) == 1
    return {"relative_perturbation": eps,
            "spearman_true_vs_perturbed": float("nan") if constant else float(spearmanr(loss, true_loss).statistic),
            "mae_loss": mae, "mae_over_spread": mae / spread if spread else None,
            "median_rel_param_difference": float(rel.median())}
