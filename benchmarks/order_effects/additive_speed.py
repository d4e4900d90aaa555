"""The `additive` estimator's precompute at T = 256 on the project's small model (conf/model/small.yaml,
33.7M parameters with the benchmark's 8192-token vocabulary), trained from scratch: does it fit in
one 10-minute GPU command, and does scoring 100,000 orders afterwards take less than one real
retraining? Then its ranking against real retraining of K random orders and its assignment optimum
retrained for real.

    python benchmarks/order_effects/additive_speed.py --tokens .bench/order_tokens.pt --out additive_speed_h200.json

Phases are timed separately (record, one real retraining, precompute, scoring, retraining for the
fidelity check) and the JSON is rewritten after each, so a command cut short keeps what it measured.
Needs only torch, transformers, pyyaml and scipy.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from setup_order import DTYPES, HP, conf_llama, parser, record_json, schedule  # first: sets sys.path
from taylorlab.order import FlatModel, record, retrain
from taylorlab.order.estimators.additive import additive_scores, best_order, score_orders
from taylorlab.order.queries import random_orders, timed


def main():
    ap = parser(__doc__)
    ap.add_argument("--model", default="small", help="a conf/model/*.yaml built from scratch")
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--val-batches", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (warmup + cosine to 10%%)")
    ap.add_argument("--warmup", type=float, default=0.1, help="warmup steps as a fraction of T")
    ap.add_argument("--every", type=int, default=16, help="store the state every k steps; replay between")
    ap.add_argument("--chunk", type=int, default=32, help="one-step effects computed together")
    ap.add_argument("--orders", type=int, default=100_000, help="random orders scored after the precompute")
    ap.add_argument("--K", type=int, default=16, help="random orders retrained for real to check the ranking (0: skip)")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (default: plain float32)")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    t_cmd = time.time()
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    command = "python benchmarks/order_effects/additive_speed.py " + " ".join(sys.argv[1:])
    tokens = torch.load(a.tokens, weights_only=True)
    B, L, T = a.batch, a.seq_len, a.T
    train = tokens["train"].long()[: T * B * L].view(T, B, L).to(device)
    val = tokens["validation"].long()[: a.val_batches * B * L].view(a.val_batches, B, L).to(device)
    flat = FlatModel(conf_llama(a.model, tokens["vocab"], L, device, DTYPES[a.dtype]))
    lrs, w = schedule(a.lr, a.warmup, T)
    hp = HP
    res = {"config": vars(a), "model": a.model, "parameters": flat.dim, "T": T, "batch_tokens": B * L,
           "warmup_steps": w}

    def save():
        res["command_wall_s"] = time.time() - t_cmd
        record_json(Path(a.out), res, command=command)
        print({k: v for k, v in res.items() if not isinstance(v, (dict, list))}, flush=True)

    traj, res["record_s"] = timed(lambda: record(flat, train, list(range(T)), lrs, hp, every=a.every))
    ref_loss = flat.eval_loss(traj.final, val)
    res["reference_val_loss"] = ref_loss
    orders = random_orders(T, max(a.K, 1), seed=1)
    _, res["one_retraining_s"] = timed(lambda: retrain(flat, traj.theta0, train, orders[:1], lrs, hp, batched=False))
    save()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    S, res["precompute_s"] = timed(lambda: additive_scores(flat, traj, train, val, chunk=a.chunk, progress=True))
    res["precompute_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    res["precompute_gradient_passes"] = T * (T - 1)
    res["precompute_in_retrainings"] = res["precompute_s"] / res["one_retraining_s"]
    res["S_finite"] = bool(torch.isfinite(S).all())
    save()
    gen = torch.Generator().manual_seed(2)
    many = torch.argsort(torch.rand(a.orders, T, generator=gen), dim=1).to(device)
    score_orders(S, many[:10], ref_loss)  # warm-up
    _, res["score_orders_s"] = timed(lambda: score_orders(S, many, ref_loss))
    res["scored_orders"] = a.orders
    res["scoring_faster_than_one_retraining"] = res["score_orders_s"] < res["one_retraining_s"]
    save()
    if a.K:
        best = best_order(S)
        queries = orders[: a.K] + [best]
        true, res["retrain_batched_s"] = timed(lambda: retrain(flat, traj.theta0, train, queries, lrs, hp, batched=True,
                                                               chunk=min(a.K + 1, 17)))
        true_loss = [flat.eval_loss(p, val) for p in true]
        est = [float(x) for x in score_orders(S, queries, ref_loss)]
        rand = sorted(true_loss[: a.K])
        from scipy.stats import spearmanr

        res.update({"K": a.K, "spearman_vs_retraining": float(spearmanr(est[: a.K], true_loss[: a.K])[0]),
                    "true_loss_spread_over_random_orders": rand[-1] - rand[0],
                    "random_median_true_loss": rand[len(rand) // 2], "random_min_true_loss": rand[0],
                    "best_order_predicted_loss": est[-1], "best_order_true_loss": true_loss[-1],
                    "mae_additive": sum(abs(e - t) for e, t in zip(est[: a.K], true_loss)) / a.K,
                    "mae_no_change": sum(abs(ref_loss - t) for t in true_loss[: a.K]) / a.K})
        save()


if __name__ == "__main__":
    main()
