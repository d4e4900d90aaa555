"""Which fitted form of the order -> final-loss map needs the fewest retrained orders? A CPU study on
a small from-scratch Llama where the shipped surrogate (each batch's effect a Legendre polynomial of
its position) ranks held-out orders poorly: every order in the file is retrained for real once, and
every form is then fitted to the first R of the training orders and judged on the same held-out ones.

Forms (all anchored at the recorded run; ridge strengths and the form's own size by 5-fold CV):
  legendre   S[t, l] = sum_j a_lj P_j(u_t), degree 1..3 (what ``surrogate`` ships)
  onehot     S[t, l] free: T^2 coefficients (the additive model without a smoothness assumption)
  lowrank    S = U V^T, rank 1..4, with the time basis U learned too (alternating ridge fits,
             U started from the Legendre basis)
  mallows    kernel ridge over whole orders, k = exp(-g * discordant pairs / all pairs) (not additive)
  legendre+mallows  the Mallows kernel fitted to the Legendre form's residuals
  additive   the adjoint surrogate's first-order scores alone (no fit; ``additive``)
  legendre+additive  the Legendre form with the adjoint score as one more feature (what
             ``surrogate prior=additive`` ships: the hybrid)

    python benchmarks/order_effects/make_tokens.py --out .bench/order_tokens.pt
    python benchmarks/order_effects/surrogate_forms.py --tokens .bench/order_tokens.pt \
        --out benchmarks/order_effects/surrogate_forms_cpu.json --cells 64:3e-4,64:1e-3

``--forms`` picks some of them (default: all).
"""

from __future__ import annotations

import logging
import time

import torch

from setup_order import HP, parser, record_json, schedule  # first: sets sys.path
from taylorlab.models import build_llama
from taylorlab.order import FlatModel
from taylorlab.order.estimators.additive import additive_scores, score_orders
from taylorlab.order.estimators.surrogate import features, position_basis, positions, ridge_fit
from taylorlab.order.queries import random_orders
from taylorlab.order.trajectory import record, retrain

STRENGTHS = [10.0 ** k for k in range(-6, 3)]


def cv_folds(R: int, folds: int = 5, seed: int = 0):
    perm = torch.randperm(R, generator=torch.Generator().manual_seed(seed))
    return [perm[i::folds] for i in range(folds)]


def fit_legendre(train, y, test, ref, S_add=None):
    """The shipped form; with ``S_add`` the adjoint score joins as one column (scaled to unit spread on
    the training orders), as ``surrogate prior=additive`` fits it (the hybrid)."""
    extra = None
    if S_add is not None:
        a_tr, a_te = score_orders(S_add, train, 0.0), score_orders(S_add, test, 0.0)
        scale = float(a_tr.std()) or 1.0
        extra = ((a_tr / scale)[:, None], (a_te / scale)[:, None])
    best = None
    for deg in (1, 2, 3):
        B = position_basis(len(ref), deg)
        X, Xt = features(train, B, ref), features(test, B, ref)
        if extra is not None:
            X, Xt = torch.cat([X, extra[0]], dim=1), torch.cat([Xt, extra[1]], dim=1)
        coef, lam, pred = ridge_fit(X, y, STRENGTHS, 5)
        err = float(((pred - y) ** 2).mean())
        if best is None or err < best[0]:
            info = {"degree": deg, "ridge": lam}
            if extra is not None:
                info["prior_weight"] = float(coef[-1] / scale)
            best = (err, Xt @ coef, pred, info)
    return best[1:]


def fit_onehot(train, y, test, ref):
    T = len(ref)
    B = torch.eye(T, dtype=torch.float64)  # one column per position: S[t, l] free
    coef, lam, pred = ridge_fit(features(train, B, ref), y, STRENGTHS, 5)
    return features(test, B, ref) @ coef, pred, {"ridge": lam}


