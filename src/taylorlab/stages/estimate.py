"""estimate: the final validation loss of K held-out random orders plus heuristic curricula, by
each configured estimator and by real retraining (the ground truth), and the fidelity table.

With ``sensitivity`` (relative nudges of the initial weights) the random orders are retrained from
each nudged start too: how well the truth ranks against itself bounds what any estimator can reach.

``additive`` also scores ``search_orders`` random orders (timed: its O(T) query) and proposes the
order that minimises its surrogate (an exact linear assignment); that order is retrained for real
and compared with the random orders, so a claimed curriculum gain is checked, not assumed.
"""

from __future__ import annotations

import torch
from taylorlab.io import atomic_save_tensors, atomic_write_json
from taylorlab.models import resolve_device
from taylorlab.order import estimate, fidelity_table, retrain, validate_orders
from taylorlab.order.fidelity import truth_sensitivity
from taylorlab.order.estimators import (additive_search, estimated_losses, final_batch_losses, heuristic_orders,
                                        random_orders, timed)
from taylorlab.order.functional import ppl
from taylorlab.stages.common import check_linearisation, load_record, record_paths


def queries(c, T: int, batch_losses):
    named = {f"random-{k}": o for k, o in enumerate(random_orders(T, c.num_orders, c.seed))}
    heur = heuristic_orders(batch_losses)
    for h in c.heuristics:
        named[h] = heur[h]
    for i, o in enumerate(c.orders):
        named[f"explicit-{i}"] = list(o)
    validate_orders(list(named.values()), T, names=[n if not n.startswith("explicit-") else
                                                    f"estimate.orders[{n.split('-')[1]}]" for n in named])
    return named


def retrain_job(paths: dict, orders, batched: bool, device: str, chunk=None, compile: bool = False) -> torch.Tensor:
    """One fanned-out retraining job (a submitit array task): loads the record itself, returns [k, d]."""
    flat, traj, batches, _, _ = load_record(paths, resolve_device(device))
    return retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=batched, chunk=chunk,
                   compile=compile, reference=traj).cpu()


