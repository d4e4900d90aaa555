"""``surrogate`` — the estimator for scoring many orders: a datamodel fitted to R orders retrained
for real. ``f(order) ~ f(reference) + sum_t S[t, l_t]`` with S[t, l] = sum_j a_{l,j} (P_j(u_t) -
P_j(u_l)): each batch's effect a smooth (Legendre, ``degree``) function of the position u it is
trained at, measured from the reference run (anchored: the reference order gets the recorded run's
own loss, exactly). The a_{l,j} are fitted by ridge regression to the final validation losses of
``train_orders`` random orders retrained exactly (batched on a GPU, in chunks that fit its memory),
the ridge strength chosen by ``folds``-fold cross-validation. With ``prior="additive"`` the adjoint
surrogate's score of the order (``additive``: T^2 gradients and T double-backward passes) joins as one
more feature, so the fit starts from the first-order theory and corrects it (the hybrid). With
``prior="batch_loss"`` the batches share what they say of themselves: each batch's loss at theta_0 (T
forward passes), standardised to phi_l, enters as a_{l,j} = a'_{l,j} + w phi_l c_j -- a position profile
c_j common to all batches, scaled by how hard the batch is at the start, which few training orders
pin down, plus each batch's own correction under the ridge; w (the shared part's weight against the
own parts, i.e. its relative prior scale) is chosen by cross-validation with the degree and strength.

Cost: R retrainings plus a fit of R x (T degree) — independent of how many orders are scored
afterwards (O(T) each: ``search_orders`` random orders are scored inside the timed call, and the
surrogate's exact optimum, a linear assignment of batches to steps, is proposed). Gives losses,
not parameters. Its own check: the cross-validated Spearman of its training orders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from taylorlab.errors import ConfigError
from taylorlab.order.estimators.additive import additive_scores, best_order, score_orders, search_score_s
from taylorlab.order.queries import random_orders, timed
from taylorlab.order.recorded import Record
from taylorlab.order.registry import Estimate, Estimator, register
from taylorlab.order.trajectory import plan_retrain_chunk, retrain

PRIORS = ("none", "additive", "batch_loss")


@dataclass
class SurrogateOptions:
    train_orders: int = 200  # R random orders retrained for real to fit on
    degree: int = 3  # highest Legendre degree of each batch's effect as a function of its position (1..degree
    # chosen with the ridge strength by cross-validation: few training orders favour a low degree)
    ridge: List[float] = field(default_factory=lambda: [10.0 ** k for k in range(-6, 3)])  # relative strengths
    folds: int = 5  # cross-validation folds choosing the ridge strength
    prior: str = "none"  # none | additive (the adjoint score as one more feature) | batch_loss (shared by loss at theta_0)
    share: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # batch_loss: weights w of the shared part
    seed: int = 7  # of the training orders (the study's held-out orders use their own seed)
    search_orders: int = 10000  # random orders scored inside the timed call (what a curriculum search screens)
    batched: Optional[bool] = None  # retrain the training orders batched (vmap); None: on a GPU
    chunk: int = 0  # training orders retrained together, at most (0: as many as the GPU's free memory holds)

    def validate(self) -> None:
        if self.train_orders < 4:
            raise ConfigError(f"train_orders={self.train_orders}: fitting needs at least 4 retrained orders.")
        if self.degree < 1:
            raise ConfigError(f"degree={self.degree} must be at least 1.")
        if not self.ridge or any(not (r > 0) for r in self.ridge):
            raise ConfigError("ridge must list positive strengths.")
        if not 2 <= self.folds <= self.train_orders:
            raise ConfigError(f"folds={self.folds} must be between 2 and train_orders.")
        if self.prior not in PRIORS:
            raise ConfigError(f"prior={self.prior!r} is not one of {', '.join(PRIORS)}.")
        if not self.share or any(not (w > 0) for w in self.share):
            raise ConfigError("share must list positive weights.")
        if self.search_orders < 0 or self.chunk < 0:
            raise ConfigError("search_orders and chunk must be 0 or more.")


def legendre(u: torch.Tensor, degree: int) -> torch.Tensor:
    """P_1..P_degree at u (any shape) -> [..., degree], by the three-term recurrence."""
    out, p0, p1 = [], torch.ones_like(u), u
    for n in range(1, degree + 1):
        out.append(p1)
        p0, p1 = p1, ((2 * n + 1) * u * p1 - n * p0) / (n + 1)
    return torch.stack(out, dim=-1)


def position_basis(T: int, degree: int) -> torch.Tensor:
    """B [T, degree]: the Legendre polynomials at the T positions mapped onto [-1, 1]."""
    u = torch.linspace(-1, 1, T, dtype=torch.float64) if T > 1 else torch.zeros(1, dtype=torch.float64)
    return legendre(u, degree)


def positions(orders) -> torch.Tensor:
    """[R, T]: pos[r, l], the step at which order r trains batch l."""
    idx = torch.as_tensor(orders, dtype=torch.long)
    pos = torch.empty_like(idx)
    pos.scatter_(1, idx, torch.arange(idx.shape[1]).expand(idx.shape[0], -1).contiguous())
    return pos


def features(orders, B: torch.Tensor, reference: List[int]) -> torch.Tensor:
    """[R, T * degree]: for batch l and degree j, P_j(position of l in the order) - P_j(its position
    in the reference order) (zero for the reference order itself)."""
    pos = positions(orders)
    return (B[pos] - B[positions([reference])[0]]).reshape(pos.shape[0], -1)


def ridge_fit(X: torch.Tensor, y: torch.Tensor, strengths, folds: int, seed: int = 0):
    """(coefficients, chosen strength, cv predictions): ridge through the origin (the anchor), the
    strength relative to mean(diag X^T X) chosen by the folds' squared error."""
    R = X.shape[0]
    scale = float((X * X).sum() / max(X.shape[1], 1)) or 1.0
    perm = torch.randperm(R, generator=torch.Generator().manual_seed(seed))
    parts = [perm[i::folds] for i in range(folds)]

    def solve(svd, ya, lam):
        U, s, Vh = svd
        return Vh.T @ ((s / (s * s + lam * scale)) * (U.T @ ya))

    # one SVD per fold serves every strength (the solve for a strength is a rescaling of its values)
    preds = {lam: torch.empty(R, dtype=X.dtype) for lam in strengths}
    for held in parts:
        keep = torch.ones(R, dtype=torch.bool)
        keep[held] = False
        svd = torch.linalg.svd(X[keep], full_matrices=False)
        for lam in strengths:
            preds[lam][held] = X[held] @ solve(svd, y[keep], lam)
    best = None
    for lam in strengths:
        err = float(((preds[lam] - y) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, lam, preds[lam])
    _, lam, pred = best
    return solve(torch.linalg.svd(X, full_matrices=False), y, lam), lam, pred


def retrained_losses(rec: Record, orders, batched: bool, bound: Optional[int]) -> List[float]:
    """The final validation loss of each order retrained for real, in chunks that fit the device
    (the parameters of a chunk are dropped once their losses are taken: R x d is never held)."""
    out, lo = [], 0
    while lo < len(orders):
        # planned again for every chunk: when the free memory shrinks between chunks, a chunk planned
        # once would no longer fit and ``retrain`` would split it, running its last copies as a small
        # chunk that pays a full pass's fixed cost per step
        step = plan_retrain_chunk(rec.flat, rec.traj.theta0, rec.batches, len(orders) - lo, bound).chunk \
            if batched else 8
        params = retrain(rec.flat, rec.traj.theta0, rec.batches, orders[lo:lo + step], rec.traj.lrs, rec.traj.hp,
                         batched=batched, chunk=step, reference=rec.traj)
        out += [rec.flat.eval_loss(p, rec.val) for p in params]
        del params
        lo += step
    return out


def standardised(v: torch.Tensor) -> torch.Tensor:
    """phi_l for the batch_loss prior: zero mean, unit spread (unchanged spread when all are equal)."""
    sd = float(v.std()) if v.numel() > 1 else 0.0
    return (v - v.mean()) / (sd if sd > 0 else 1.0)


def fit_surrogate(train, y: torch.Tensor, ref: List[int], opts: SurrogateOptions, phi: Optional[torch.Tensor] = None,
                  extra_col: Optional[torch.Tensor] = None, rows: Optional[torch.Tensor] = None):
    """(degree, shared weight, coefficients, ridge strength, cv predictions of ``rows``): every degree up
    to ``opts.degree`` (and, with ``phi``, every weight in ``opts.share``) with every ridge strength,
    the best by the folds' squared error. Columns: the T x degree own parts a'_{l,j}, then (with phi)
    the degree shared parts c_j, then ``extra_col`` (the adjoint prior). Module-level so the offline
    refits (benchmarks/order_effects/surrogate_refit.py) run exactly the estimator's own fit."""
    T = len(ref)
    rows = torch.ones(len(train), dtype=torch.bool) if rows is None else rows
    best = None
    for deg in range(1, opts.degree + 1):
        X0 = features(train, position_basis(T, deg), ref)
        for w in (opts.share if phi is not None else [0.0]):
            Xd = X0
            if phi is not None:  # the shared part: sum_l phi_l (P_j(pos) - P_j(ref pos)), weighted by w
                Xd = torch.cat([Xd, w * torch.einsum("rlj,l->rj", X0.view(len(train), T, deg), phi)], dim=1)
            if extra_col is not None:
                Xd = torch.cat([Xd, extra_col], dim=1)
            coef, lam, pred = ridge_fit(Xd[rows], y[rows], opts.ridge, opts.folds, opts.seed)
            err = float(((pred - y[rows]) ** 2).mean())
            if best is None or err < best[0]:
                best = (err, deg, w, coef, lam, pred)
    return best[1:]


def surrogate_S(coef: torch.Tensor, degree: int, ref: List[int], phi: Optional[torch.Tensor] = None,
                share: float = 0.0) -> torch.Tensor:
    """S [T, T] from a fit's coefficients: S[t, l] = sum_j a_lj (P_j(u_t) - P_j(u_ref(l))), with
    a_lj = a'_lj + w phi_l c_j when the batches share a profile (the adjoint column is left out)."""
    T = len(ref)
    B = position_basis(T, degree)
    a_l = coef[:T * degree].reshape(T, degree)  # a[l, j]
    if phi is not None:  # a_lj = a'_lj + w phi_l c_j
        a_l = a_l + share * phi[:, None] * coef[T * degree:T * degree + degree][None, :]
    ref_pos = torch.empty(T, dtype=torch.long)
    ref_pos[torch.as_tensor(ref)] = torch.arange(T)
    return B @ a_l.T - (a_l * B[ref_pos]).sum(1)[None, :]


def batch_losses_at(flat, theta: torch.Tensor, batches) -> torch.Tensor:
    """Each batch's loss at ``theta`` (float64, on the CPU): one forward pass per batch."""
    with torch.no_grad():
        return torch.tensor([float(flat.loss(theta, b)) for b in batches], dtype=torch.float64)


def est_surrogate(rec: Record, orders, opts: SurrogateOptions) -> Estimate:
    from scipy.stats import spearmanr

    if rec.val is None or rec.reference_loss is None:
        raise ValueError("surrogate needs the validation batches and the reference validation loss")
    T, ref, ref_loss = rec.T, rec.traj.order, rec.reference_loss
    batched = rec.device.type == "cuda" if opts.batched is None else bool(opts.batched)
    train_seed = 10_000 + opts.seed  # a seed range the study's queries do not use
    train = random_orders(T, opts.train_orders, train_seed)
    y_train, retrain_s = timed(lambda: retrained_losses(rec, train, batched, opts.chunk or None))
    S_add, prior_s, prior_scale, prior_col = None, 0.0, 1.0, None
    if opts.prior == "additive":
        S_add, prior_s = timed(lambda: additive_scores(rec.flat, rec.traj, rec.batches, rec.val).double().cpu())
        a = score_orders(S_add, train, 0.0)
        prior_scale = float(a.std()) or 1.0
        prior_col = (a / prior_scale)[:, None]
    phi, batch_loss = None, None
    if opts.prior == "batch_loss":
        batch_loss, prior_s = timed(lambda: batch_losses_at(rec.flat, rec.traj.theta0, rec.batches))
        phi = standardised(batch_loss)
    y = torch.tensor(y_train, dtype=torch.float64) - ref_loss
    finite = torch.isfinite(y)
    if int(finite.sum()) < opts.folds:
        raise ValueError(f"surrogate: only {int(finite.sum())} of {len(train)} training orders retrained to a finite "
                         "loss; the run diverges at these settings")

    (degree, share, coef, lam, cv_pred), fit_s = timed(
        lambda: fit_surrogate(train, y, ref, opts, phi=phi, extra_col=prior_col, rows=finite))
    S = surrogate_S(coef, degree, ref, phi=phi, share=share)
    if S_add is not None:
        S = S + coef[-1] / prior_scale * S_add
    loss, query_s = timed(lambda: score_orders(S, orders, ref_loss))
    score_s = search_score_s(S, opts.search_orders, opts.seed, ref_loss)
    best = best_order(S)
    yf = y[finite]
    cv_rho = float(spearmanr(cv_pred.numpy(), yf.numpy()).statistic) if len(set(yf.tolist())) > 1 else math.nan
    proposal = {"order": best, "predicted_loss": float(score_orders(S, [best], ref_loss)[0]),
                "how": "the fitted surrogate's exact optimum (a linear assignment of batches to steps)",
                "search_orders": opts.search_orders, "search_score_s": score_s}
    extra = {"S": S, "train_orders": len(train), "train_retrain_s": retrain_s, "prior_s": prior_s, "fit_s": fit_s,
             "query_s": query_s, "orders_scored": len(orders) + opts.search_orders, "ridge": lam, "degree": degree,
             "share": share if phi is not None else None,
             "batch_loss_theta0": batch_loss.tolist() if batch_loss is not None else None,
             "cv_spearman": cv_rho, "retrained_orders": len(train),
             # the training set itself (orders from random_orders(T, R, train_seed)), so other fitted forms
             # can be studied offline on what a GPU run paid for
             "train_seed": train_seed, "train_losses": [float(v) for v in y_train]}
    return Estimate(loss=[float(x) for x in loss], proposal=proposal, extra=extra,
                    linearisation=None)


def cost(u, K: int, T: int, o: SurrogateOptions) -> float:
    """R retrainings (batched on a GPU) and their evaluations, the prior's precompute; K does not enter."""
    per = u.batched_grad_s if (o.batched if o.batched is not None else u.device.startswith("cuda")) else u.grad_s
    prior = {"additive": T * (T - 1) * u.batched_grad_s + T * u.hvp_s,
             "batch_loss": T * per}.get(o.prior, 0.0)  # batch_loss: T forward passes, a gradient's cost bounds each
    return o.train_orders * (T * per + u.eval_s) + prior


ESTIMATOR = register(Estimator("surrogate", est_surrogate, SurrogateOptions, gives_params=False, proposes_order=True,
                               rank=40, cost=cost, summary="a datamodel fitted to R retrained orders: any order in O(T)"))
