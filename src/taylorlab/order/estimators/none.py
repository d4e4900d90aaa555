"""``none`` — "no change": the reference run's final parameters for every order (the baseline
every table must show)."""

from __future__ import annotations

from taylorlab.order.recorded import Record
from taylorlab.order.registry import Estimate, Estimator, register


def est_none(rec: Record, orders, opts) -> Estimate:
    return Estimate(params=rec.traj.final.expand(len(orders), -1).clone())


ESTIMATOR = register(Estimator("none", est_none, baseline=True, per_order=True, rank=0, summary="the reference run's final weights",
                               cost=lambda u, K, T, o: 0.0))