def _retrain_fanned_out(ctx, c, paths, orders, batched, device) -> torch.Tensor:
    """The orders split over ``retrain_jobs`` independent jobs: a submitit job array on Slurm
    (``retrain_launcher=slurm``) or parallel local processes (``local``)."""
    import submitit

    n = min(c.retrain_jobs, len(orders))
    parts = [orders[i * len(orders) // n:(i + 1) * len(orders) // n] for i in range(n)]
    ex = submitit.AutoExecutor(folder=str(ctx.dir / "retrain_jobs" / "%j"), cluster=c.retrain_launcher)
    ex.update_parameters(timeout_min=int(c.retrain_job_timeout_min), cpus_per_task=1, mem_gb=float(c.retrain_job_mem_gb),
                         gpus_per_node=1 if torch.device(device).type == "cuda" else 0, name=f"{ctx.node}-retrain")
    jobs = ex.map_array(retrain_job, [paths] * n, parts, [batched] * n, [str(device)] * n, [c.retrain_chunk] * n,
                        [c.retrain_compile] * n)
    ctx.log.info("retraining %d orders in %d %s jobs: %s", len(orders), n, c.retrain_launcher,
                 ", ".join(j.job_id for j in jobs))
    return torch.cat([j.result() for j in jobs]).to(device)


def run(ctx):
    c = ctx.cfg
    device = resolve_device(c.device)
    cuda = device.type == "cuda"
    paths = record_paths(ctx)
    flat, traj, batches, val, meta = load_record(paths, device)
    hp = traj.hp
    ref_loss = meta["reference_validation_loss"]
    # reference loss of each batch at the end of the reference run: easy / hard for the curricula
    batch_losses = final_batch_losses(flat, traj, batches)
    named = queries(c, traj.T, batch_losses)
    names, orders = list(named), list(named.values())

    batched = cuda if c.retrain_batched is None else bool(c.retrain_batched)
    if c.retrain_compile and not batched:
        ctx.log.warning("estimate.retrain_compile compiles batched retraining only (a GPU, or "
                        "estimate.retrain_batched=true); retraining one order at a time here, not compiled.")
    if c.retrain_jobs > 1:
        true_params, retrain_wall = timed(lambda: _retrain_fanned_out(ctx, c, paths, orders, batched, device))
    else:
        true_params, retrain_wall = timed(lambda: retrain(flat, traj.theta0, batches, orders, traj.lrs, hp,
                                                          batched=batched, chunk=c.retrain_chunk,
                                                          compile=c.retrain_compile, reference=traj))
    _, two = timed(lambda: retrain(flat, traj.theta0, batches, orders[:2], traj.lrs, hp, batched=False))
    one_at_a_time = two / 2
    true_loss = [flat.eval_loss(p, val) for p in true_params]

    est_params, est_loss, cost, peak, extra = {}, {}, {}, {}, {}
    for name in c.estimators:
        ctx.log.info("estimator %s on %d orders", name, len(orders))
        out = estimate(name, flat, traj, batches, orders, val=val, reference_loss=ref_loss, curvature=c.curvature,
                       projection_dim=c.projection_dim)
        cost[name] = out["wall_s"]
        peak[name] = out["peak_gib"]
        est_loss[name] = estimated_losses(flat, out, val)
        if out["params"] is not None:
            est_params[name] = out["params"]
        if name == "additive":
            extra["additive"] = _search(ctx, c, flat, traj, batches, val, out, true_loss, names, ref_loss)
        check_linearisation(ctx, name, out["linearisation"])
        if out["linearisation"]:
            extra.setdefault("linearisation", {})[name] = out["linearisation"]
    rand = [i for i, n in enumerate(names) if n.startswith("random-")]
    table = fidelity_table([true_loss[i] for i in rand], {k: [v[i] for i in rand] for k, v in est_loss.items()},
                           true_params[rand], {k: v[rand] for k, v in est_params.items()}, traj.theta0,
                           cost, one_at_a_time)
    for row in table:  # what a query costs: all queries were answered together (K random + the named ones)
        row["s_per_query"] = row["wall_s"] / len(orders) if row["wall_s"] is not None else None
        row["peak_gib"] = peak.get(row["estimator"])
        ctx.tracker.summary({f"orders/{row['estimator']}/{k}": v for k, v in row.items()
                             if k != "estimator" and v is not None})
    sensitivity = []
    for eps in c.sensitivity:
        ctx.log.info("the truth from initial weights nudged by %g", eps)
        sensitivity.append(truth_sensitivity(flat, traj, batches, val, [orders[i] for i in rand], true_params[rand],
                                             [true_loss[i] for i in rand], eps, batched=batched, chunk=c.retrain_chunk,
                                             compile=c.retrain_compile))
        ctx.tracker.summary({f"orders/sensitivity/{eps:g}/{k}": v for k, v in sensitivity[-1].items()
                             if k != "relative_perturbation" and v is not None})
        rho = sensitivity[-1]["spearman_true_vs_perturbed"]
        if rho == rho and rho < 0.9:
            ctx.log.warning("the truth itself re-ranks the orders under a %g nudge of the initial weights (Spearman "
                            "%.2f): no estimator built from one run can rank them at these settings; retrain.", eps, rho)
    ctx.tracker.table("orders/fidelity", list(table[0].keys()), [list(r.values()) for r in table])
    per_order = [{"order_name": n, "order": o, "true_loss": true_loss[i], "true_ppl": ppl(true_loss[i]),
                  **{f"{k}_loss": est_loss[k][i] for k in est_loss},
                  **{f"{k}_ppl": ppl(est_loss[k][i]) for k in est_loss}} for i, (n, o) in enumerate(zip(names, orders))]
    speed = {"retrain_batched_orders_per_s": len(orders) / retrain_wall if batched else None,
             "retrain_one_at_a_time_orders_per_s": 1 / one_at_a_time, "K": len(rand), "T": traj.T,
             "one_retraining_s": one_at_a_time, "retrain_jobs": max(1, c.retrain_jobs),
             "retrain_wall_s": retrain_wall}
    atomic_write_json(ctx.dir / "estimates.json", {"orders": per_order, "fidelity": table, "speed": speed,
                                                   "sensitivity": sensitivity, "reference_validation_loss": ref_loss,
                                                   **extra})
    files = {"estimates.json": ctx.dir / "estimates.json"}
    if c.save_params:
        files["params.safetensors"] = _save_params(ctx.dir / "params.safetensors", flat, names, true_params, est_params)
    ctx.tracker.artifact(ctx.dir.name, "order-estimates", files,
                         uses=[p.name for p in ctx.parents.values()], metadata=speed)
    ctx.log.info("fidelity over %d random orders: %s", len(rand),
                 "; ".join(f"{r['estimator']} spearman {r['spearman']:.3f}" for r in table))
    return {"estimates": "estimates.json", **({"params": "params.safetensors"} if c.save_params else {})}


def _save_params(path, flat, names, true_params, est_params):
    """Every query's final weights as flat [K, d] tensors — ``true`` (retrained) and one per estimator
    that produces parameters — with the query names and the flat layout in the metadata, written
    atomically. ``FlatModel(model).load(tensor[k])`` puts order k's weights into a model."""
    import json

    meta = {"queries": json.dumps(names), "layout": json.dumps([[n, list(s)] for n, s in zip(flat.names, flat.shapes)])}
    atomic_save_tensors(path, {"true": true_params, **est_params}, metadata=meta)
    return path


def _search(ctx, c, flat, traj, batches, val, out, true_loss, names, ref_loss) -> dict:
    """The additive surrogate's search, its optimum retrained, against the random orders' true losses."""
    search = additive_search(flat, traj, batches, val, out["S"], ref_loss, n_orders=c.search_orders, seed=c.seed + 1)
    rand_true = sorted(true_loss[i] for i, n in enumerate(names) if n.startswith("random-"))
    median = rand_true[len(rand_true) // 2]
    result = {"precompute_s": out["precompute_s"], **search,
              "random_true_loss_median": median, "random_true_loss_min": rand_true[0],
              "beats_median_random": search["best_order_true_loss"] < median,
              "beats_best_random": search["best_order_true_loss"] < rand_true[0]}
    ctx.tracker.summary({f"orders/additive_search/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
    ctx.log.info("additive: %d orders scored in %.3f s; its optimum retrained: loss %.4f (random median %.4f, best %.4f)",
                 c.search_orders, search["search_score_s"], search["best_order_true_loss"], median, rand_true[0])
    return result
