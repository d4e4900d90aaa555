"""Order-effect estimators against real retraining on a ~20M-parameter Llama trained from scratch
(mixed-domain text: Wikipedia leads and Shakespeare in blocks), as a validity map: fidelity
(Spearman, MAE ratio to "no change") and cost per order against the peak learning rate, with and
without warmup, and against T. Every cell: K held-out random orders + heuristic curricula, each
retrained for real (batched with vmap) and estimated by each estimator.

    python benchmarks/order_effects/make_tokens.py --out .bench/order_tokens.pt      # where the engine is
    python benchmarks/order_effects/validity_map.py --tokens .bench/order_tokens.pt --out result.json

Cells run in the order given by --cells and the JSON is rewritten after each, so a run cut short
keeps what it finished. Needs only torch and transformers (and scipy).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from setup_order import DTYPES, HP, parser, record_json, schedule  # first: sets sys.path
from taylorlab.models import build_llama
from taylorlab.order import FlatModel, Record, estimate, fidelity_table, record, retrain
from taylorlab.order.fidelity import truth_sensitivity
from taylorlab.order.queries import final_batch_losses, heuristic_orders, random_orders, timed


_PRETRAINED = {}


def pretrained(tokens, a, flat, device) -> torch.Tensor:
    """theta_0 for a continued-training cell: the seeded model trained with AdamW (fresh state, warmup
    10% + cosine at --pretrain-lr) for --pretrain-steps batches taken from the END of the training
    stream, which no cell's T batches reach; computed once per process."""
    key = (a.pretrain_steps, a.pretrain_lr)
    if key not in _PRETRAINED:
        B, L, N = a.batch, a.seq_len, a.pretrain_steps
        stream = tokens["train"].long()
        pre = stream[stream.numel() - N * B * L:].view(N, B, L).to(device)
        lrs, _ = schedule(a.pretrain_lr, 0.1, N)
        _PRETRAINED[key] = record(flat, pre, list(range(N)), lrs, HP, every=N).final
    return _PRETRAINED[key]


