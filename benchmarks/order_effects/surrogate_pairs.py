"""Does the order -> loss map of a GPU run need interactions between batches? Offline, on what a
smollm2_scale.py run paid for (its R training orders and its held-out truths): the shipped form
(Legendre per batch with the batch_loss prior, fitted by the estimator's own ``fit_surrogate``) plus
one pairwise term per ordered pair of batches,

    f(order) += sum_{i before j} A[i, j] w(pos i, pos j),

with the pair weight w from the schedule -- ``eta*eta`` (the product of the two steps' learning-rate
multipliers: the second-order term of the loss in the two updates), ``prec`` (1: only which comes
first), ``exp4`` (exp(-|pos i - pos j| / 4): neighbours, Adam's momentum window) -- and its symmetric
variant ``*-sym`` (A[i, j] = A[j, i]: the order within the pair does not matter). A (T^2 coefficients)
joins the ridge fit as one more block, its scale against the additive block chosen by 5-fold CV with
the strength. Judged on the run's held-out random orders.

    python benchmarks/order_effects/surrogate_pairs.py \\
        --result benchmarks/order_effects/smollm2_scale64_3e-4_batchloss_r640_h200.json \\
        --gguf <SmolLM2 .gguf> --tokens .bench/smollm2_tokens.pt \\
        --out benchmarks/order_effects/surrogate_pairs_r640_cpu.json

Needs torch, transformers, gguf and scipy.
"""

from __future__ import annotations

import logging

import torch

from setup_order import parser, record_json, schedule  # first: sets sys.path
from surrogate_refit import run_data
from taylorlab.order.estimators.surrogate import (SurrogateOptions, features, fit_surrogate, position_basis, positions,
                                                  ridge_fit)

SCALES = (0.03, 0.1, 0.3, 1.0)


def pair_block(orders, W: torch.Tensor, ref, symmetric: bool) -> torch.Tensor:
    """[R, pairs]: W[pos i, pos j] for each pair (i before j: directed, i < j by index: symmetric),
    minus the reference order's (the anchor keeps the reference at its own loss)."""
    T = W.shape[0]

    def raw(pos):
        pi, pj = pos[:, :, None].expand(-1, T, T), pos[:, None, :].expand(-1, T, T)
        if symmetric:
            iu = torch.triu_indices(T, T, 1)
            return W[pi, pj][:, iu[0], iu[1]]
        return torch.where(pi < pj, W[pi, pj], torch.zeros((), dtype=W.dtype)).reshape(pos.shape[0], -1)

    return raw(positions(orders)) - raw(positions([ref]))


def main():
    from scipy.stats import spearmanr

    ap = parser(__doc__)
    ap.add_argument("--result", required=True, help="a smollm2_scale.py result whose cell ran the surrogate")
    ap.add_argument("--gguf", help="the embedded model, for the batches' losses at theta_0 when the result lacks them")
    ap.add_argument("--sizes", default="320,640", help="R values refitted (the first R training orders)")
    ap.add_argument("--cell", type=int, default=0)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cell, T, ref, train_all, y_all, held, y_held, phi, _ = run_data(a)
    y_held = torch.tensor(y_held, dtype=torch.float64) - cell["reference_loss"]
    lrs, _ = schedule(cell["lr"], 0.1, T)  # smollm2_scale's: warmup 10% + cosine to 10%
    eta = torch.tensor(lrs, dtype=torch.float64) / cell["lr"]
    t = torch.arange(T, dtype=torch.float64)
    weights = {"eta*eta": eta[:, None] * eta[None, :], "prec": torch.ones(T, T, dtype=torch.float64),
               "exp4": torch.exp(-(t[:, None] - t[None, :]).abs() / 4)}
    opts = SurrogateOptions()
    rows = []
    for R in [int(x) for x in a.sizes.split(",") if int(x) <= len(y_all)]:
        train, y = train_all[:R], y_all[:R]
        degree, share, coef, lam, cv = fit_surrogate(train, y, ref, opts, phi=phi)

        def additive(orders):  # the shipped form's columns at its chosen degree and shared weight
            X0 = features(orders, position_basis(T, degree), ref)
            return torch.cat([X0, share * torch.einsum("rlj,l->rj", X0.view(len(orders), T, degree), phi)], 1)

        Xa, Ha = additive(train), additive(held)
        rows.append({"R": R, "form": "legendre+batch_loss", "degree": degree, "share": share,
                     "cv_spearman": float(spearmanr(cv.numpy(), y.numpy()).statistic),
                     "held_out_spearman": float(spearmanr((Ha @ coef).numpy(), y_held.numpy()).statistic)})
        logging.info("%s", rows[-1])
        rms = lambda M: float((M * M).mean().sqrt()) or 1.0  # noqa: E731
        for name, W in weights.items():
            for sym in (False, True):
                P, Ph = pair_block(train, W, ref, sym), pair_block(held, W, ref, sym)
                k = rms(Xa) / rms(P)
                best = None
                for c in SCALES:
                    beta, lam, pred = ridge_fit(torch.cat([Xa, c * k * P], 1), y, opts.ridge, opts.folds, opts.seed)
                    err = float(((pred - y) ** 2).mean())
                    if best is None or err < best[0]:
                        best = (err, c, beta, lam, pred)
                _, c, beta, lam, pred = best
                rows.append({"R": R, "form": f"legendre+batch_loss+pairs:{name}{'-sym' if sym else ''}",
                             "degree": degree, "share": share, "pair_scale": c, "ridge": lam,
                             "cv_spearman": float(spearmanr(pred.numpy(), y.numpy()).statistic),
                             "held_out_spearman": float(spearmanr((torch.cat([Ha, c * k * Ph], 1) @ beta).numpy(),
                                                                  y_held.numpy()).statistic)})
                logging.info("%s", rows[-1])
    record_json(a.out, {"config": vars(a), "T": T, "lr": cell["lr"], "held_out_orders": len(held), "fits": rows})


if __name__ == "__main__":
    main()