def lowrank_solve(pos, y, ref_pos, r, lam, iters=8):
    """U [T, r], V [T, r] with f(order) = sum_l sum_k (U[pos_l, k] - U[ref_pos_l, k]) V[l, k]."""
    T = pos.shape[1]
    U = position_basis(T, r).clone()
    V = torch.zeros(T, r, dtype=torch.float64)

    def ridge(X, yy):
        scale = float((X * X).sum() / max(X.shape[1], 1)) or 1.0
        A = X.T @ X + lam * scale * torch.eye(X.shape[1], dtype=X.dtype)
        return torch.linalg.solve(A, X.T @ yy)

    for _ in range(iters):
        XV = (U[pos] - U[ref_pos][None]).reshape(len(y), -1)  # [R, T*r], V's features
        V = ridge(XV, y).reshape(T, r)
        # U's features: for position t and k, V[batch at t, k] - V[batch the reference trains at t, k]
        inv = torch.argsort(pos, dim=1)  # inv[r, t]: the batch order r trains at step t
        ref_inv = torch.argsort(ref_pos)
        XU = (V[inv] - V[ref_inv][None]).reshape(len(y), -1)
        U = ridge(XU, y).reshape(T, r)
    return U, V


def lowrank_predict(U, V, pos, ref_pos):
    return ((U[pos] - U[ref_pos][None]) * V[None]).sum((1, 2))


def fit_lowrank(train, y, test, ref):
    T = len(ref)
    pos, tpos = positions(train), positions(test)
    ref_pos = positions([ref])[0]
    best = None
    for r in (1, 2, 3, 4):
        for lam in STRENGTHS[2:]:
            pred = torch.empty(len(y), dtype=torch.float64)
            for held in cv_folds(len(y)):
                keep = torch.ones(len(y), dtype=torch.bool)
                keep[held] = False
                U, V = lowrank_solve(pos[keep], y[keep], ref_pos, r, lam)
                pred[held] = lowrank_predict(U, V, pos[held], ref_pos)
            err = float(((pred - y) ** 2).mean())
            if best is None or err < best[0]:
                best = (err, r, lam, pred)
    _, r, lam, pred = best
    U, V = lowrank_solve(pos, y, ref_pos, r, lam)
    return lowrank_predict(U, V, tpos, ref_pos), pred, {"rank": r, "ridge": lam, "T": T}


