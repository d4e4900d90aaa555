"""The memorization grid's ground truth retrained from scratch against retrained from the shared
prefix (``retrain(..., reference=traj)``: an order with batch i moved to position j starts from the
recorded run's state after the min(i, j) steps it shares with the reference order). Checks that both
give the same weights (bitwise one at a time) and reports the time of each and the steps saved.

    python benchmarks/order_effects/prefix_speed.py --tokens .bench/order_tokens.pt --out prefix_speed_cpu.json

Needs only torch, transformers and pyyaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from setup_order import DTYPES, HP, conf_llama, parser, record_json, schedule  # first: sets sys.path
from taylorlab.order import FlatModel, record, retrain, shared_prefix
from taylorlab.order.curriculum import memorization_cells
from taylorlab.order.queries import timed
from taylorlab.order.memorization import moved_order


def main():
    ap = parser(__doc__)
    ap.add_argument("--model", default="tiny", help="conf/model/<name>.yaml")
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--num-batches", type=int, default=4)
    ap.add_argument("--num-positions", type=int, default=4)
    ap.add_argument("--every", type=int, default=8, help="the record's stored states (the rest replayed)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    a = ap.parse_args()
    device = torch.device(a.device)
    tokens = torch.load(a.tokens, weights_only=True)
    T, B, L = a.T, a.batch, a.seq_len
    batches = tokens["train"].long()[: T * B * L].view(T, B, L).to(device)
    flat = FlatModel(conf_llama(a.model, tokens["vocab"], L, device, DTYPES[a.dtype]))
    lrs, _ = schedule(1e-3, 0.1, T)
    traj = record(flat, batches, list(range(T)), lrs, HP, every=a.every)
    cells = memorization_cells(T, None, a.num_batches, a.num_positions)
    orders = [moved_order(T, i, j) for i, j in cells]
    res = {"model": a.model, "parameters": flat.dim, "T": T, "cells": cells, "device": str(device), "dtype": a.dtype}
    for batched in (False, True):
        key = "batched" if batched else "one_at_a_time"
        full, full_s = timed(lambda: retrain(flat, traj.theta0, batches, orders, lrs, HP, batched=batched))
        pref, pref_s = timed(lambda: retrain(flat, traj.theta0, batches, orders, lrs, HP, batched=batched,
                                             reference=traj))
        disp = torch.linalg.vector_norm(full - traj.theta0, dim=1)
        res[key] = {"from_scratch_s": full_s, "from_shared_prefix_s": pref_s, "speedup": full_s / pref_s,
                    "bitwise_equal": bool(torch.equal(full, pref)),
                    "max_rel_difference": float((torch.linalg.vector_norm(full - pref, dim=1) / disp).max())}
        print(key, res[key], flush=True)
    steps = [T - shared_prefix(o, traj.order) for o in orders]
    res["steps_from_scratch"], res["steps_from_shared_prefix"] = T * len(orders), sum(steps)
    print({k: res[k] for k in ("steps_from_scratch", "steps_from_shared_prefix")})
    record_json(Path(a.out), res, command="python benchmarks/order_effects/prefix_speed.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
