"""Order effects at real-model scale: the embedded SmolLM2-135M (dequantised from its GGUF) as theta_0
for continued training, T batches of --batch x --seq-len tokens of new text, warmup 10% + cosine,
float32 on the GPU. Per cell (T, peak lr): the record (its storage planned), K held-out random orders
plus the heuristic curricula retrained for real (batched, chunks planned from free memory), each
estimator, the truth from theta_0 nudged by --perturb (is the ranking itself stable?), and the cost
advisor's prediction beside every measurement. ``cost_vs_batched_retrain``: an estimator's wall time
over what batched retraining (measured in the same cell) costs for every order it scored -- for the
surrogate that includes --search orders, so it is the cost of scoring 10,000 orders, fit included.

    python benchmarks/order_effects/make_tokens.py --out .bench/smollm2_tokens.pt --gguf <gguf>
    python benchmarks/order_effects/smollm2_scale.py --gguf <gguf> --tokens .bench/smollm2_tokens.pt \\
        --out benchmarks/order_effects/smollm2_scale_h200.json --cells "16:1e-5:none,fut-carry,surrogate"

Cells run in the order given and the JSON is rewritten after each, so a run cut short keeps what it
finished. Needs torch, transformers and gguf (and scipy).
"""

from __future__ import annotations

import logging
import time

import torch

from setup_order import HP, parser, record_json, schedule  # first: sets sys.path
from taylorlab.models import load_gguf_model
from taylorlab.order import FlatModel, Record, record
from taylorlab.order.estimators.surrogate import PRIORS
from taylorlab.order.memory import plan_checkpoints
from taylorlab.order.study import run_study, study_queries


def main():
    ap = parser(__doc__)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--cells", required=True, help="T:lr:estimators[:perturb];... e.g. 16:1e-5:none,fut-carry,"
                    "surrogate (perturb: this cell's nudges, comma-separated, empty for none; else --perturb)")
    ap.add_argument("--orders", type=int, default=32, help="K held-out random orders")
    ap.add_argument("--train-orders", type=int, default=200, help="the surrogate's R retrained training orders")
    ap.add_argument("--search", type=int, default=10000, help="orders the surrogate scores inside its timed call")
    ap.add_argument("--prior", default="none", choices=list(PRIORS),
                    help="the surrogate's prior: additive = the adjoint score as one more feature (the hybrid); "
                    "batch_loss = a position profile shared by the batches, scaled by their loss at theta_0")
    ap.add_argument("--perturb", default="1e-6", help="relative nudges of theta_0 for the truth's own stability")
    ap.add_argument("--val-batches", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--heuristics", default="reverse,easy_to_hard,hard_to_easy", help="named curricula queried too")
    ap.add_argument("--ckpt-every", type=int, default=4, help="fut-ckpt's steps between gradient tables")
    ap.add_argument("--micro-batch", type=int, default=0, help="sequences per pass, the batch's gradient "
                    "accumulated over them (0: the whole batch): how a step of >= 16k tokens fits the GPU")
    ap.add_argument("--tf32", action="store_true", help="TF32 matrix products (truth and estimators alike): "
                    "what makes the >= 16k tokens-per-step cells affordable; off, every product is full float32")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = a.tf32
    tokens = torch.load(a.tokens, weights_only=True)
    model, _ = load_gguf_model(a.gguf)
    model = model.to(device=device, dtype=torch.float32)
    flat = FlatModel(model, micro_batch=a.micro_batch)
    theta_base = flat.flat().clone()
    B, L = a.batch, a.seq_len
    results = {"config": vars(a), "model": {"name": "SmolLM2-135M-Instruct", "parameters": flat.dim},
               "tokens_per_step": B * L, "matmul_precision": "tf32" if a.tf32 else "float32", "cells": []}
    out = __import__("pathlib").Path(a.out)
    for spec in a.cells.split(";"):
        T_s, lr_s, names, *rest = spec.split(":")
        perturb = rest[0] if rest else a.perturb
        T, lr = int(T_s), float(lr_s)
        t0 = time.time()
        flat.load(theta_base)
        for split, n in (("train", T), ("validation", a.val_batches)):
            if tokens[split].numel() < n * B * L:
                raise SystemExit(f"error: cell {spec!r} needs {n} x {B} x {L} {split} tokens, {a.tokens} holds "
                                 f"{tokens[split].numel()}; make it with make_tokens.py --max-train-tokens, or "
                                 "lower --batch / --val-batches")
        train = tokens["train"].long()[: T * B * L].view(T, B, L).to(device)
        val = tokens["validation"].long()[: a.val_batches * B * L].view(a.val_batches, B, L).to(device)
        lrs, w = schedule(lr, 0.1, T)
        plan = plan_checkpoints(T, 3 * flat.dim * 4, device, out.parent, 0)
        traj = record(flat, train, list(range(T)), lrs, HP, every=plan["checkpoint_every"])
        rec = Record(flat, traj, train, val)
        queries = study_queries(rec, a.orders, 1, [h for h in a.heuristics.split(",") if h])
        per_name = {"surrogate": {"train_orders": a.train_orders, "search_orders": a.search, "prior": a.prior},
                    "fut-ckpt": {"every": a.ckpt_every}}
        options = {n: per_name.get(n) for n in names.split(",")}
        res = run_study(rec, queries, options, batched=True,
                        sensitivity=[float(x) for x in perturb.split(",") if x])
        res.pop("params"), res.pop("names")
        res["orders"] = [{k: v for k, v in o.items() if k != "order"} for o in res["orders"]]
        results["cells"].append({"T": T, "lr": lr, "warmup_steps": w, "record_storage": plan,
                                 "reference_loss": rec.reference_loss, "wall_s": time.time() - t0, **res})
        for r in res["fidelity"]:
            logging.info("T=%d lr=%g %s: spearman %.3f mae-ratio %s cost_vs_batched_retrain %s predicted %s s, "
                         "measured %.1f s", T, lr, r["estimator"], r["spearman"], r["mae_ratio_to_none"],
                         r["cost_vs_batched_retrain"], r["predicted_s"], r["wall_s"] or 0)
        record_json(out, results)
        del rec, traj, train
        torch.cuda.empty_cache() if device.type == "cuda" else None


if __name__ == "__main__":
    main()
