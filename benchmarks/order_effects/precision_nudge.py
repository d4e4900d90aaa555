"""Is the truth's ranking of orders stable as steps grow, and in which arithmetic? On the CPU, with the
1.13M Llama in continued training (the validity map's CPU model), for each tokens-per-step and each
arithmetic: K random orders retrained for real, then retrained again from theta_0 nudged by
--perturb. It asks what the 16k-tokens-per-step SmolLM2 cell on the H200 (TF32) could not: does the
order effect shrink below what a 1e-6 nudge moves, and is it TF32 that makes the nudge move so much?

Arithmetics: ``float64``; ``float32``; ``tf32`` -- EMULATED here, not the GPU's: float32 throughout,
with the operands of every matrix product (forward and backward: aten mm / addmm / bmm / baddbmm)
rounded to nearest-even at TF32's 10 mantissa bits, products and sums in float32, as tensor cores
do. Attention runs eager so that its products are matrix products too. theta_0 (pretrained once, in
float64) is the same for every cell; each arithmetic records and retrains from it cast.

    python benchmarks/order_effects/make_tokens.py --out .bench/order_tokens.pt
    python benchmarks/order_effects/precision_nudge.py --tokens .bench/order_tokens.pt \\
        --out benchmarks/order_effects/precision_nudge_cpu.json --batches 4,16,64

Per cell: the spread of the true loss over the K orders, the nudged truth's Spearman against the
truth and its mean loss change over that spread, and each arithmetic's truth against float64's
(Spearman, mean loss difference over the spread). The JSON is rewritten after every cell.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from setup_order import DTYPES, HP, parser, record_json, schedule  # first: sets sys.path
from taylorlab.models import build_llama
from taylorlab.order import FlatModel, record, retrain
from taylorlab.order.fidelity import truth_sensitivity
from taylorlab.order.queries import random_orders

_PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
             torch.ops.aten.baddbmm.default}


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to nearest-even at 10 mantissa bits (TF32's), kept in float32."""
    bits = x.contiguous().view(torch.int32)
    bits = (bits + 0x0FFF + ((bits >> 13) & 1)) & -0x2000
    return bits.view(torch.float32).view(x.shape)


