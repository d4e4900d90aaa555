"""The recorded reference run and real retraining.

A ``Trajectory`` holds the optimiser state x_t = (theta_t, m_t, v_t) of the reference run at every
``every``-th step (``every=1``: every step) and replays the steps between two stored states exactly
(the same functional AdamW step on the same batch, so the replayed state is bitwise the recorded
one on the same device). ``state(t)`` keeps the current segment in memory, so a forward or a
backward walk over t replays each segment once (memory ``every`` x 3d).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from taylorlab.errors import TaylorlabError
from taylorlab.order.functional import AdamHP, FlatModel, adam_step, adam_step_
from taylorlab.order.memory import ChunkPlan, plan_chunk

State = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Trajectory:
    """Stored states ``{t: (theta_t, m_t, v_t)}`` every ``every`` steps (always t=0 and t=T), the
    order, the learning rates and Adam's settings; ``flat`` and ``batches`` replay the steps between."""

    stored: Dict[int, State]
    order: List[int]
    lrs: List[float]
    hp: AdamHP
    every: int = 1
    flat: Optional[FlatModel] = None
    batches: Optional[torch.Tensor] = None
    _segment: Dict[int, State] = field(default_factory=dict, repr=False)

    @property
    def T(self) -> int:
        return len(self.order)

    @property
    def dim(self) -> int:
        return self.stored[0][0].numel()

    @property
    def device(self) -> torch.device:
        return self.stored[0][0].device

    def step(self, t: int, state: State) -> State:
        """x_{t+1} from x_t: the reference run's step t."""
        theta, m, v = state
        g = self.flat.grad(theta, self.batches[self.order[t]])
        return adam_step(theta, m, v, g, t + 1, self.lrs[t], self.hp)

    def state(self, t: int) -> State:
        if t in self.stored:
            return self.stored[t]
        if t not in self._segment:
            if self.flat is None or self.batches is None:
                raise TaylorlabError(f"step {t} was not stored and this trajectory has no model to replay it.")
            start = (t // self.every) * self.every
            self._segment = {}
            x = self.stored[start]
            for s in range(start, min(start + self.every, self.T)):
                x = self.step(s, x)
                self._segment[s + 1] = x
        return self._segment[t]

    def theta(self, t: int) -> torch.Tensor:
        return self.state(t)[0]

    @property
    def theta0(self) -> torch.Tensor:
        return self.stored[0][0]

    @property
    def final(self) -> torch.Tensor:
        return self.stored[self.T][0]

    def tensors(self) -> Dict[str, torch.Tensor]:
        """The stored states as one flat dict (for safetensors)."""
        out = {}
        for t, (th, m, v) in self.stored.items():
            out[f"theta.{t}"], out[f"m.{t}"], out[f"v.{t}"] = th.contiguous(), m.contiguous(), v.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: Dict[str, torch.Tensor], order, lrs, hp, every, flat=None, batches=None):
        steps = sorted(int(k.split(".", 1)[1]) for k in tensors if k.startswith("theta."))
        stored = {t: (tensors[f"theta.{t}"], tensors[f"m.{t}"], tensors[f"v.{t}"]) for t in steps}
        return cls(stored, list(order), list(lrs), hp, every, flat, batches)


def validate_orders(orders: Sequence[Sequence[int]], T: int, names: Optional[Sequence[str]] = None) -> List[List[int]]:
    """Each order as a list of ints, or a TaylorlabError naming it (``names[k]``, else "order k")."""
    out = []
    for k, o in enumerate(orders):
        name = names[k] if names is not None else f"order {k}"
        o = [int(x) for x in o]
        if len(o) != T:
            raise TaylorlabError(f"{name} has {len(o)} entries; a query must be a permutation of the {T} batches.")
        bad = [x for x in o if not 0 <= x < T]
        if bad:
            raise TaylorlabError(f"{name} has batch ids out of range 0..{T - 1}: {bad[:5]}.")
        if len(set(o)) != T:
            raise TaylorlabError(f"{name} is not a permutation: it repeats batch ids and misses others.")
        out.append(o)
    return out


def record(flat: FlatModel, batches: torch.Tensor, order: List[int], lrs: List[float], hp: AdamHP,
           every: int = 1, progress: bool = False) -> Trajectory:
    """Train once in ``order`` from the model's current weights, storing the state every ``every``
    steps (and the last); the rest is replayed on demand."""
    from tqdm.auto import tqdm

    T = len(order)
    if every < 1:
        raise TaylorlabError(f"record.checkpoint_every must be at least 1, got {every}.")
    theta = flat.flat().to(batches.device)
    x = (theta, torch.zeros_like(theta), torch.zeros_like(theta))
    traj = Trajectory({0: x}, list(order), list(lrs), hp, every, flat, batches)
    for t in tqdm(range(T), desc="record", disable=not progress, leave=False):
        x = traj.step(t, x)
        if not torch.isfinite(x[0]).all():
            raise TaylorlabError(f"the reference run diverged at step {t}; lower record.lr.")
        if (t + 1) % every == 0 or t + 1 == T:
            traj.stored[t + 1] = x
    return traj


