"""How an estimator is judged against real retraining (../shared/methods/order-effects.md)."""

from __future__ import annotations

from typing import Dict, List

import torch

from taylorlab.order.functional import ppl


def fidelity_table(true_loss: List[float], est_loss: Dict[str, List[float]], true_params: torch.Tensor,
                   est_params: Dict[str, torch.Tensor], theta0: torch.Tensor, cost: Dict[str, float],
                   retrain_cost: float) -> List[dict]:
    """One row per estimator: Spearman and Pearson of estimated vs true final validation loss,
    mean |PPL_est - PPL_true| and its ratio to "no change"'s (when ``none`` is in the table), relative
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
    base = next((r["mae_ppl"] for r in rows if r["estimator"] == "none"), None)
    for r in rows:
        r["mae_ratio_to_none"] = r["mae_ppl"] / base if base else None
    return rows