class EmulatedTF32(TorchDispatchMode):
    """Every float32 matrix product's operands rounded to TF32 (below autograd: the backward's too)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _PRODUCTS:
            args = tuple(tf32_round(a) if isinstance(a, torch.Tensor) and a.dtype == torch.float32 and a.dim() >= 2
                         else a for a in args)
        return func(*args, **(kwargs or {}))


def _e(x) -> str:
    return "n/a (no spread)" if x is None else f"{x:.2e}"


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def main():
    ap = parser(__doc__)
    ap.add_argument("--batches", default="4,16,64", help="sequences per step (x --seq-len tokens), comma-separated")
    ap.add_argument("--arithmetics", default="float64,float32,tf32")
    ap.add_argument("--lrs", default="3e-4", help="peak learning rates, comma-separated (--warmup, then cosine)")
    ap.add_argument("--T", type=int, default=16)
    ap.add_argument("--K", type=int, default=16, help="random orders retrained (and retrained nudged)")
    ap.add_argument("--perturb", type=float, default=1e-6, help="relative nudge of theta_0")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--val-batches", type=int, default=4, help="validation batches of 4 x --seq-len, whatever the step")
    ap.add_argument("--micro-batch", type=int, default=16, help="sequences per pass, as the GPU's 16k run")
    ap.add_argument("--pretrain-steps", type=int, default=256)
    ap.add_argument("--pretrain-lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=float, default=0.25, help="share of the T steps in linear warmup, then cosine")
    ap.add_argument("--gguf", help="theta_0 = this GGUF (the embedded SmolLM2-135M) as loaded, no pretraining; "
                    "--tokens then from make_tokens.py --gguf")
    a = ap.parse_args()
    torch.manual_seed(0)
    tokens = torch.load(a.tokens, weights_only=True)
    L, stream = a.seq_len, tokens["train"].long()
    if a.gguf:  # the real model as theta_0, as smollm2_scale.py on the GPU
        from taylorlab.models import load_gguf_model

        model = load_gguf_model(a.gguf)[0]
    else:
        model = build_llama(tokens["vocab"], hidden_size=a.hidden, intermediate_size=a.hidden * 8 // 3 // 64 * 64,
                            num_hidden_layers=a.layers, num_attention_heads=max(1, a.hidden // 64),
                            num_key_value_heads=max(1, a.hidden // 64), max_position_embeddings=L, seed=0)
    model.config._attn_implementation = "eager"  # its products are bmm, which the TF32 emulation rounds
    model = model.to(torch.float64)  # theta_0 made (and kept) in float64; cast exactly for float32
    flat = FlatModel(model, micro_batch=a.micro_batch)
    N = 0 if a.gguf else a.pretrain_steps
    t0 = time.time()
    if N:  # the validity map's own pretraining, at its 4-sequence batches whatever this cell's step
        from validity_map import pretrained

        pre = argparse.Namespace(batch=4, seq_len=L, pretrain_steps=N, pretrain_lr=a.pretrain_lr)
        theta0 = pretrained(tokens, pre, flat, torch.device("cpu")).clone()
    else:
        theta0 = flat.flat().clone()
    results = {"config": vars(a), "parameters": flat.dim, "pretrain_s": time.time() - t0,
               "tf32": "emulated on the CPU: operands of mm/addmm/bmm/baddbmm rounded to 10 mantissa bits", "cells": []}
    val = tokens["validation"].long()[: a.val_batches * 4 * L].view(a.val_batches, 4, L)
    orders = random_orders(a.T, a.K, seed=1)
    for lr in [float(x) for x in a.lrs.split(",")]:
        lrs, w = schedule(lr, a.warmup, a.T)
        for B in [int(x) for x in a.batches.split(",")]:
            if (a.T * B + N * 4) * L > stream.numel():
                raise SystemExit(f"error: {a.T} steps of {B} x {L} tokens and the pretraining need more than the "
                                 f"{stream.numel()} training tokens of {a.tokens}")
            train = stream[: a.T * B * L].view(a.T, B, L)
            cell = {"peak_lr": lr, "warmup_steps": w, "T": a.T, "sequences_per_step": B, "tokens_per_step": B * L,
                    "arithmetics": {}}
            truth = {}
            for arith in a.arithmetics.split(","):
                t1 = time.time()
                dtype = DTYPES["float64" if arith == "float64" else "float32"]
                flat_a = FlatModel(model.to(dtype), micro_batch=a.micro_batch)
                with EmulatedTF32() if arith == "tf32" else nullcontext():
                    flat_a.load(theta0.to(dtype))
                    traj = record(flat_a, train.clone(), list(range(a.T)), lrs, HP, every=4)
                    true = retrain(flat_a, traj.theta0, train, orders, lrs, HP, batched=False)
                    loss = [flat_a.eval_loss(p, val) for p in true]
                    sens = truth_sensitivity(flat_a, traj, train, val, orders, true, loss, a.perturb, batched=False)
                truth[arith] = loss
                spread = max(loss) - min(loss)
                row = {"true_loss": loss, "spread": spread, "sd": float(torch.tensor(loss).std()),
                       "nudge": sens, "wall_s": time.time() - t1}
                if arith != "float64" and "float64" in truth:
                    diff = [abs(x - y) for x, y in zip(loss, truth["float64"])]
                    row["vs_float64"] = {"spearman": spearman(loss, truth["float64"]),
                                         "mean_abs_loss_difference": sum(diff) / len(diff),
                                         "over_float64_spread": sum(diff) / len(diff) / (max(truth["float64"]) - min(truth["float64"]))}
                cell["arithmetics"][arith] = row
                print(f"lr {lr:g} B {B} ({B * L} tokens/step) {arith}: spread {spread:.2e} nats, nudge Spearman "
                      f"{sens['spearman_true_vs_perturbed']:.3f}, nudge MAE / spread {_e(sens['mae_over_spread'])}"
                      + (f", vs float64 Spearman {row['vs_float64']['spearman']:.3f}" if "vs_float64" in row else "")
                      + f" ({row['wall_s']:.0f} s)", flush=True)
                del traj, true
            results["cells"].append(cell)
            record_json(Path(a.out), results)


if __name__ == "__main__":
    main()