def shared_prefix(order: Sequence[int], reference: Sequence[int]) -> int:
    """How many first steps ``order`` shares with ``reference`` (T when they are the same order)."""
    for t, (a, b) in enumerate(zip(order, reference)):
        if a != b:
            return t
    return len(order)


def retrain(flat: FlatModel, theta0: torch.Tensor, batches: torch.Tensor, orders: List[List[int]], lrs: List[float],
            hp: AdamHP, batched: bool = True, chunk: Optional[int] = None, compile: bool = False,
            reference: Optional[Trajectory] = None) -> torch.Tensor:
    """Ground truth: every order trained for real from theta0. ``batched`` trains the K parameter
    copies together (torch.func.vmap over the gradient, Adam's step in place; ``chunk`` copies at a
    time at most; on a GPU as many as fit its free memory, ``memory.plan_chunk``; equal to one at a
    time up to rounding); else one after another, with the
    reference run's own functional step (the reference order gives the recorded run bit for bit).
    ``compile`` runs the batched gradient through torch.compile (fuses the model's elementwise work;
    compiled once per FlatModel and shape, which costs tens of seconds: worth it on a GPU for many
    steps, not for a short CPU run).

    ``reference`` (the recorded run from the same theta0 with the same schedule) skips the steps an
    order shares with the reference order at its start: it starts from the reference's state after
    them (one at a time: bitwise what the full retraining gives; batched: a copy joins the vmapped
    step when its prefix ends, so each trains only its own steps; with ``compile`` each new number of
    copies compiles once more). A memorization order (batch i moved to position j) shares min(i, j)
    steps; a random order almost none. Returns [K, d] in query order."""
    K, T = len(orders), len(orders[0])
    if reference is not None and (list(lrs) != list(reference.lrs) or hp != reference.hp
                                  or not torch.equal(theta0, reference.theta0)):
        raise TaylorlabError("retrain(reference=...) needs the reference run's own initial weights, learning rates "
                             "and Adam settings: its states are the shared prefix of every order.")
    starts = [shared_prefix(o, reference.order) for o in orders] if reference is not None else [0] * K
    by_start = sorted(range(K), key=lambda k: starts[k])  # grouped so that replays and chunks share prefixes
    out: List[Optional[torch.Tensor]] = [None] * K

    def start_state(s: int) -> State:
        return reference.state(s) if s else (theta0, torch.zeros_like(theta0), torch.zeros_like(theta0))

    if batched:
        gfn = flat.batched_grad(compile)
        step = balanced_chunk(K, plan_retrain_chunk(flat, theta0, batches, K, chunk).chunk)
        for lo in range(0, K, step):
            ks = by_start[lo:lo + step]  # ascending shared prefix: the copies training at step t come first
            first = [starts[k] for k in ks]
            theta, m, v = (x.expand(len(ks), -1).clone() for x in start_state(first[0]))
            idx = torch.tensor([orders[k] for k in ks], device=batches.device)
            n = bisect.bisect_right(first, first[0])  # copies training from the first step on
            for t in range(first[0], T):
                joined = bisect.bisect_right(first, t)
                if joined > n:  # copies whose prefix ends here leave the reference run
                    for x, y in zip((theta, m, v), reference.state(t)):
                        x[n:joined] = y
                    n = joined
                adam_step_(theta[:n], m[:n], v[:n], gfn(theta[:n], batches[idx[:n, t]]), t + 1, lrs[t], hp)
            if n < len(ks):  # copies of the reference order itself: never left it
                theta[n:] = reference.final
            for i, k in enumerate(ks):
                out[k] = theta[i]
        return torch.stack(out)
    for k in by_start:
        theta, m, v = start_state(starts[k])
        o = orders[k]
        for t in range(starts[k], T):
            theta, m, v = adam_step(theta, m, v, flat.grad(theta, batches[o[t]]), t + 1, lrs[t], hp)
        out[k] = theta
    return torch.stack(out)


def balanced_chunk(n: int, fit: int) -> int:
    """The chunk size that takes ``n`` items in as few chunks of at most ``fit`` as possible, all of
    about the same size: a pass's fixed cost per step makes a small last chunk (15 items that fit 14
    at a time: 14 + 1) nearly as slow as a full one, so 8 + 7 is the faster split."""
    if n <= 1:
        return 1
    fit = max(1, min(n, fit))
    return -(-n // -(-n // fit))


def plan_retrain_chunk(flat: FlatModel, theta0: torch.Tensor, batches: torch.Tensor, K: int,
                       bound: Optional[int] = None) -> ChunkPlan:
    """How many orders batched retraining trains together: a probe of one copy's (uncompiled: the
    larger) vmapped gradient plus its parameters, moments and output row (4d)."""
    gfn = flat.batched_grad(False)
    state = 4 * theta0.numel() * theta0.element_size()
    return plan_chunk("batched retraining", K, theta0.device,
                      lambda: gfn(theta0.unsqueeze(0), batches[:1]), state, bound)