def discordance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[Ra, Rb]: the share of batch pairs the two orders put in opposite order (Kendall distance)."""
    T = a.shape[1]
    sa = torch.sign(a[:, :, None] - a[:, None, :]).reshape(len(a), -1)  # from positions
    sb = torch.sign(b[:, :, None] - b[:, None, :]).reshape(len(b), -1)
    agree = sa @ sb.T  # sum over ordered pairs of sign products
    return (T * (T - 1) - agree) / (2 * T * (T - 1))


def fit_mallows(train, y, test, ref, base=None, base_test=None):
    pos, tpos = positions(train).double(), positions(test).double()
    D, Dt = discordance(pos, pos), discordance(tpos, pos)
    resid = y - (base if base is not None else 0.0)
    mu = float(resid.mean())
    best = None
    for g in (1.0, 3.0, 10.0, 30.0, 100.0):
        K = torch.exp(-g * D)
        for lam in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
            pred = torch.empty(len(y), dtype=torch.float64)
            for held in cv_folds(len(y)):
                keep = torch.ones(len(y), dtype=torch.bool)
                keep[held] = False
                Kk = K[keep][:, keep]
                alpha = torch.linalg.solve(Kk + lam * torch.eye(len(Kk), dtype=K.dtype), resid[keep] - mu)
                pred[held] = K[held][:, keep] @ alpha + mu
            err = float(((pred - resid) ** 2).mean())
            if best is None or err < best[0]:
                best = (err, g, lam, pred)
    _, g, lam, pred = best
    K = torch.exp(-g * D)
    alpha = torch.linalg.solve(K + lam * torch.eye(len(K), dtype=K.dtype), resid - mu)
    out = torch.exp(-g * Dt) @ alpha + mu
    if base is not None:
        out, pred = out + base_test, pred + base
    return out, pred, {"gamma": g, "ridge": lam}


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def main():
    ap = parser(__doc__)
    ap.add_argument("--cells", default="64:3e-4,64:1e-3", help="T:peak lr, comma-separated")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=0, help="tokens above this id are folded (0: the file's)")
    ap.add_argument("--train-orders", type=int, default=400)
    ap.add_argument("--sizes", default="50,100,200,400", help="R values fitted (the first R training orders)")
    ap.add_argument("--held-out", type=int, default=40)
    ap.add_argument("--val-batches", type=int, default=4)
    ap.add_argument("--forms", default="legendre,onehot,lowrank,mallows,legendre+mallows,additive,legendre+additive",
                    help="which fitted forms (comma-separated)")
    ap.set_defaults(seq_len=32)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_default_dtype(torch.float64)
    tokens = torch.load(a.tokens, weights_only=True)
    vocab = a.vocab or int(tokens["vocab"])
    B, L = a.batch, a.seq_len
    results = {"config": vars(a), "cells": []}
    for spec in a.cells.split(","):
        T_s, lr_s = spec.split(":")
        T, lr = int(T_s), float(lr_s)
        model = build_llama(vocab, hidden_size=a.hidden, intermediate_size=a.hidden * 3, num_hidden_layers=a.layers,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=L, seed=0).double()
        flat = FlatModel(model)
        train_tok = tokens["train"].long()[: T * B * L].view(T, B, L) % vocab
        val = tokens["validation"].long()[: a.val_batches * B * L].view(a.val_batches, B, L) % vocab
        lrs, w = schedule(lr, 0.1, T)
        ref = list(range(T))
        traj = record(flat, train_tok, ref, lrs, HP, every=8)
        ref_loss = flat.eval_loss(traj.final, val)
        orders = random_orders(T, a.train_orders, 10_007) + random_orders(T, a.held_out, 1)
        t0 = time.time()
        losses = []
        for lo in range(0, len(orders), 16):
            params = retrain(flat, traj.theta0, train_tok, orders[lo:lo + 16], lrs, HP, batched=True, chunk=16,
                             reference=traj)
            losses += [flat.eval_loss(p, val) for p in params]
            logging.info("T=%d lr=%g: %d / %d orders retrained", T, lr, len(losses), len(orders))
        retrain_s = time.time() - t0
        y_all = torch.tensor(losses) - ref_loss
        test, y_test = orders[a.train_orders:], y_all[a.train_orders:]
        cell = {"T": T, "lr": lr, "warmup_steps": w, "reference_loss": ref_loss, "retrain_s": retrain_s,
                "retrain_s_per_order": retrain_s / len(orders), "true_spread": float(y_test.std()),
                "held_out": a.held_out, "fits": []}
        forms = a.forms.split(",")
        S_add = None
        if "additive" in forms or "legendre+additive" in forms:
            t1 = time.time()
            S_add = additive_scores(flat, traj, train_tok, val).double()
            cell["additive_precompute_s"] = time.time() - t1
            cell["additive_precompute_retrain_equivalents"] = cell["additive_precompute_s"] / cell["retrain_s_per_order"]
        for R in [int(s) for s in a.sizes.split(",") if s and int(s) <= a.train_orders]:
            tr, y = orders[:R], y_all[:R]
            row = {"R": R}
            fits = {"legendre": fit_legendre, "onehot": fit_onehot, "lowrank": fit_lowrank, "mallows": fit_mallows,
                    "legendre+additive": lambda *args: fit_legendre(*args, S_add=S_add)}
            for name in [f for f in forms if f in fits]:
                t1 = time.time()
                pred, cv, info = fits[name](tr, y, test, ref)
                row[name] = {"spearman": spearman(pred, y_test), "cv_spearman": spearman(cv, y),
                             "mae_ratio_to_none": float((pred - y_test).abs().mean() / y_test.abs().mean()),
                             "fit_s": time.time() - t1, **info}
                if name == "legendre":
                    base_pred, base_cv = pred, cv
            if "legendre+mallows" in forms and "legendre" in row:
                pred, cv, info = fit_mallows(tr, y, test, ref, base=base_cv, base_test=base_pred)
                row["legendre+mallows"] = {"spearman": spearman(pred, y_test), "cv_spearman": spearman(cv, y), **info}
            if "additive" in forms:
                pred, cv = score_orders(S_add, test, 0.0), score_orders(S_add, tr, 0.0)
                row["additive"] = {"spearman": spearman(pred, y_test), "cv_spearman": spearman(cv, y),
                                   "note": "no fit: the first-order scores themselves"}
            cell["fits"].append(row)
            logging.info("T=%d lr=%g R=%d: %s", T, lr, R,
                         ", ".join(f"{k} {v['spearman']:.3f} (cv {v['cv_spearman']:.3f})" for k, v in row.items() if k != "R"))
        results["cells"].append(cell)
        record_json(__import__("pathlib").Path(a.out), results)


if __name__ == "__main__":
    main()
