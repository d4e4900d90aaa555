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

from taylorlab.order import costs, registry  # noqa: I001
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
              on_estimate: Optional[Callable[[registry.Estimate], None]] = None, advise: bool = True,
              estimate_fn: Optional[Callable[[str, Any, List[List[int]]], registry.Estimate]] = None,
              gpus: Optional[int] = None) -> Dict[str, Any]:
    """Answer ``queries`` with every estimator in ``estimators`` ({name: options}) and with real
    retraining. Returns ``estimates.json``'s content, plus ``params`` ({"true": [K, d], estimator:
    [K, d]}) for the caller to save or drop. With ``advise`` the cost advisor's prediction for every
    estimator and for batched retraining is made (and logged) first and kept beside the measurement
    (``predicted_s``); every row also gets ``cost_vs_batched_retrain``: its wall time over what batched
    retraining of every order it scored costs, measured in this run. ``estimate_fn(name, options,
    orders)`` answers the per-order estimators (``Estimator.per_order``) instead of this process, e.g.
    split over sub-jobs on several GPUs; ``gpus``: how many GPUs the run used (recorded as ``gpus``)."""
    names, orders = list(queries), list(queries.values())
    prediction = None
    if advise:
        prediction = costs.predict(rec, len(orders), estimators)
        log.info("cost advisor (%d orders, T=%d, on %s): %s", len(orders), rec.T, rec.device, costs.advice(prediction))
    retrain_fn = retrain_fn or local_retrain(rec, batched, chunk, compile)
    true_params, retrain_wall = timed(lambda: retrain_fn(orders))
    # every [K, d] answer is kept in host memory: on a GPU the estimators need its memory for their own
    # K streams (a 135M model's 35 answers are 19 GB each set)
    true_params = true_params.cpu()
    if batched or jobs > 1:  # one at a time measured on two orders here
        _, two = timed(lambda: retrain(rec.flat, rec.traj.theta0, rec.batches, orders[:2], rec.traj.lrs, rec.traj.hp,
                                       batched=False))
        one_at_a_time = two / min(2, len(orders))
    else:  # the truth was just retrained one order at a time in this process: that is the measurement
        one_at_a_time = retrain_wall / len(orders)
    if batched and jobs <= 1:
        batched_per_order = retrain_wall / len(orders)
    else:  # retrained one at a time (or fanned out): batched retraining measured on a few orders here
        few = orders[:min(4, len(orders))]
        _, wall = timed(lambda: retrain(rec.flat, rec.traj.theta0, rec.batches, few, rec.traj.lrs, rec.traj.hp,
                                        batched=True, chunk=chunk))
        batched_per_order = wall / len(few)
    true_loss = [rec.flat.eval_loss(p.to(rec.device), rec.val) for p in true_params]
    rand = [i for i, n in enumerate(names) if n.startswith("random-")]
    rand_true = sorted(true_loss[i] for i in rand)

    results: Dict[str, registry.Estimate] = {}
    est_loss, est_params, cost, peak = {}, {}, {}, {}
    proposals, selfchecks = {}, {}
    for name, options in estimators.items():
        log.info("estimator %s on %d orders", name, len(orders))
        if estimate_fn is not None and registry.get(name).per_order:
            out, wall = timed(lambda: estimate_fn(name, options, orders))
            out.name, out.wall_s = name, wall
        else:
            out = registry.estimate(name, rec, orders, options)
        results[name] = out
        cost[name], peak[name] = out.wall_s, out.peak_gib
        est_loss[name] = out.losses(rec)
        if out.params is not None:
            est_params[name] = out.params = out.params.cpu()
        if out.linearisation:
            selfchecks[name] = out.linearisation
        if out.proposal is not None:
            proposals[name] = _check_proposal(rec, out.proposal, rand_true)
        if on_estimate is not None:
            on_estimate(out)
    table = fidelity_table([true_loss[i] for i in rand], {k: [v[i] for i in rand] for k, v in est_loss.items()},
                           true_params, est_params, rec.traj.theta0.cpu(), cost, one_at_a_time, rows=rand)
    for row in table:  # what a query costs: all queries were answered together (K random + the named ones)
        name = row["estimator"]
        scored = results[name].extra.get("orders_scored", len(orders))
        row["s_per_query"] = row["wall_s"] / len(orders) if row["wall_s"] is not None else None
        row["peak_gib"] = peak.get(name)
        row["orders_scored"] = scored
        row["cost_vs_batched_retrain"] = (row["wall_s"] / (batched_per_order * scored)
                                          if row["wall_s"] is not None and batched_per_order > 0 else None)
        row["predicted_s"] = prediction["estimators"].get(name) if prediction else None
        for k in ("cv_spearman", "train_orders", "train_retrain_s", "fit_s"):  # a fitted estimator's (every row
            row[k] = results[name].extra.get(k)  # has every column: the W&B table and the page need one schema)
    sens = []
    for eps in sensitivity:
        log.info("the truth from initial weights nudged by %g", eps)
        sens.append(truth_sensitivity(rec.flat, rec.traj, rec.batches, rec.val, [orders[i] for i in rand],
                                      true_params, [true_loss[i] for i in rand], eps, batched=batched,
                                      chunk=chunk, compile=compile, rows=rand))
    per_order = [{"order_name": n, "order": o, "true_loss": true_loss[i], "true_ppl": ppl(true_loss[i]),
                  **{f"{k}_loss": est_loss[k][i] for k in est_loss},
                  **{f"{k}_ppl": ppl(est_loss[k][i]) for k in est_loss}} for i, (n, o) in enumerate(zip(names, orders))]
    speed = {"retrain_batched_orders_per_s": len(orders) / retrain_wall if batched else None,
             "retrain_one_at_a_time_orders_per_s": 1 / one_at_a_time, "K": len(rand), "T": rec.T,
             "one_retraining_s": one_at_a_time, "retrain_jobs": max(1, jobs), "retrain_wall_s": retrain_wall,
             "batched_retrain_s_per_order": batched_per_order,
             "predicted_retrain_batched_s": prediction["retrain_batched_s"] if prediction else None,
             "predicted_retrain_one_at_a_time_s": prediction["retrain_one_at_a_time_s"] if prediction else None,
             "device": str(rec.device),
             "gpus": gpus if gpus is not None else (1 if rec.device.type == "cuda" else 0)}
    memory = {n: r.extra["memory_plan"] for n, r in results.items() if r.extra.get("memory_plan")}
    fitted = {n: {"train_seed": r.extra["train_seed"], "train_losses": r.extra["train_losses"],
                  **({"batch_loss_theta0": r.extra["batch_loss_theta0"]} if r.extra.get("batch_loss_theta0") else {})}
              for n, r in results.items() if "train_losses" in r.extra}
    return {"orders": per_order, "fitted": fitted, "fidelity": table, "speed": speed, "sensitivity": sens,
            "cost_prediction": prediction, "memory_plans": memory,
            "reference_validation_loss": rec.reference_loss, "proposals": proposals, "linearisation": selfchecks,
            "estimators": {n: {"gives_params": registry.get(n).gives_params, "baseline": registry.get(n).baseline,
                               "relative": registry.get(n).relative_loss} for n in estimators},
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
