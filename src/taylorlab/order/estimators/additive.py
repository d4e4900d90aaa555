"""``additive`` — this project's search surrogate: ``f(order) - f(reference) ~ sum_t S[t, l_t]`` with
``S[t, l] = lambda_{t+1} . (x_{t+1}(l) - x_{t+1})``: the exact one-step effect of training on batch l
instead of the reference batch at step t (exact Adam step from the reference state), carried to the
final validation loss by the adjoint lambda of the linearised dynamics, from one reverse sweep
(vector-Jacobian products through the whole Adam step, Hessian included). After that precompute
(T^2 gradients + T double-backward passes), any order is scored in O(T) and the best order under the
surrogate is an exact linear assignment (``best_order``), which it proposes. With ``projection_dim``
the one-step effects and adjoints are kept only as seeded random projections (the paper's storage)
and S is their inner product. It gives losses, not parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from taylorlab.errors import ConfigError
from taylorlab.order.functional import FlatModel, adam_step, grads_at
from taylorlab.order.projection import Projector
from taylorlab.order.queries import timed
from taylorlab.order.recorded import Record
from taylorlab.order.registry import Estimate, Estimator, register
from taylorlab.order.trajectory import Trajectory


@dataclass
class AdditiveOptions:
    projection_dim: int = 0  # keep the one-step effects as k-dim random projections (0: exact)
    search_orders: int = 100000  # random orders scored by the surrogate (timed: its O(T) query)
    search_seed: int = 2
    chunk: int = 8  # one-step effects (3d each) held at a time

    def validate(self) -> None:
        if self.projection_dim < 0 or self.search_orders < 0:
            raise ConfigError("projection_dim and search_orders must be 0 or more.")
        if self.chunk <= 0:
            raise ConfigError(f"chunk={self.chunk} must be positive.")


def _target_grad(flat: FlatModel, theta: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    return sum(flat.grad(theta, b) for b in val) / len(val)


def adjoint_step(flat: FlatModel, traj: Trajectory, t: int, lam):
    """lambda_t = J_t^T lambda_{t+1}, J_t the Jacobian of the reference step x_t -> x_{t+1} (Adam's
    step with the gradient of the reference batch, whose derivative brings in the Hessian)."""
    theta, m, v = (y.detach().requires_grad_(True) for y in traj.state(t))
    with torch.enable_grad():
        loss = flat.loss(theta, traj.batches[traj.order[t]])
        g = torch.autograd.grad(loss, theta, create_graph=True)[0]
        out = adam_step(theta, m, v, g, t + 1, traj.lrs[t], traj.hp)
        res = torch.autograd.grad(out, (theta, m, v), grad_outputs=lam, allow_unused=True)
    return tuple(torch.zeros_like(x) if r is None else r.detach() for x, r in zip((theta, m, v), res))


def additive_scores(flat: FlatModel, traj: Trajectory, batches, val, projection_dim: int = 0,
                    projection_seed: int = 0, projection_kind: str = "gaussian", progress: bool = False,
                    chunk: int = 8) -> torch.Tensor:
    """S [T, T]: S[t, l] = lambda_{t+1} . (x_{t+1}(l) - x_{t+1}), from one reverse sweep; ``chunk``
    one-step effects (3d each) are held at a time."""
    T = traj.T
    lam = (_target_grad(flat, traj.final, val), torch.zeros_like(traj.final), torch.zeros_like(traj.final))
    proj = None
    if projection_dim:
        proj = Projector(3 * traj.dim, projection_dim, projection_seed, projection_kind)
    S = torch.zeros(T, T, dtype=traj.theta0.dtype, device=traj.device)
    for t in tqdm(range(T - 1, -1, -1), desc="additive", disable=not progress, leave=False):
        x_t, x_next = traj.state(t), traj.state(t + 1)
        lam_flat = torch.cat(lam)
        plam = proj(lam_flat) if proj is not None else None
        others = [l for l in range(T) if l != traj.order[t]]  # the reference batch: no change, S = 0
        for lo in range(0, len(others), chunk):
            ls = others[lo:lo + chunk]
            g = grads_at(flat, x_t[0], batches, ls, chunk)
            alt = adam_step(x_t[0].expand(len(ls), -1), x_t[1].expand(len(ls), -1), x_t[2].expand(len(ls), -1),
                            g, t + 1, traj.lrs[t], traj.hp)
            diffs = torch.cat([a - b for a, b in zip(alt, x_next)], dim=1)
            S[t, ls] = proj(diffs) @ plam if proj is not None else diffs @ lam_flat
        if t > 0:
            lam = adjoint_step(flat, traj, t, lam)
    return S


def score_orders(S: torch.Tensor, orders, reference_loss: float) -> torch.Tensor:
    """f(reference) + sum_t S[t, l_t] for [K, T] orders, vectorised (100k orders in milliseconds)."""
    idx = torch.as_tensor(orders, device=S.device)
    return reference_loss + S.gather(1, idx.T).sum(0)


def search_score_s(S: torch.Tensor, n: int, seed: int, reference_loss: float) -> float:
    """Seconds to score ``n`` seeded random orders under S (what a search over them costs); 0 for none."""
    if not n:
        return 0.0
    gen = torch.Generator().manual_seed(seed)
    many = torch.argsort(torch.rand(n, S.shape[0], generator=gen), dim=1).to(S.device)
    return timed(lambda: score_orders(S, many, reference_loss))[1]


def best_order(S: torch.Tensor) -> List[int]:
    """The order minimising the additive surrogate: an exact linear assignment of batches to steps."""
    rows, cols = linear_sum_assignment(S.detach().cpu().double().numpy())
    return [int(c) for _, c in sorted(zip(rows, cols))]


def est_additive(rec: Record, orders, opts: AdditiveOptions) -> Estimate:
    if rec.val is None or rec.reference_loss is None:
        raise ValueError("additive needs the validation batches and the reference validation loss")
    ref = rec.reference_loss
    S, precompute_s = timed(lambda: additive_scores(rec.flat, rec.traj, rec.batches, rec.val,
                                                    projection_dim=opts.projection_dim, chunk=opts.chunk))
    loss, query_s = timed(lambda: score_orders(S, orders, ref))
    score_s = search_score_s(S, opts.search_orders, opts.search_seed, ref)
    best = best_order(S)
    proposal = {"order": best, "predicted_loss": float(score_orders(S, [best], ref)[0]),
                "how": "the surrogate's exact optimum (a linear assignment of batches to steps)",
                "precompute_s": precompute_s, "search_orders": opts.search_orders, "search_score_s": score_s}
    return Estimate(loss=[float(x) for x in loss], proposal=proposal, extra={"S": S, "query_s": query_s})


def cost(u, K: int, T: int, o: AdditiveOptions) -> float:
    """T (T - 1) gradients for the one-step effects and T double-backward passes (~ an HVP each) for
    the adjoint, whatever K: the queries themselves are O(T) each."""
    return T * (T - 1) * u.batched_grad_s + T * u.hvp_s + u.eval_s


ESTIMATOR = register(Estimator("additive", est_additive, AdditiveOptions, gives_params=False, proposes_order=True,
                               relative_loss=True, rank=30, cost=cost,
                               summary="adjoint one-step effects: any order in O(T), its optimum proposed"))
