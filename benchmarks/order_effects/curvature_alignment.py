"""How well each curvature predicts an order's gradient on the real model: SmolLM2-135M (dequantised
from its embedded GGUF) in continued training, trained over T steps. For K random orders retrained
step by step, at the steps in --steps, the order's state gamma_t differs from the reference state
theta_t by v; the estimators that carry an order (fut-carry, fut-ckpt) replace the exact gradient
g(theta_t + v) of the order's batch by g(theta_t) + C v. Per curvature C this reports the residual
||g(theta_t) + C v - g(theta_t + v)|| / ||g(theta_t + v) - g(theta_t)|| (1 is "no curvature"):

  hvp     the exact Hessian-vector product (fut-carry's default)
  ggn     the Gauss-Newton part of it alone (J^T H_logits J v): what any Fisher-type curvature,
          K-FAC included, approximates at best
  kfac    taylorlab.order.kfac: the Fisher's Kronecker factors per linear weight (labels sampled from
          the model: curvature=kfac's own); kfac_data the empirical Fisher's (the batch's labels)
  secant  fut-carry's secant diagonal from the batch's gradients at theta_{t-1} and theta_t

    python benchmarks/order_effects/curvature_alignment.py --gguf <SmolLM2 .gguf> \\
        --tokens .bench/smollm2_tokens.pt --out benchmarks/order_effects/curvature_alignment_cpu.json

Needs torch, transformers and gguf. On the CPU: minutes (one pass of 4 x 128 tokens takes seconds).
"""

from __future__ import annotations

import logging
import time

import torch
from torch.func import jvp, vjp

from setup_order import HP, parser, record_json, schedule  # first: sets sys.path
from taylorlab.models import load_gguf_model
from taylorlab.order import FlatModel, kfac
from taylorlab.order.estimators.fut import _secant
from taylorlab.order.functional import adam_step
from taylorlab.order.queries import random_orders


def ggn_vector(flat: FlatModel, theta: torch.Tensor, batch: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J^T H_z J v for the mean cross-entropy over the batch's predicted positions (z: the logits)."""
    def logits(y):
        return flat.predictions(flat.unflatten(y), batch)

    z, jz = jvp(logits, (theta,), (v,))
    p = torch.softmax(z, -1)
    hz = (p * jz - p * (p * jz).sum(-1, keepdim=True)) / z.shape[0]
    _, back = vjp(logits, theta)
    return back(hz.to(z.dtype))[0]


def main():
    ap = parser(__doc__)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--orders", type=int, default=2)
    ap.add_argument("--steps", default="3,6", help="steps at which the curvatures are compared")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(a.device)
    tokens = torch.load(a.tokens, weights_only=True)
    model, _ = load_gguf_model(a.gguf)
    flat = FlatModel(model.to(device=device, dtype=torch.float32))
    B, L, T = a.batch, a.seq_len, a.T
    train = tokens["train"].long()[: T * B * L].view(T, B, L).to(device)
    lrs, _ = schedule(a.lr, 0.1, T)
    t0 = time.time()
    steps = [int(s) for s in a.steps.split(",")]
    # the reference run's states at the compared steps and the ones before them (the secant's), kept
    # alone: a record of every state (weights and moments) would not fit the host beside the passes
    theta0 = flat.flat()
    kept, (theta, m, v) = {}, (theta0, torch.zeros_like(theta0), torch.zeros_like(theta0))
    for t in range(max(steps) + 1):
        if t in steps or t + 1 in steps:
            kept[t] = theta
        theta, m, v = adam_step(theta, m, v, flat.grad(theta, train[t]), t + 1, lrs[t], HP)
    covered = kfac.blocks(flat)
    mask = torch.zeros(flat.dim, dtype=torch.bool, device=device)
    for b in covered:
        mask[b.offset:b.offset + b.out * b.inp] = True
    rows = []
    for k, order in enumerate(random_orders(T, a.orders, 11)):
        theta, m, v = theta0, torch.zeros_like(theta0), torch.zeros_like(theta0)
        for t in range(max(steps) + 1):
            if t in steps:
                ref, batch = kept[t], train[order[t]]
                dv = theta - ref
                g_ref, g_true = flat.grad(ref, batch), flat.grad(theta, batch)
                change = g_true - g_ref
                prev = kept[t - 1]
                curv = {"hvp": jvp(lambda y: flat.grad(y, batch), (ref,), (dv,))[1],
                        "ggn": ggn_vector(flat, ref, batch, dv),
                        "kfac": kfac.apply(kfac.factors(flat, ref, batch, covered), covered, dv),
                        "kfac_data": kfac.apply(kfac.factors(flat, ref, batch, covered, "data"), covered, dv),
                        "secant": _secant(g_ref, flat.grad(prev, batch), ref - prev) * dv}
                row = {"order": k, "step": t, "rel_deviation": float(dv.norm() / (ref - theta0).norm())}
                for name, cv in curv.items():
                    row[f"{name}_residual"] = float((g_ref + cv - g_true).norm() / change.norm())
                    # on the K-FAC-covered linear weights alone, where the Fisher-type curvatures live
                    row[f"{name}_residual_linear"] = float((g_ref + cv - g_true)[mask].norm() / change[mask].norm())
                    row[f"{name}_cos_vs_hvp"] = float(torch.nn.functional.cosine_similarity(cv, curv["hvp"], dim=0))
                    row[f"{name}_norm_vs_hvp"] = float(cv.norm() / curv["hvp"].norm())
                rows.append(row)
                logging.info("order %d step %d: %s", k, t, {n: round(row[f"{n}_residual"], 3) for n in curv})
            theta, m, v = adam_step(theta, m, v, flat.grad(theta, train[order[t]]), t + 1, lrs[t], HP)
    names = ("hvp", "ggn", "kfac", "kfac_data", "secant")
    summary = {f"median_{n}_{what}": float(torch.tensor([r[f"{n}_{what}"] for r in rows]).median())
               for n in names for what in ("residual", "residual_linear", "cos_vs_hvp", "norm_vs_hvp")}
    record_json(__import__("pathlib").Path(a.out),
                {"config": vars(a), "model": {"name": "SmolLM2-135M-Instruct", "parameters": flat.dim,
                                              "kfac_covered": int(mask.sum()), "kfac_blocks": len(covered),
                                              "kfac_factor_numel": kfac.factor_numel(covered)},
                 "tokens_per_step": B * L, "rows": rows, "summary": summary, "wall_s": time.time() - t0})
    logging.info("summary: %s", summary)


if __name__ == "__main__":
    main()
