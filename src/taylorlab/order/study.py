"""An order study: K held-out random orders plus named curricula and explicit queries, answered
by each registered estimator and by real retraining (the ground truth), with the fidelity table,
what every proposed order is worth once retrained, and how stable the truth itself is.

A client of the estimator interface only (``registry.estimate``): nothing here knows an
estimator by name. Retraining is a function the caller may replace (the estimate stage hands in
the engine's fan-out for large models)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from taylorlab.order import registry  # noqa: I001
from taylorlab.order.fidelity import fidelity_table, truth_sensitivity
from taylorlab.order.functional import ppl
from taylorlab.order.queries import final_batch_losses, heuristic_orders, random_orders, timed
from taylorlab.order.recorded import Record
from taylorlab.order.trajectory import retrain, validate_orders

log = logging.getLogger("taylorlab.order")

Retrain = Callable[[List[List[int]]], torch.Tensor]


def study_queries(rec: Record, num_orders: int, seed: int, heuristics: Sequence[str] = (),
                  explicit: Sequence[Sequence[int]] = ()) -> Dict[str, List[int]]:
    """{name: order}: ``random-k`` (the held-out set the fidelity table is computed on), the named
    curricula and ``explicit-i`` queries, each checked to be a permutation of the T batches."""
    named = {f"random-{k}": o for k, o in enumerate(random_orders(rec.T, num_orders, seed))}
    heur = heuristic_orders(final_batch_losses(rec.flat, rec.traj, rec.batches)) if heuristics else {}
    for h in heuristics:
        named[h] = heur[h]
    for i, o in enumerate(explicit):
        named[f"explicit-{i}"] = [int(x) for x in o]
    validate_orders(list(named.values()), rec.T,
                    names=[n if not n.startswith("explicit-") else f"estimate.orders[{n.split('-')[1]}]" for n in named])
    return named


def local_retrain(rec: Record, batched: bool, chunk: Optional[int] = None, compile: bool = False) -> Retrain:
    """Retraining in this process (batched with vmap, or one order at a time)."""
    def run(orders):
        return retrain(rec.flat, rec.traj.theta0, rec.batches, orders, rec.traj.lrs, rec.traj.hp, batched=batched,
                       chunk=chunk, compile=compile, reference=rec.traj)
    return run


def run_study(rec: Record, queries: Mapping[str, List[int]], estimators: Mapping[str, Any], *,
              retrain_fn: Optional[Retrain] = None, batched: bool = False, chunk: Optional[int] = None,
              compile: bool = False, sensitivity: Sequence[float] = (), jobs: int = 1,
              on_estimate: Optional[Callable[[registry.Estimate], None]] = None) -> Dict[str, Any]:
    """Answer ``queries`` with every estimator in ``estimators`` ({name: options}) and with real
    retraining. Returns ``estimates.json``'s content, plus ``params`` ({"true": [K, d], estimator:
    [K, d]}) for the caller to save or drop."""
    names, orders = list(queries), list(queries.values())
    retrain_fn = retrain_fn or local_retrain(rec, batched, chunk, compile)
    true_params, retrain_wall = timed(lambda: retrain_fn(orders))
    true_params = true_params.to(rec.device)
    _, two = timed(lambda: retrain(rec.flat, rec.traj.theta0, rec.batches, orders[:2], rec.traj.lrs, rec.traj.hp,
                                   batched=False))
    one_at_a_time = two / min(2, len(orders))
    true_loss = [rec.flat.eval_loss(p, rec.val) for p in true_params]
    rand = [i for i, n in enumerate(names) if n.startswith("random-")]
    rand_true = sorted(true_loss[i] for i in rand)

    results: Dict[str, registry.Estimate] = {}
    est_loss, est_params, cost, peak = {}, {}, {}, {}
    proposals, selfchecks = {}, {}
    for name, options in estimators.items():
        log.info("estimator %s on %d orders", name, len(orders))
        out = registry.estimate(name, rec, orders, options)
        results[name] = out
        cost[name], peak[name] = out.wall_s, out.peak_gib
        est_loss[name] = out.losses(rec)
        if out.params is not None:
            est_params[name] = out.params
        if out.linearisation:
            selfchecks[name] = out.linearisation
        if out.proposal is not None:
            proposals[name] = _check_proposal(rec, out.proposal, rand_true)
        if on_estimate is not None:
            on_estimate(out)
    table = fidelity_table([true_loss[i] for i in rand], {k: [v[i] for i in rand] for k, v in est_loss.items()},
                           true_params[rand], {k: v[rand] for k, v in est_params.items()}, rec.traj.theta0,
                           cost, one_at_a_time)
    for row in table:  # what a query costs: all queries were answered together (K random + the named ones)
        row["s_per_query"] = row["wall_s"] / len(orders) if row["wall_s"] is not None else None
        row["peak_gib"] = peak.get(row["estimator"])
    sens = []
    for eps in sensitivity:
        log.info("the truth from initial weights nudged by %g", eps)
        sens.append(truth_sensitivity(rec.flat, rec.traj, rec.batches, rec.val, [orders[i] for i in rand],
                                      true_params[rand], [true_loss[i] for i in rand], eps, batched=batched,
                                      chunk=chunk, compile=compile))
    per_order = [{"order_name": n, "order": o, "true_loss": true_loss[i], "true_ppl": ppl(true_loss[i]),
                  **{f"{k}_loss": est_loss[k][i] for k in est_loss},
                  **{f"{k}_ppl": ppl(est_loss[k][i]) for k in est_loss}} for i, (n, o) in enumerate(zip(names, orders))]
    speed = {"retrain_batched_orders_per_s": len(orders) / retrain_wall if batched else None,
             "retrain_one_at_a_time_orders_per_s": 1 / one_at_a_time, "K": len(rand), "T": rec.T,
             "one_retraining_s": one_at_a_time, "retrain_jobs": max(1, jobs), "retrain_wall_s": retrain_wall}
    return {"orders": per_order, "fidelity": table, "speed": speed, "sensitivity": sens,
            "reference_validation_loss": rec.reference_loss, "proposals": proposals, "linearisation": selfchecks,
            "estimators": {n: {"gives_params": registry.get(n).gives_params, "baseline": registry.get(n).baseline}
                           for n in estimators},
            "params": {"true": true_params, **est_params}, "names": names}


def _check_proposal(rec: Record, proposal: Dict[str, Any], rand_true: List[float]) -> Dict[str, Any]:
    """A proposed order retrained for real and set against the random orders' true losses, so a
    claimed curriculum gain is checked, not assumed."""
    order = validate_orders([proposal["order"]], rec.T, names=["the proposed order"])[0]
    true = retrain(rec.flat, rec.traj.theta0, rec.batches, [order], rec.traj.lrs, rec.traj.hp, batched=False,
                   reference=rec.traj)[0]
    true_loss = rec.flat.eval_loss(true, rec.val)
    median = rand_true[len(rand_true) // 2] if rand_true else None
    return {**proposal, "true_loss": true_loss, "random_true_loss_median": median,
            "random_true_loss_min": rand_true[0] if rand_true else None,
            "beats_median_random": median is not None and true_loss < median,
            "beats_best_random": bool(rand_true) and true_loss < rand_true[0]}
