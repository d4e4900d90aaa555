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

from setup_order import record_json, schedule  # first: sets sys.path
from surrogate_refit import best_scaled_fit, offline_parser, run_data, shipped_columns
from taylorlab.order.estimators.surrogate import SurrogateOptions, positions

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

    a = offline_parser(__doc__, "the embedded model, for the batches' losses at theta_0 when the result lacks them",
                       "320,640").parse_args()
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
        degree, share, coef, cv, Xa, Ha = shipped_columns(train, y, held, ref, phi, opts)
        rows.append({"R": R, "form": "legendre+batch_loss", "degree": degree, "share": share,
                     "cv_spearman": float(spearmanr(cv.numpy(), y.numpy()).statistic),
                     "held_out_spearman": float(spearmanr((Ha @ coef).numpy(), y_held.numpy()).statistic)})
        logging.info("%s", rows[-1])
        for name, W in weights.items():
            for sym in (False, True):
                P, Ph = pair_block(train, W, ref, sym), pair_block(held, W, ref, sym)
                c, k, beta, lam, pred = best_scaled_fit(Xa, P, y, opts, SCALES)
                rows.append({"R": R, "form": f"legendre+batch_loss+pairs:{name}{'-sym' if sym else ''}",
                             "degree": degree, "share": share, "pair_scale": c, "ridge": lam,
                             "cv_spearman": float(spearmanr(pred.numpy(), y.numpy()).statistic),
                             "held_out_spearman": float(spearmanr((torch.cat([Ha, c * k * Ph], 1) @ beta).numpy(),
                                                                  y_held.numpy()).statistic)})
                logging.info("%s", rows[-1])
    record_json(a.out, {"config": vars(a), "T": T, "lr": cell["lr"], "held_out_orders": len(held), "fits": rows})


if __name__ == "__main__":
    main()
