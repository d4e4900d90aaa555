"""Refit the surrogate offline on what a GPU run paid for: a smollm2_scale.py result keeps the
surrogate's R training orders (their seed) and their true losses, and its held-out orders' truths.
This script refits the estimator's own forms (taylorlab.order.estimators.surrogate.fit_surrogate) on
the first R of them for several R, plain and with the batch_loss prior, and scores the held-out
orders: a learning curve per form from one GPU run. The batches' losses at theta_0 come from the
result when it stored them, else from the embedded model on this machine (T forward passes).

    python benchmarks/order_effects/surrogate_refit.py \\
        --result benchmarks/order_effects/smollm2_scale64_3e-4_batchloss_r640_h200.json \\
        --gguf <SmolLM2 .gguf> --tokens .bench/smollm2_tokens.pt \\
        --out benchmarks/order_effects/surrogate_refit_r640_cpu.json

Needs torch, transformers, gguf and scipy.
"""

from __future__ import annotations

import json
import logging

import torch

from setup_order import parser, record_json  # first: sets sys.path
from taylorlab.order.estimators.surrogate import (SurrogateOptions, batch_losses_at, features, fit_surrogate,
                                                  position_basis, ridge_fit, standardised, surrogate_S)
from taylorlab.order.estimators.additive import score_orders
from taylorlab.order.queries import random_orders


def theta0_batch_losses(gguf: str, tokens: str, T: int, B: int, L: int) -> torch.Tensor:
    from taylorlab.models import load_gguf_model
    from taylorlab.order import FlatModel

    model, _ = load_gguf_model(gguf)
    flat = FlatModel(model.float())
    train = torch.load(tokens, weights_only=True)["train"].long()[: T * B * L].view(T, B, L)
    return batch_losses_at(flat, flat.flat(), train)


def run_data(a):
    """What a GPU run paid for, from ``a.result`` (cell ``a.cell``): (cell, T, the reference order,
    the training orders and their losses minus the reference loss, the held-out random orders, their
    true losses, phi: the batches' standardised losses at theta_0 and where they came from)."""
    cell = json.loads(open(a.result).read())["cells"][a.cell]
    T, ref_loss, fitted = cell["T"], cell["reference_loss"], cell["fitted"]["surrogate"]
    y_all = torch.tensor(fitted["train_losses"], dtype=torch.float64) - ref_loss
    train_all = random_orders(T, len(y_all), fitted["train_seed"])
    held_rows = [o for o in cell["orders"] if str(o["order_name"]).startswith("random-")]
    held = random_orders(T, len(held_rows), 1)  # the study's held-out queries (study_queries, seed 1)
    y_held = [o["true_loss"] for o in held_rows]
    if fitted.get("batch_loss_theta0"):
        losses, source = torch.tensor(fitted["batch_loss_theta0"], dtype=torch.float64), "the result"
    else:
        if not a.gguf:
            raise SystemExit("error: the result does not store the batches' losses at theta_0; pass --gguf")
        losses, source = theta0_batch_losses(a.gguf, a.tokens, T, a.batch, a.seq_len), "this machine (CPU)"
    return cell, T, list(range(T)), train_all, y_all, held, y_held, standardised(losses), source


def offline_parser(doc: str, gguf_help: str, default_sizes: str):
    """The arguments of every offline refit of a smollm2_scale.py run."""
    ap = parser(doc)
    ap.add_argument("--result", required=True, help="a smollm2_scale.py result whose cell ran the surrogate")
    ap.add_argument("--gguf", help=gguf_help)
    ap.add_argument("--sizes", default=default_sizes, help="R values refitted (the first R training orders)")
    ap.add_argument("--cell", type=int, default=0)
    return ap


def shipped_columns(train, y: torch.Tensor, held, ref, phi: torch.Tensor, opts: SurrogateOptions):
    """The shipped form fitted to ``train`` (Legendre per batch + the batch_loss profile, by the
    estimator's own ``fit_surrogate``): (degree, share, coefficients, cv predictions, its columns on
    the training orders, on the held-out orders)."""
    T = len(ref)
    degree, share, coef, _, cv = fit_surrogate(train, y, ref, opts, phi=phi)

    def additive(orders):
        X0 = features(orders, position_basis(T, degree), ref)
        return torch.cat([X0, share * torch.einsum("rlj,l->rj", X0.view(len(orders), T, degree), phi)], 1)

    return degree, share, coef, cv, additive(train), additive(held)


def best_scaled_fit(Xa: torch.Tensor, extra: torch.Tensor, y: torch.Tensor, opts: SurrogateOptions, scales):
    """Ridge on [Xa, c k extra] (k: the two blocks' RMS ratio) for every c in ``scales``; the fit with
    the lowest cross-validated squared error: (c, k, coefficients, strength, cv predictions)."""
    rms = lambda M: float((M * M).mean().sqrt()) or 1.0  # noqa: E731
    k = rms(Xa) / rms(extra)
    best = None
    for c in scales:
        beta, lam, pred = ridge_fit(torch.cat([Xa, c * k * extra], 1), y, opts.ridge, opts.folds, opts.seed)
        err = float(((pred - y) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, c, beta, lam, pred)
    _, c, beta, lam, pred = best
    return c, k, beta, lam, pred


def main():
    from scipy.stats import spearmanr

    a = offline_parser(__doc__, "the embedded model, for the batches' losses at theta_0 when the result lacks them",
                       "100,200,320,480,640").parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cell, T, ref, train_all, y_all, held, y_held, phi, source = run_data(a)
    ref_loss = cell["reference_loss"]
    opts = SurrogateOptions()
    rows = []
    for R in [int(x) for x in a.sizes.split(",") if int(x) <= len(y_all)]:
        train, y = train_all[:R], y_all[:R]
        for form, p in (("plain", None), ("batch_loss", phi)):
            degree, share, coef, lam, cv = fit_surrogate(train, y, ref, opts, phi=p)
            S = surrogate_S(coef, degree, ref, phi=p, share=share)
            pred = score_orders(S, held, ref_loss)
            row = {"R": R, "form": form, "degree": degree, "share": share if p is not None else None, "ridge": lam,
                   "cv_spearman": float(spearmanr(cv.numpy(), y.numpy()).statistic),
                   "held_out_spearman": float(spearmanr(pred.numpy(), y_held).statistic)}
            rows.append(row)
            logging.info("R=%d %s: held-out %.3f (cv %.3f, degree %d, share %s)", R, form, row["held_out_spearman"],
                         row["cv_spearman"], degree, row["share"])
    record_json(a.out, {"config": vars(a), "T": T, "lr": cell["lr"], "held_out_orders": len(held),
                        "batch_losses_from": source, "refits": rows})


if __name__ == "__main__":
    main()
