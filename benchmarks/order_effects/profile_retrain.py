"""Where a batched-retraining step spends its time: K copies of the small model (conf/model/small.yaml)
trained together for a few steps under torch.profiler, per attention implementation; prints the top
CUDA kernels and writes a JSON with seconds per step and the top ops.

    python benchmarks/order_effects/profile_retrain.py --tokens .bench/order_tokens.pt --out profile_retrain_h200.json

Needs only torch, transformers and pyyaml.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch

from setup_order import HP, conf_llama, parser, record_json  # first: sets sys.path
from taylorlab.order import FlatModel, retrain


def main():
    ap = parser(__doc__)
    ap.add_argument("--model", default="small")
    ap.add_argument("--K", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--attn", default="eager,sdpa")
    ap.add_argument("--tf32", action="store_true")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    tokens = torch.load(a.tokens, weights_only=True)
    dev = torch.device("cuda")
    B, L, T, K = a.batch, a.seq_len, a.steps, a.K
    model = conf_llama(a.model, tokens["vocab"], L, dev)
    flat = FlatModel(model)
    batches = tokens["train"].long()[: T * B * L].view(T, B, L).to(dev)
    rng = random.Random(0)
    orders = [rng.sample(range(T), T) for _ in range(K)]
    theta0 = flat.flat()
    res = {"config": vars(a), "variants": []}
    ref = None
    for attn in a.attn.split(","):
        model.set_attn_implementation(attn)
        try:
            retrain(flat, theta0, batches, [o[:2] for o in orders], [1e-3] * 2, HP)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = retrain(flat, theta0, batches, orders, [1e-3] * T, HP)
            torch.cuda.synchronize()
            s = (time.perf_counter() - t0) / T
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                retrain(flat, theta0, batches, [o[:2] for o in orders], [1e-3] * 2, HP)
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20)
            print(f"== {attn}: {s * 1e3:.1f} ms per step of {K} copies\n{table}", flush=True)
            top = [{"name": e.key[:120], "cuda_ms": e.device_time_total / 1e3, "calls": e.count}
                   for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:20]]
            diff = None if ref is None else float((out - ref).norm() / (ref - theta0).norm())
            ref = out if ref is None else ref
            res["variants"].append({"attn": attn, "s_per_step": s, "orders_per_s_at_T64": K / (s * 64),
                                    "rel_difference_to_first": diff, "top_cuda_ops": top})
        except Exception as e:  # noqa: BLE001 — a variant that does not run is a result too
            print(f"== {attn}: {type(e).__name__}: {e}"[:500], flush=True)
            res["variants"].append({"attn": attn, "error": f"{type(e).__name__}: {e}"[:500]})
        record_json(Path(a.out), res, command="python benchmarks/order_effects/profile_retrain.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
