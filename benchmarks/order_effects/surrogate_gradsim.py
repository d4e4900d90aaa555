"""Do batch interactions follow gradient similarity? Offline, on what a smollm2_scale.py run paid for
(its R training orders and its held-out truths): to the shipped form (Legendre per batch with the
batch_loss prior, fitted by the estimator's own ``fit_surrogate``) one scalar feature is added,

    F(order) = sum_{s < t} w(s, t) K[l_s, l_t],

the similarity K of the batches trained at steps s and t, weighted by the schedule: ``ee`` (the product
of the two steps' learning-rate multipliers), ``ee_exp2`` / ``ee_exp8`` (times exp(-(t - s) / tau):
Adam's memory) or ``one``. K is the cosine of the batches' gradients at theta_0 (``raw``), of their
signs (``sign``: Adam's first steps), or of the gradients divided by the root mean square over all
batches (``pre``: Adam's preconditioned step), from CountSketches of 2^20 of the full gradients (the
embedded model on this machine's CPU, two passes over the T batches); ``rawdot`` / ``predot`` use dot
products instead of cosines. One coefficient per feature (not T^2 as in surrogate_pairs.py); its
scale against the additive block is chosen by 5-fold CV with the ridge strength.

    python benchmarks/order_effects/surrogate_gradsim.py \\
        --result benchmarks/order_effects/smollm2_scale64_3e-4_batchloss_r640_h200.json \\
        --gguf <SmolLM2 .gguf> --tokens .bench/smollm2_tokens.pt \\
        --out benchmarks/order_effects/surrogate_gradsim_r640_cpu.json

Needs torch, transformers, gguf and scipy; ~15 minutes on 2 cores (the gradients ~13).
"""

from __future__ import annotations

import logging
import time

import torch

from setup_order import record_json, schedule  # first: sets sys.path
from surrogate_refit import best_scaled_fit, offline_parser, run_data, shipped_columns
from taylorlab.order.estimators.surrogate import SurrogateOptions

SCALES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SKETCH = 1 << 20


def sketches(gguf: str, tokens: str, T: int, B: int, L: int) -> dict:
    """CountSketches [T, 2^20] of each batch's gradient at theta_0 (raw, sign, RMS-preconditioned)."""
    from taylorlab.models import load_gguf_model

    model, _ = load_gguf_model(gguf)
    model = model.float().eval()
    train = torch.load(tokens, weights_only=True)["train"].long()[: T * B * L].view(T, B, L)
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    g = torch.Generator().manual_seed(1)
    bucket = torch.randint(0, SKETCH, (n,), generator=g)
    sign = (torch.randint(0, 2, (n,), generator=g) * 2 - 1).float()

    def grad(ids):
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in params])

    def sk(v):
        return torch.zeros(SKETCH).index_add_(0, bucket, v * sign)

    v, raw, sgn = torch.zeros(n), [], []
    for l in range(T):
        gl = grad(train[l])
        v += gl * gl
        raw.append(sk(gl))
        sgn.append(sk(gl.sign()))
        logging.info("batch %d: first pass", l)
    rms = (v / T).sqrt() + 1e-8
    pre = []
    for l in range(T):
        pre.append(sk(grad(train[l]) / rms))
        logging.info("batch %d: preconditioned", l)
    return {"raw": torch.stack(raw), "sign": torch.stack(sgn), "pre": torch.stack(pre)}


def kernels(sk: dict) -> dict:
    def cos(S):
        S = S.double() / S.double().norm(dim=1, keepdim=True)
        return S @ S.T

    def dot(S):
        M = S.double() @ S.double().T
        return M / M.diag().mean()

    return {"raw": cos(sk["raw"]), "sign": cos(sk["sign"]), "pre": cos(sk["pre"]), "rawdot": dot(sk["raw"]),
            "predot": dot(sk["pre"])}


def pair_feature(orders, K: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """[R]: sum over steps s < t of W[s, t] K[batch at s, batch at t]."""
    idx = torch.as_tensor(orders, dtype=torch.long)
    T = idx.shape[1]
    Kp = K[idx[:, :, None], idx[:, None, :]]
    return (Kp * (W * torch.triu(torch.ones(T, T, dtype=torch.float64), 1))).sum((1, 2))


def main():
    from scipy.stats import spearmanr

    a = offline_parser(__doc__, "the embedded model (gradients and losses at theta_0)", "320,640").parse_args()
    if not a.gguf:
        raise SystemExit("error: --gguf is needed: the batches' gradients at theta_0 come from the embedded model")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cell, T, ref, train_all, y_all, held, y_held, phi, _ = run_data(a)
    y_held = torch.tensor(y_held, dtype=torch.float64) - cell["reference_loss"]
    t0 = time.time()
    K = kernels(sketches(a.gguf, a.tokens, T, a.batch, a.seq_len))
    sketch_s = time.time() - t0
    lrs, _ = schedule(cell["lr"], 0.1, T)
    eta = torch.tensor(lrs, dtype=torch.float64) / cell["lr"]
    t = torch.arange(T, dtype=torch.float64)
    ee = eta[:, None] * eta[None, :]
    gap = (t[None, :] - t[:, None]).clamp(min=0)
    weights = {"ee": ee, "ee_exp2": ee * torch.exp(-gap / 2), "ee_exp8": ee * torch.exp(-gap / 8),
               "one": torch.ones(T, T, dtype=torch.float64)}
    opts = SurrogateOptions()
    rows = []
    for R in [int(x) for x in a.sizes.split(",") if int(x) <= len(y_all)]:
        train, y = train_all[:R], y_all[:R]
        _, _, coef, cv, Xa, Ha = shipped_columns(train, y, held, ref, phi, opts)
        rows.append({"R": R, "form": "legendre+batch_loss", "cv_spearman": float(spearmanr(cv, y).statistic),
                     "held_out_spearman": float(spearmanr(Ha @ coef, y_held).statistic)})
        logging.info("%s", rows[-1])
        for kn, Km in K.items():
            for wn, W in weights.items():
                base = pair_feature([ref], Km, W)
                F, Fh = (pair_feature(train, Km, W) - base)[:, None], (pair_feature(held, Km, W) - base)[:, None]
                c, k, beta, _, pred = best_scaled_fit(Xa, F, y, opts, SCALES)
                rows.append({"R": R, "form": f"legendre+batch_loss+sim:{kn}:{wn}", "scale": c,
                             "cv_spearman": float(spearmanr(pred, y).statistic),
                             "held_out_spearman": float(spearmanr(torch.cat([Ha, c * k * Fh], 1) @ beta,
                                                                  y_held).statistic)})
                logging.info("%s", rows[-1])
    record_json(a.out, {"config": vars(a), "T": T, "lr": cell["lr"], "held_out_orders": len(held),
                        "sketch_s_cpu": round(sketch_s, 1), "fits": rows})


if __name__ == "__main__":
    main()
