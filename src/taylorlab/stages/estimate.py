"""estimate: the final validation loss of K held-out random orders plus heuristic curricula, by
each configured estimator and by real retraining (the ground truth), and the fidelity table."""

from __future__ import annotations

import random
import time

import torch
from safetensors.torch import load_file

from taylorlab.io import atomic_write_json, read_json
from taylorlab.models import load_model_artifact
from taylorlab.order.functional import ppl
from taylorlab.order import AdamHP, FlatModel, Trajectory, estimate, fidelity_table, retrain, validate_orders


def queries(c, T: int, batch_losses):
    rng = random.Random(c.seed)
    named = {}
    for k in range(c.num_orders):
        o = list(range(T))
        rng.shuffle(o)
        named[f"random-{k}"] = o
    by_loss = sorted(range(T), key=lambda b: batch_losses[b])
    heur = {"reverse": list(range(T - 1, -1, -1)), "easy_to_hard": by_loss, "hard_to_easy": by_loss[::-1]}
    for h in c.heuristics:
        named[h] = heur[h]
    for i, o in enumerate(c.orders):
        named[f"explicit-{i}"] = list(o)
    validate_orders(list(named.values()), T)
    return named


def run(ctx):
    c = ctx.cfg
    meta = read_json(ctx.artifact("record", "meta"))
    tensors = load_file(str(ctx.artifact("record", "trajectory")))
    model, _ = load_model_artifact(ctx.artifact("record", "model"))
    model = model.to(tensors["thetas"].dtype)
    flat = FlatModel(model)
    hp = AdamHP(betas=tuple(meta["betas"]), eps=meta["eps"], weight_decay=meta["weight_decay"], grad_clip=meta["grad_clip"])
    traj = Trajectory(tensors["thetas"], tensors["ms"], tensors["vs"], meta["order"], meta["lrs"], hp)
    batches, val = tensors["batches"], tensors["validation"]
    # reference loss of each batch at the end of the reference run: easy / hard for the curricula
    batch_losses = [float(flat.loss(traj.thetas[-1], b).detach()) for b in batches]
    named = queries(c, traj.T, batch_losses)
    names, orders = list(named), list(named.values())

    t0 = time.time()
    true_params = retrain(flat, traj.thetas[0], batches, orders, traj.lrs, hp, batched=c.retrain_batched)
    retrain_wall = time.time() - t0
    t0 = time.time()
    retrain(flat, traj.thetas[0], batches, orders[:2], traj.lrs, hp, batched=False)
    one_at_a_time = (time.time() - t0) / 2
    true_loss = [flat.eval_loss(p, val) for p in true_params]

    est_params, est_loss, cost = {}, {}, {}
    for name in c.estimators:
        out = estimate(name, flat, traj, batches, orders)
        est_params[name], cost[name] = out["params"], out["wall_s"]
        est_loss[name] = [flat.eval_loss(p, val) for p in out["params"]]
    rand = [i for i, n in enumerate(names) if n.startswith("random-")]
    table = fidelity_table([true_loss[i] for i in rand], {k: [v[i] for i in rand] for k, v in est_loss.items()},
                           true_params[rand], {k: v[rand] for k, v in est_params.items()}, traj.thetas[0],
                           cost, one_at_a_time)
    for row in table:
        ctx.tracker.summary({f"orders/{row['estimator']}/{k}": v for k, v in row.items() if k != "estimator"})
    ctx.tracker.table("orders/fidelity", list(table[0].keys()), [list(r.values()) for r in table])
    per_order = [{"order_name": n, "order": o, "true_loss": true_loss[i], "true_ppl": ppl(true_loss[i]),
                  **{f"{k}_loss": est_loss[k][i] for k in est_loss}} for i, (n, o) in enumerate(zip(names, orders))]
    speed = {"retrain_batched_orders_per_s": len(orders) / retrain_wall if c.retrain_batched else None,
             "retrain_one_at_a_time_orders_per_s": 1 / one_at_a_time, "K": len(rand), "T": traj.T}
    atomic_write_json(ctx.dir / "estimates.json", {"orders": per_order, "fidelity": table, "speed": speed,
                                                   "reference_validation_loss": meta["reference_validation_loss"]})
    ctx.tracker.artifact(ctx.dir.name, "order-estimates", {"estimates.json": ctx.dir / "estimates.json"},
                         uses=[p.name for p in ctx.parents.values()], metadata=speed)
    ctx.log.info("fidelity over %d random orders: %s", len(rand),
                 "; ".join(f"{r['estimator']} spearman {r['spearman']:.3f} rel.err {r['rel_param_error']:.3f}" for r in table))
    return {"estimates": "estimates.json"}
