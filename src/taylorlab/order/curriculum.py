"""Curriculum design: candidate orders scored by an estimator, the best few retrained for real.

Candidates are the named curricula (reverse, easy-to-hard, hard-to-easy by each batch's loss at the
end of the reference run), ``num_random`` random orders and, with ``additive_proposal``, the order
that minimises the additive surrogate (an exact linear assignment). The ``estimator`` ranks them all;
the ``verify_top`` best by estimate and the reference order are then retrained, so the recommended
curriculum is the best *verified* one and the estimate's ranking can be checked against the truth.
"""

from __future__ import annotations

import random
from typing import Dict, List, Optional

import torch

from taylorlab.order.estimators import additive_scores, best_order, estimate, heuristic_orders, timed
from taylorlab.order.trajectory import Trajectory, retrain


def candidate_orders(flat, traj: Trajectory, batches, num_random: int, seed: int,
                     heuristics=("reverse", "easy_to_hard", "hard_to_easy")) -> Dict[str, List[int]]:
    T = traj.T
    losses = [float(flat.loss(traj.final, b).detach()) for b in batches]
    heur = heuristic_orders(losses)
    out = {"reference": list(range(T)), **{h: heur[h] for h in heuristics}}
    rng = random.Random(seed)
    for k in range(num_random):
        o = list(range(T))
        rng.shuffle(o)
        out[f"random-{k}"] = o
    return out


def design_curriculum(flat, traj: Trajectory, batches: torch.Tensor, val: torch.Tensor, reference_loss: float,
                      candidates: Dict[str, List[int]], estimator: str = "fut-carry", verify_top: int = 3,
                      additive_proposal: bool = False, retrain_batched: bool = False, **options) -> Dict:
    """Rank ``candidates`` by ``estimator``'s validation loss; retrain the ``verify_top`` best and the
    reference order; return every candidate's estimate, the verified ones' true loss and the best
    verified order (ties and all: never an unverified claim)."""
    cands = dict(candidates)
    proposal_s = 0.0
    if additive_proposal:
        S, proposal_s = timed(lambda: additive_scores(flat, traj, batches, val))
        cands["additive-optimum"] = best_order(S)
    names = list(cands)
    out = estimate(estimator, flat, traj, batches, [cands[n] for n in names], val=val, reference_loss=reference_loss,
                   **options)
    est = out["loss"] if out["params"] is None else [flat.eval_loss(p, val) for p in out["params"]]
    ranked = sorted(range(len(names)), key=lambda i: (est[i] != est[i], est[i]))  # NaN last
    verify = [i for i in ranked if names[i] != "reference"][:verify_top]
    verify_names = ["reference"] + [names[i] for i in verify]
    params, retrain_s = timed(lambda: retrain(flat, traj.theta0, batches, [cands[n] for n in verify_names], traj.lrs,
                                              traj.hp, batched=retrain_batched))
    true = {n: flat.eval_loss(p, val) for n, p in zip(verify_names, params)}
    rows = [{"name": n, "order": cands[n], "estimated_loss": est[i], "rank_by_estimate": ranked.index(i) + 1,
             "true_loss": true.get(n)} for i, n in enumerate(names)]
    best = min(true, key=true.get)
    return {"estimator": estimator, "candidates": rows, "best": best, "best_order": cands[best],
            "best_true_loss": true[best], "reference_true_loss": true["reference"],
            "gain_vs_reference": true["reference"] - true[best], "estimate_wall_s": out["wall_s"],
            "proposal_wall_s": proposal_s, "retrain_wall_s": retrain_s, "verified": len(verify_names)}


def memorization_cells(T: int, batch_ids: Optional[List[int]], num_batches: int, num_positions: int):
    """(i, j) cells: the chosen batches (default: ``num_batches`` spread over the run) each moved to
    ``num_positions`` positions spread from first to last."""
    def spread(n):
        n = max(1, min(n, T))
        return sorted({round(k * (T - 1) / max(1, n - 1)) for k in range(n)})

    ids = list(batch_ids) if batch_ids else spread(num_batches)
    return [(i, j) for i in ids for j in spread(num_positions)]