def cell(tokens, a, T: int, lr: float, warmup: float, estimators, device):
    B, L = a.batch, a.seq_len
    if (T + a.pretrain_steps) * B * L > tokens["train"].numel():
        raise ValueError(f"T = {T} plus {a.pretrain_steps} pretraining batches need more than the "
                         f"{tokens['train'].numel()} training tokens")
    train = tokens["train"].long()[: T * B * L].view(T, B, L).to(device)
    val = tokens["validation"].long()[: a.val_batches * B * L].view(a.val_batches, B, L).to(device)
    model = build_llama(tokens["vocab"], hidden_size=a.hidden, intermediate_size=a.hidden * 8 // 3 // 64 * 64,
                        num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                        num_key_value_heads=a.hidden // 64, max_position_embeddings=L, seed=0).to(device=device, dtype=DTYPES[a.dtype])
    flat = FlatModel(model)
    if a.pretrain_steps:  # continued training: theta_0 is a model already trained on other batches
        flat.load(pretrained(tokens, a, flat, device))
    lrs, w = schedule(lr, warmup, T)
    hp = HP
    traj, rec_s = timed(lambda: record(flat, train, list(range(T)), lrs, hp, every=a.every))
    ref_loss = flat.eval_loss(traj.final, val)
    orders = random_orders(T, a.K, seed=1)
    names = [f"random-{k}" for k in range(a.K)]
    for n, o in heuristic_orders(final_batch_losses(flat, traj, train)).items():
        orders.append(o)
        names.append(n)
    true, retrain_s = timed(lambda: retrain(flat, traj.theta0, train, orders, lrs, hp, batched=True, chunk=a.retrain_chunk))
    _, one_s = timed(lambda: retrain(flat, traj.theta0, train, orders[:1], lrs, hp, batched=False))
    true_loss = [flat.eval_loss(p, val) for p in true]
    sensitivity = [truth_sensitivity(flat, traj, train, val, orders[: a.K], true[: a.K], true_loss[: a.K], eps,
                                     batched=True, chunk=a.retrain_chunk) for eps in a.perturb]
    first_loss = flat.eval_loss(traj.theta0, val)
    est_loss, est_params, cost, peak, lin, extra = {}, {}, {}, {}, {}, {}
    for name in estimators:
        opts = {}
        label = name
        if name in ("fut-carry-nocurv", "fut-carry-secant", "fut-carry-hvp2", "fut-carry-kfac", "fut-carry-kfacdata"):
            name, opts = "fut-carry", {"curvature": {"nocurv": "none", "secant": "secant", "hvp2": "hvp2",
                                                     "kfac": "kfac", "kfacdata": "kfac"}[label[10:]]}
            if label == "fut-carry-kfacdata":  # the empirical Fisher's factors (the batch's own labels)
                opts["kfac_labels"] = "data"
        if name == "fut-carry":
            opts["chunk"] = a.hvp2_chunk if label == "fut-carry-hvp2" else a.carry_chunk
        if name == "additive":
            opts = {"chunk": a.additive_chunk, "search_orders": 100_000, "search_seed": 2}
        try:
            out = estimate(name, Record(flat, traj, train, val, {"reference_validation_loss": ref_loss}), orders, opts)
        except Exception as exc:  # one estimator failing (e.g. out of memory) must not lose the cell
            extra.setdefault("errors", {})[label] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"  {label}: FAILED {exc}", flush=True)
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            continue
        cost[label], peak[label] = out.wall_s, out.peak_gib
        if out.linearisation:  # fut-carry's own check, to calibrate its warning against the truth
            lin[label] = out.linearisation
        est_loss[label] = out.losses(Record(flat, traj, train, val))
        if out.params is not None:
            est_params[label] = out.params
        if out.proposal is not None:
            best = retrain(flat, traj.theta0, train, [out.proposal["order"]], lrs, hp, batched=False)[0]
            rand = sorted(true_loss[: a.K])
            extra[label] = {"precompute_s": out.proposal["precompute_s"],
                            "score_100k_orders_s": out.proposal["search_score_s"],
                            "best_order_true_loss": flat.eval_loss(best, val),
                            "random_median_true_loss": rand[len(rand) // 2], "random_min_true_loss": rand[0]}
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        print(f"  {label}: {cost[label]:.1f} s", flush=True)
    rand_idx = list(range(a.K))
    table = fidelity_table([true_loss[i] for i in rand_idx], {k: [v[i] for i in rand_idx] for k, v in est_loss.items()},
                           true[rand_idx], {k: v[rand_idx] for k, v in est_params.items()}, traj.theta0, cost, one_s)
    for r in table:
        r["peak_gib"] = peak.get(r["estimator"])
        r["s_per_order"] = cost[r["estimator"]] / len(orders)
        r["linearisation_median_residual"] = lin.get(r["estimator"], {}).get("median_residual")
        r["linearisation_median_first_order"] = lin.get(r["estimator"], {}).get("median_first_order")
    heur = {n: {"true_loss": true_loss[i], **{k: v[i] for k, v in est_loss.items()}}
            for i, n in enumerate(names) if not n.startswith("random-")}
    spread = max(true_loss[: a.K]) - min(true_loss[: a.K])
    return {"T": T, "peak_lr": lr, "warmup_steps": w, "pretrain_steps": a.pretrain_steps,
            "pretrain_lr": a.pretrain_lr if a.pretrain_steps else None, "schedule": "warmup+cosine" if w else "constant",
            "K": a.K, "parameters": flat.dim, "initial_val_loss": first_loss, "reference_val_loss": ref_loss,
            "true_loss_spread_over_random_orders": spread, "record_s": rec_s,
            "retrain_batched_s": retrain_s, "retrain_batched_orders_per_s": len(orders) / retrain_s,
            "retrain_one_at_a_time_s": one_s, "retrain_one_at_a_time_orders_per_s": 1 / one_s,
            "fidelity": table, "heuristics": heur, "sensitivity_to_initial_weights": sensitivity, **extra}


def main():
    ap = parser(__doc__)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--val-batches", type=int, default=16)
    ap.add_argument("--K", type=int, default=32)
    ap.add_argument("--every", type=int, default=16, help="store the state every k steps; replay between")
    ap.add_argument("--retrain-chunk", type=int, default=32)
    ap.add_argument("--carry-chunk", type=int, default=16, help="orders expanded together by fut-carry on a GPU "
                    "(lower it for larger batches)")
    ap.add_argument("--hvp2-chunk", type=int, default=8, help="orders expanded together by fut-carry-hvp2 on a GPU")
    ap.add_argument("--additive-chunk", type=int, default=8, help="one-step effects computed together in additive")
    ap.add_argument("--cells", default="256:1e-3:0.1:none,fut-carry;64:1e-3:0:none,fut-carry,fut-carry-nocurv,additive,fut,fut2",
                    help="T:peak_lr:warmup_fraction:estimators;... run in this order")
    ap.add_argument("--perturb", type=lambda x: [float(e) for e in x.split(",") if e], default=[],
                    help="comma-separated relative perturbations of theta_0: retrain the K orders from each too "
                         "(how reproducible the true ranking is)")
    ap.add_argument("--pretrain-steps", type=int, default=0,
                    help="continued training: first train the model this many batches (from the end of the "
                         "training stream, disjoint from every cell's T batches) and start each cell from there, "
                         "with a fresh Adam state as a fine-tuning run or a record stage pointed at a checkpoint has")
    ap.add_argument("--pretrain-lr", type=float, default=1e-3, help="peak lr of that pretraining (warmup 10%% + cosine)")
    ap.add_argument("--budget-s", type=float, default=540, help="stop starting new cells after this many seconds")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float64", choices=list(DTYPES),
                    help="float64 as in the method notes: the adjoint through Adam's 1/sqrt(v) overflows in float32")
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    tokens = torch.load(a.tokens, weights_only=True)
    results = {"config": vars(a), "cells": []}
    t_start = time.time()
    for spec in a.cells.split(";"):
        if time.time() - t_start > a.budget_s:
            results.setdefault("skipped", []).append(spec)
            continue
        T, lr, warm, ests = spec.split(":")
        print(f"cell T={T} lr={lr} warmup={warm}", flush=True)
        try:
            res = cell(tokens, a, int(T), float(lr), float(warm), ests.split(","), device)
        except Exception as exc:
            results.setdefault("failed", []).append({"cell": spec, "error": f"{type(exc).__name__}: {exc}"[:500]})
            print(f"cell {spec} FAILED: {exc}", flush=True)
            continue
        results["cells"].append(res)
        print(json.dumps({r["estimator"]: round(r["spearman"], 3) if r["spearman"] == r["spearman"] else None
                          for r in res["fidelity"]}), flush=True)
        record_json(Path(a.out), results, command="python benchmarks/order_effects/validity_map.py " + " ".join(sys.argv[1:]))
    record_json(Path(a.out), results, command="python benchmarks/order_effects/validity_map.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
