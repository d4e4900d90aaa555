"""The cost advisor: before an order study runs, what each requested estimator and the exact
answer (batched retraining) will cost on this device, from a few probed passes of this model on one
of its batches, multiplied by the number of passes each needs (each registered estimator states its
own count, ``Estimator.cost``). Logged before the study, shown beside the measurement afterwards.

The counts, per K orders of T steps (the model's own passes, one gradient g, one Hessian-vector
product h, ``b`` a gradient inside a vmapped pass of many copies):

* batched retraining: K T b; one order at a time: K T g (the training alone, without the evaluations
  after it: what the study measures as retraining's wall time and ``cost_vs_batched_retrain`` divides by)
* an estimator that, like ``fut-carry``, needs the gradient of every distinct batch of a step
  (min(K, T) per step) plus its per-order curvature term cannot cost less than retraining per order
  unless K >> T and the curvature term is far cheaper than a pass; only a fit once, scored in O(T)
  per order (``surrogate``, ``additive``), gets cheaper than retraining as the number of orders grows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional

import torch
from torch.func import jvp

from taylorlab.order import kfac
from taylorlab.order.functional import adam_step
from taylorlab.order.queries import timed
from taylorlab.order.recorded import Record
from taylorlab.order.memory import plan_chunk
from taylorlab.order.trajectory import plan_retrain_chunk


CPU_REPEAT_BELOW_S = 2.0


@dataclass
class Units:
    """Seconds per pass of this model on one training batch, on ``device``."""

    device: str
    grad_s: float  # one gradient, alone
    batched_grad_s: float  # one copy's gradient inside a vmapped pass of ``copies``
    hvp_s: float  # a gradient and a Hessian-vector product (forward over reverse), alone
    batched_hvp_s: float  # ... one copy's inside a vmapped pass (GPU; the lone one on the CPU)
    eval_s: float  # the validation loss of one parameter vector
    copies: int
    # one order's step of the estimators that carry its state: the linearised gradient (g + h * delta)
    # and the functional Adam step over d numbers; K x T of them, no network pass, yet on a 135M model
    # they cost more than fut-ckpt's gradient tables
    carry_step_s: float = 0.0
    # curvature=kfac: one batch's Kronecker factors (a pass with hooks), and one order's product with them
    kfac_factor_s: float = 0.0
    kfac_apply_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def probe_units(rec: Record, K: int, need_hvp: bool = True, need_kfac: bool = False) -> Units:
    """Each pass timed on this device (best of two, the first paying for warm-up; once for a CPU
    pass of ``CPU_REPEAT_BELOW_S`` or more)."""
    from torch.func import vmap

    flat, theta, b = rec.flat, rec.traj.theta0, rec.batches
    cuda = theta.device.type == "cuda"

    def best(fn):
        # the first call pays for warm-up (functorch tracing, the allocator; on a GPU, kernel
        # selection): timed again, and the faster kept — except for a CPU pass long enough that its
        # warm-up is noise, where a second one would double the advisor's own cost on a large model
        t = timed(fn)[1]
        return min(t, timed(fn)[1]) if cuda or t < CPU_REPEAT_BELOW_S else t

    grad_s = best(lambda: flat.grad(theta, b[0]))
    copies = max(1, min(K, 2 if not cuda else plan_retrain_chunk(flat, theta, b, K, 8).chunk))
    th = theta.expand(copies, -1).clone()
    gfn = flat.batched_grad(False)
    batched_grad_s = best(lambda: gfn(th, b[[0] * copies])) / copies
    hvp_s = batched_hvp_s = 0.0
    if need_hvp:
        vec = torch.zeros_like(theta)
        hvp_s = best(lambda: jvp(lambda y: flat.grad(y, b[0]), (theta,), (vec,)))
        batched_hvp_s = hvp_s
        if cuda:
            many = vmap(lambda t, bb, vv: jvp(lambda y: flat.grad(y, bb), (t,), (vv,)), in_dims=(None, 0, 0))
            # a forward-over-reverse pass holds more than a gradient's: its own count of copies, planned
            # from a probe of one (retraining's count ran large batches out of memory here)
            n = plan_chunk("the cost advisor's HVP probe", copies, theta.device,
                           lambda: many(theta, b[[0]], torch.zeros_like(th[:1]))).chunk
            batched_hvp_s = best(lambda: many(theta, b[[0] * n], torch.zeros_like(th[:n]))) / n
    eval_s = best(lambda: flat.eval_loss(theta, rec.val)) if rec.val is not None else 0.0
    zero = torch.zeros_like(theta)
    carry_step_s = best(lambda: adam_step(theta, zero, zero, zero + zero * (theta - theta), 1, 1e-3, rec.traj.hp))
    kfac_factor_s = kfac_apply_s = 0.0
    if need_kfac:
        covered = kfac.blocks(flat)
        fac, kfac_factor_s = timed(lambda: kfac.factors(flat, theta, b[0], covered))
        kfac_apply_s = best(lambda: kfac.apply(fac, covered, zero))
        del fac
    return Units(str(theta.device), grad_s, batched_grad_s, hvp_s, batched_hvp_s, eval_s, copies, carry_step_s,
                 kfac_factor_s, kfac_apply_s)


def predict(rec: Record, K: int, estimators: Mapping[str, Any], units: Optional[Units] = None) -> Dict[str, Any]:
    """{"units", "retrain_batched_s", "retrain_one_at_a_time_s", "estimators": {name: seconds or None}}
    for K orders (None: the estimator states no cost model)."""
    from taylorlab.order import registry

    T = rec.T
    need_kfac = any(isinstance(o, Mapping) and o.get("curvature") == "kfac" for o in estimators.values())
    units = units or probe_units(rec, K, need_kfac=need_kfac)
    out = {}
    for name, options in estimators.items():
        est = registry.get(name)
        out[name] = None if est.cost is None else float(est.cost(units, K, T, est.make_options(options)))
    # retraining without its evaluations: the quantity the study measures beside this prediction
    return {"units": units.as_dict(), "retrain_batched_s": K * T * units.batched_grad_s,
            "retrain_one_at_a_time_s": K * T * units.grad_s, "estimators": out}


def advice(pred: Mapping[str, Any]) -> str:
    """One line per estimator: its predicted cost against batched retraining of the same orders."""
    base = pred["retrain_batched_s"]
    parts = [f"batched retraining {base:.3g} s"]
    for name, s in pred["estimators"].items():
        if s is None:
            parts.append(f"{name}: no cost model")
        else:
            parts.append(f"{name} {s:.3g} s ({s / base:.2g}x: {'cheaper' if s < base else 'dearer'})" if base else
                         f"{name} {s:.3g} s")
    return "; ".join(parts)
