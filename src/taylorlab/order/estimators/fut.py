"""``fut`` and ``fut2`` — the paper's first- and second-order recursions: ``delta_{t+1} = delta_t -
eta_t [Gamma(theta_t, B_l) - Gamma(theta_t, B_t) + Gamma'(g_l) h_l delta_t + wd delta_t]`` (``fut2``
adds ``1/2 Gamma''(g_l) (h_l delta_t)^2``), Gamma the Adam update with the reference run's moments
m_t, v_t (frozen), Gamma' its exact elementwise derivative in the gradient, h_l the paper's secant
(finite-difference) Hessian diagonal of batch l between consecutive checkpoints. T^2 gradient
evaluations at most (2 min(K + 1, T) per step), streamed over t (the T x T table is never stored)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taylorlab.errors import ConfigError
from taylorlab.order.functional import grads_at, sqrt0
from taylorlab.order.recorded import Record
from taylorlab.order.registry import Estimate, Estimator, register
from taylorlab.order.trajectory import Trajectory


@dataclass
class FutOptions:
    chunk: int = 8  # orders advanced together (each temporary is [chunk, d])

    def validate(self) -> None:
        if self.chunk <= 0:
            raise ConfigError(f"chunk={self.chunk} must be positive.")


def _phi(traj: Trajectory, t: int):
    """Gamma as an elementwise function of the gradient at reference step t (reference moments)."""
    b1, b2 = traj.hp.betas
    s = t + 1
    _, m, v = traj.state(t)

    def phi(g):
        mhat = (b1 * m + (1 - b1) * g) / (1 - b1 ** s)
        vhat = (b2 * v + (1 - b2) * g * g) / (1 - b2 ** s)
        return mhat / (sqrt0(vhat) + traj.hp.eps)

    return phi


def _phi_derivatives(traj: Trajectory, t: int, g: torch.Tensor):
    """``_phi(traj, t)`` and its first and second derivatives at g, elementwise, in closed form (phi =
    A / (sqrt(V) + eps) with A, V the bias-corrected moments as functions of g; derivatives of sqrt
    taken as 0 where V = 0). Works on [d] or [K, d]; checked against forward-mode autodiff in the tests."""
    b1, b2 = traj.hp.betas
    _, m, v = traj.state(t)
    c1, c2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
    A = (b1 * m + (1 - b1) * g) / c1
    V = (b2 * v + (1 - b2) * g * g) / c2
    pos = V > 0
    S = sqrt0(V)
    Ssafe = torch.where(pos, S, torch.ones_like(S))
    d = S + traj.hp.eps
    A1 = (1 - b1) / c1
    V1 = 2 * (1 - b2) * g / c2
    V2 = 2 * (1 - b2) / c2
    S1 = torch.where(pos, V1 / (2 * Ssafe), torch.zeros_like(S))
    S2 = torch.where(pos, V2 / (2 * Ssafe) - V1 * V1 / (4 * Ssafe ** 3), torch.zeros_like(S))
    val = A / d
    d1 = A1 / d - A * S1 / d ** 2
    d2 = -2 * A1 * S1 / d ** 2 - A * S2 / d ** 2 + 2 * A * S1 * S1 / d ** 3
    return val, d1, d2


def _fut(rec: Record, orders, second_order: bool, chunk: int = 8) -> Estimate:
    """Streams over t with the gradients of the step's distinct batches only (the queried orders'
    and the reference's: at most min(K + 1, T), not the T x d row of the table) at theta_t and, for
    the secant, at theta_{t-1} (the previous step's, reused where the batch was already there)."""
    flat, traj, batches = rec.flat, rec.traj, rec.batches
    K, T = len(orders), traj.T
    delta = torch.zeros(K, traj.dim, dtype=traj.theta0.dtype, device=traj.device)
    wd = traj.hp.weight_decay
    prev, prev_theta = {}, None
    for t in range(T):
        theta = traj.theta(t)
        need = sorted({o[t] for o in orders} | {traj.order[t]})
        table = dict(zip(need, grads_at(flat, theta, batches, need)))
        if t > 0:
            missing = [b for b in need if b not in prev]
            if missing:
                prev.update(zip(missing, grads_at(flat, prev_theta, batches, missing)))
            dtheta = theta - prev_theta
        ref_gamma = _phi_derivatives(traj, t, table[traj.order[t]])[0]
        for lo in range(0, K, chunk):  # orders vectorised in chunks (each temporary is [chunk, d])
            ids = [o[t] for o in orders[lo:lo + chunk]]
            dk = delta[lo:lo + chunk]
            g = torch.stack([table[b] for b in ids])
            gam, d1, d2 = _phi_derivatives(traj, t, g)
            dg = (torch.stack([_secant(table[b], prev[b], dtheta) for b in ids]) * dk if t > 0
                  else torch.zeros_like(dk))
            change = gam - ref_gamma + d1 * dg + wd * dk
            if second_order:
                change = change + 0.5 * d2 * dg * dg
            delta[lo:lo + chunk] = dk - traj.lrs[t] * change
        prev, prev_theta = table, theta
    return Estimate(params=traj.final + delta)


def _secant(g_now: torch.Tensor, g_prev: torch.Tensor, dtheta: torch.Tensor) -> torch.Tensor:
    """The paper's secant Hessian diagonal of one batch between consecutive reference states."""
    ok = dtheta.abs() > 1e-12
    return torch.where(ok, (g_now - g_prev) / torch.where(ok, dtheta, torch.ones_like(dtheta)), torch.zeros_like(g_now))




def cost(u, K: int, T: int, o: FutOptions) -> float:
    """The distinct batches' gradients at theta_t (and at theta_{t-1} where new): ~min(K + 1, T) per step."""
    return T * min(K + 1, T) * u.batched_grad_s


ESTIMATOR = register(Estimator("fut", lambda rec, orders, o: _fut(rec, orders, False, o.chunk), FutOptions, rank=10, per_order=True,
                               cost=cost, summary="the paper's first-order recursion (frozen moments, secant diagonal)"))
ESTIMATOR2 = register(Estimator("fut2", lambda rec, orders, o: _fut(rec, orders, True, o.chunk), FutOptions, rank=11, per_order=True,
                                cost=cost, summary="the paper's second-order recursion"))
