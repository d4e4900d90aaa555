"""The order estimators, registered once: name, typed options, capabilities and the function.

An estimator is one module under ``taylorlab.order.estimators`` that calls ``register``; config
choices and validation, the stages and the results page read this registry, so adding one touches
that module, its config and its tests, nothing else::

    @dataclass
    class ShrinkOptions:
        factor: float = 0.5

    def shrink(rec: Record, orders, opts) -> Estimate:   # halfway between theta_0 and theta_T
        theta = rec.traj.theta0 + opts.factor * (rec.traj.final - rec.traj.theta0)
        return Estimate(params=theta.expand(len(orders), -1).clone())

    register(Estimator("shrink", shrink, ShrinkOptions))

Every estimator takes the ``Record`` and a list of orders (permutations of the T batch ids) and
returns an ``Estimate``; ``estimate`` validates the orders, times the call and measures its memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from taylorlab.order.queries import timed
from taylorlab.order.recorded import Record
from taylorlab.order.trajectory import validate_orders
from taylorlab.options import NoOptions, Registry, make_options


@dataclass
class Estimate:
    """One estimator's answer for K orders: final parameters [K, d] (estimators that produce them)
    or final validation losses; its own self-check (``linearisation``: no retraining needed); an
    order it proposes (``proposal``: ``{"order": [...], "predicted_loss": ...}`` and details), the
    truth of which the caller checks by retraining."""

    params: Optional[torch.Tensor] = None
    loss: Optional[List[float]] = None
    linearisation: Optional[Dict[str, Any]] = None
    proposal: Optional[Dict[str, Any]] = None
    name: str = ""
    wall_s: Optional[float] = None
    peak_gib: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def losses(self, rec: Record) -> List[float]:
        """Final validation losses: given directly, or of the estimated parameters."""
        if self.loss is not None:
            return list(self.loss)
        return [rec.flat.eval_loss(p.to(rec.device), rec.val) for p in self.params]


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: Callable[[Record, List[List[int]], Any], Estimate]
    options: type = NoOptions
    gives_params: bool = True  # final parameters per order (else losses only)
    relative_loss: bool = False  # its losses are right only up to a shift (how orders differ: additive)
    proposes_order: bool = False  # returns a best order under its own model (``Estimate.proposal``)
    self_check: bool = False  # returns ``Estimate.linearisation``
    baseline: bool = False  # "no change": the row every table is compared with
    # its answer for one order does not depend on the other orders asked: the orders may be split over
    # processes or GPUs and the answers concatenated (``merge``); a fitted or shared model may not
    per_order: bool = False
    summary: str = ""
    rank: int = 100  # where tables list it (lower first)
    # predicted seconds for K orders of T steps from the probed passes (``costs.Units``): the cost advisor
    cost: Optional[Callable[[Any, int, int, Any], float]] = None

    def make_options(self, values: Optional[Mapping[str, Any]] = None, key: Optional[str] = None) -> Any:
        return make_options(self.options, values, key or f"estimate.options.{self.name}", self.name)


_ESTIMATORS: Registry[Estimator] = Registry("order estimator")


def register(est: Estimator) -> Estimator:
    return _ESTIMATORS.register(est)


def unregister(name: str) -> None:
    _ESTIMATORS.unregister(name)


def get(name: str, key: str = "estimator") -> Estimator:
    return _ESTIMATORS.get(name, key)


def names(gives_params: Optional[bool] = None) -> Tuple[str, ...]:
    """The registered estimators in display order (optionally only those that give parameters)."""
    return _ESTIMATORS.names(None if gives_params is None else (lambda e: e.gives_params == gives_params))


def merge(parts: List[Estimate]) -> Estimate:
    """One Estimate from the answers of consecutive chunks of the orders (a per-order estimator run
    in several processes): parameters and losses concatenated, self-checks pooled (their order
    indices shifted to the whole list), the peak the largest; the wall time is the caller's."""
    import statistics

    if not parts:
        raise ValueError("merge: no parts")
    params = None if parts[0].params is None else torch.cat([p.params.cpu() for p in parts])
    loss = None if parts[0].loss is None else [x for p in parts for x in p.loss]
    lin = None
    if parts[0].linearisation is not None:
        checks, offset = [], 0
        for p in parts:
            checks += [{**c, "order": c["order"] + offset} if "order" in c else c
                       for c in (p.linearisation or {}).get("checks", [])]
            offset += len(p.params if p.params is not None else p.loss)
        lin = {**parts[0].linearisation, "checks": checks}
        for key, field_ in (("median_residual", "residual"), ("median_first_order", "first_order")):
            vals = [c[field_] for c in checks if c.get(field_) is not None and c[field_] == c[field_]]
            if key in lin:
                lin[key] = statistics.median(vals) if vals else None
    peaks = [p.peak_gib for p in parts if p.peak_gib is not None]
    return Estimate(params=params, loss=loss, linearisation=lin, proposal=None, name=parts[0].name,
                    peak_gib=max(peaks) if peaks else None,
                    extra={**parts[0].extra, "parts": len(parts), "part_wall_s": [p.wall_s for p in parts]})


def estimate(name: str, rec: Record, orders: List[List[int]], options: Any = None) -> Estimate:
    """Run one registered estimator over K orders: its ``Estimate`` with the wall time and, on a
    GPU, the peak memory. ``options``: its options dataclass or a mapping checked against it."""
    est = get(name)
    opts = est.make_options(options)
    orders = validate_orders(orders, rec.T)
    cuda = rec.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out, wall = timed(lambda: est.fn(rec, orders, opts))
    out.name, out.wall_s = name, wall
    out.peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    if out.params is None and out.loss is None:
        raise ValueError(f"estimator {name} returned neither parameters nor losses")
    return out
