"""The recorded reference run (every step's parameters and Adam moments) and real retraining."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch

from taylorlab.errors import TaylorlabError
from taylorlab.order.functional import AdamHP, FlatModel, adam_step


@dataclass
class Trajectory:
    """theta_0..theta_T, m_0..m_T, v_0..v_T ([T+1, d] each), the order, the learning rates."""

    thetas: torch.Tensor
    ms: torch.Tensor
    vs: torch.Tensor
    order: List[int]
    lrs: List[float]
    hp: AdamHP

    @property
    def T(self) -> int:
        return len(self.order)


def validate_orders(orders: Sequence[Sequence[int]], T: int) -> List[List[int]]:
    out = []
    for k, o in enumerate(orders):
        o = [int(x) for x in o]
        if len(o) != T:
            raise TaylorlabError(f"order {k} has {len(o)} entries; a query must be a permutation of the {T} batches.")
        bad = [x for x in o if not 0 <= x < T]
        if bad:
            raise TaylorlabError(f"order {k} has batch ids out of range 0..{T - 1}: {bad[:5]}.")
        if len(set(o)) != T:
            raise TaylorlabError(f"order {k} is not a permutation: it repeats batch ids and misses others.")
        out.append(o)
    return out


def record(flat: FlatModel, batches: torch.Tensor, order: List[int], lrs: List[float], hp: AdamHP) -> Trajectory:
    """Train once in ``order``, keeping every step's parameters and moments (small models)."""
    T = len(order)
    theta = flat.flat()
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    thetas, ms, vs = [theta], [m], [v]
    for t in range(T):
        g = flat.grad(theta, batches[order[t]])
        if not torch.isfinite(g).all():
            raise TaylorlabError(f"gradient is not finite at step {t}; lower the learning rate.")
        theta, m, v = adam_step(theta, m, v, g, t + 1, lrs[t], hp)
        thetas.append(theta)
        ms.append(m)
        vs.append(v)
    return Trajectory(torch.stack(thetas), torch.stack(ms), torch.stack(vs), list(order), list(lrs), hp)


def retrain(flat: FlatModel, theta0: torch.Tensor, batches: torch.Tensor, orders: List[List[int]], lrs: List[float],
            hp: AdamHP, batched: bool = True) -> torch.Tensor:
    """Ground truth: every order trained for real from theta0. ``batched`` trains the K parameter
    copies together (torch.func.vmap over the gradient); else one after another. Returns [K, d]."""
    K, T = len(orders), len(orders[0])
    if batched:
        from torch.func import vmap

        gfn = vmap(flat.grad)
        theta = theta0.expand(K, -1).clone()
        m, v = torch.zeros_like(theta), torch.zeros_like(theta)
        idx = torch.tensor(orders)
        for t in range(T):
            g = gfn(theta, batches[idx[:, t]])
            theta, m, v = adam_step(theta, m, v, g, t + 1, lrs[t], hp)
        return theta
    out = []
    for o in orders:
        theta = theta0.clone()
        m, v = torch.zeros_like(theta), torch.zeros_like(theta)
        for t in range(T):
            theta, m, v = adam_step(theta, m, v, flat.grad(theta, batches[o[t]]), t + 1, lrs[t], hp)
        out.append(theta)
    return torch.stack(out)
