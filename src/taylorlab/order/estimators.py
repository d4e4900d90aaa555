"""Estimators of the final parameters of a training order, from the recorded reference run.

* ``none`` — "no change": the reference run's final parameters for every order (the baseline every
  table must show).
* ``fut`` — the paper's first-order recursion: ``delta_{t+1} = (I - eta_t J) delta_t - eta_t
  [Gamma(theta_t, B_l) - Gamma(theta_t, B_t)]``, Gamma the Adam update with the reference run's
  moments, J its diagonal derivative through a secant (finite-difference) Hessian diagonal between
  consecutive checkpoints. T^2 gradient evaluations, streamed over t.
* ``fut-carry`` — this project's accuracy estimator: ``g(gamma_t, B_l) ~ g(theta_t, B_l) +
  H(theta_t, B_l)(gamma_t - theta_t)`` with an exact Hessian-vector product, and Adam's m, v and
  step computed exactly from that gradient along the new order (moments carried, never
  linearised). Streams over t, advancing all K orders together (memory K x 3d).

Every estimator returns the reference run exactly for the reference order.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List

import torch

from taylorlab.order.functional import FlatModel, adam_step
from taylorlab.order.trajectory import Trajectory, validate_orders


def est_none(flat: FlatModel, traj: Trajectory, batches, orders) -> torch.Tensor:
    return traj.thetas[-1].expand(len(orders), -1).clone()


def _gamma(traj: Trajectory, t: int, g: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Adam's update direction at reference state t with gradient g (reference moments)."""
    b1, b2 = traj.hp.betas
    s = t + 1
    m = b1 * traj.ms[t] + (1 - b1) * g
    v = b2 * traj.vs[t] + (1 - b2) * g * g
    vhat = v / (1 - b2 ** s)
    return (m / (1 - b1 ** s)) / (torch.sqrt(vhat) + traj.hp.eps) + traj.hp.weight_decay * theta, vhat


def est_fut(flat: FlatModel, traj: Trajectory, batches, orders) -> torch.Tensor:
    K, T = len(orders), traj.T
    b1 = traj.hp.betas[0]
    delta = torch.zeros(K, traj.thetas.shape[1])
    prev_g = None
    for t in range(T):
        theta = traj.thetas[t]
        g_all = torch.stack([flat.grad(theta, batches[b]) for b in range(T)])  # the paper's T^2 table, streamed
        if prev_g is None:
            h = torch.zeros_like(g_all)
        else:
            dtheta = theta - traj.thetas[t - 1]
            safe = torch.where(dtheta.abs() > 1e-12, dtheta, torch.ones_like(dtheta))
            h = torch.where(dtheta.abs() > 1e-12, (g_all - prev_g) / safe, torch.zeros_like(g_all))
        ref_gamma, _ = _gamma(traj, t, g_all[traj.order[t]], theta)
        for k, o in enumerate(orders):
            gam, vhat = _gamma(traj, t, g_all[o[t]], theta)
            jac = (1 - b1) / (1 - b1 ** (t + 1)) * h[o[t]] / (torch.sqrt(vhat) + traj.hp.eps) + traj.hp.weight_decay
            delta[k] = delta[k] - traj.lrs[t] * (jac * delta[k] + gam - ref_gamma)
        prev_g = g_all
    return traj.thetas[-1] + delta


def est_fut_carry(flat: FlatModel, traj: Trajectory, batches, orders) -> torch.Tensor:
    K = len(orders)
    gamma = traj.thetas[0].expand(K, -1).clone()
    m, v = torch.zeros_like(gamma), torch.zeros_like(gamma)
    for t in range(traj.T):
        theta = traj.thetas[t]
        g = torch.empty_like(gamma)
        cache: Dict[int, torch.Tensor] = {}
        for k, o in enumerate(orders):
            b = o[t]
            if b not in cache:
                cache[b] = flat.grad(theta, batches[b])
            delta = gamma[k] - theta
            g[k] = cache[b] + (flat.hvp(theta, batches[b], delta) if torch.any(delta != 0) else 0.0)
        gamma, m, v = adam_step(gamma, m, v, g, t + 1, traj.lrs[t], traj.hp)
    return gamma


ESTIMATORS: Dict[str, Callable] = {"none": est_none, "fut": est_fut, "fut-carry": est_fut_carry}


def estimate(name: str, flat: FlatModel, traj: Trajectory, batches: torch.Tensor, orders: List[List[int]]) -> dict:
    """Run one estimator over K orders; returns final parameters [K, d] and the wall time."""
    from taylorlab.errors import ConfigError

    if name not in ESTIMATORS:
        raise ConfigError(f"estimator {name!r} is not one of {', '.join(ESTIMATORS)}.")
    orders = validate_orders(orders, traj.T)
    t0 = time.time()
    params = ESTIMATORS[name](flat, traj, batches, orders)
    return {"params": params, "wall_s": time.time() - t0}
