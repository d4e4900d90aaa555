"""``fut-ckpt`` — ``fut-carry`` with its curvature built once per recorded checkpoint: the gradient of
every batch the orders use in the next ``every`` steps, taken once at the checkpoint's reference
state, and the secant diagonal between consecutive checkpoints; between checkpoints each order's
gradient is that table plus the diagonal times the order's distance from the checkpoint state. No
network pass per order: Adam's moments and step are computed exactly along the order from those
gradients, as in ``fut-carry``.

Gradient passes: about (T / every) x min(K x every, T) (plus the first checkpoint's), against
``fut-carry secant``'s T x min(K, T); every order's state (gamma, m, v) is still carried, so its memory
is 3Kd like ``fut-carry``'s. At ``every=1`` it is ``fut-carry curvature=secant`` itself (a test
checks it bitwise); at more, the reference order is no longer reproduced exactly (its own gradients
are linearised between checkpoints too)."""

from __future__ import annotations

from dataclasses import dataclass

from taylorlab.errors import ConfigError
from taylorlab.order import kfac
from taylorlab.order.estimators.fut_carry import FutCarryOptions, _carry
from taylorlab.order.recorded import Record
from taylorlab.order.registry import Estimate, Estimator, register


@dataclass
class FutCkptOptions:
    every: int = 0  # steps between gradient tables (0: the record's record.checkpoint_every)
    curvature: str = "secant"  # secant | kfac (Kronecker factors at each checkpoint) | none (the table alone)
    chunk: int = 0  # batches per vmapped gradient-table pass on a GPU (0: 16)
    kfac_labels: str = "sampled"  # curvature=kfac: sampled (the Fisher) | data (the empirical Fisher)
    check_steps: int = 4  # self-check as fut-carry's: steps where the estimate meets the exact gradient
    check_orders: int = 2

    def validate(self) -> None:
        if self.curvature not in ("secant", "kfac", "none"):
            raise ConfigError(f"curvature={self.curvature!r} is not one of secant, kfac, none.")
        if self.kfac_labels not in kfac.LABELS:
            raise ConfigError(f"kfac_labels={self.kfac_labels!r} is not one of {', '.join(kfac.LABELS)}.")
        if self.every < 0 or self.chunk < 0 or self.check_steps < 0 or self.check_orders < 0:
            raise ConfigError("every (0: the record's checkpoint_every), chunk, check_steps and check_orders "
                              "must be 0 or more.")


def refresh_every(rec: Record, o: FutCkptOptions) -> int:
    return o.every or rec.traj.every


def est_fut_ckpt(rec: Record, orders, opts: FutCkptOptions) -> Estimate:
    carry = FutCarryOptions(curvature=opts.curvature, chunk=opts.chunk, check_steps=opts.check_steps,
                            check_orders=opts.check_orders, kfac_labels=opts.kfac_labels)
    est = _carry(rec, orders, carry, refresh=refresh_every(rec, opts))
    est.extra["every"] = refresh_every(rec, opts)
    return est


def cost(u, K: int, T: int, o: FutCkptOptions) -> float:
    """One gradient table per checkpoint (the record's spacing is not known here: ``every``, else 1),
    each of the distinct batches of its steps; the secant's previous table is reused; every order's
    carried step (``carry_step_s``), K x T of them; and the self-check's exact passes."""
    every = max(1, o.every)
    # kfac: each table's batches' factors too, and every order's product with them
    factor_s, apply_s = (u.kfac_factor_s, u.kfac_apply_s) if o.curvature == "kfac" else (0.0, 0.0)
    return (-(-T // every) * min(K * every, T) * (u.batched_grad_s + factor_s) + K * T * (u.carry_step_s + apply_s)
            + o.check_steps * o.check_orders * (u.grad_s + u.hvp_s))


ESTIMATOR = register(Estimator("fut-ckpt", est_fut_ckpt, FutCkptOptions, self_check=True, per_order=True, rank=22,
                               cost=cost, summary="fut-carry's Adam along the order, gradients and a secant "
                               "diagonal only at the recorded checkpoints"))
