"""``fut-carry`` — this project's accuracy estimator: ``g(gamma_t, B_l) ~ g(theta_t, B_l) +
H(theta_t, B_l)(gamma_t - theta_t)`` with an exact Hessian-vector product (``curvature="hvp"``), the
paper's secant diagonal (``"secant"``, cost independent of K once K >> T), Kronecker factors per
linear weight (``"kfac"``, ``taylorlab.order.kfac``: one more pass per batch and step, then two small
products per layer and order, no network pass) or none (``"none"``, the cheap variant), and Adam's
m, v and step computed exactly from that gradient along the new order (moments carried, never
linearised). ``"hvp2"`` expands the gradient to second order, adding
``1/2 D^3 L(theta_t, B_l)[delta, delta]`` (the third derivative of the loss along the deviation,
exact, from a forward-over-forward-over-reverse pass): lower parameter error at larger deviations,
not always a better ranking (benchmarks/order_effects). Streams over t, advancing all K orders
together (memory K x 3d). Returns the reference run exactly for the reference order."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch.func import jvp, vmap

from taylorlab.errors import ConfigError
from taylorlab.order.estimators.fut import _secant
from taylorlab.order.functional import FlatModel, adam_step, grads_at
from taylorlab.order import kfac
from taylorlab.order.memory import plan_chunk, require_bytes
from taylorlab.order.recorded import Record
from taylorlab.order.registry import Estimate, Estimator, register

CURVATURES = ("hvp", "hvp2", "secant", "kfac", "none")
TABLED = ("secant", "kfac", "none")  # the curvatures that read the gradients from a table per step


@dataclass
class FutCarryOptions:
    curvature: str = "hvp"  # hvp | hvp2 | secant | kfac | none
    chunk: int = 0  # orders per vmapped pass on a GPU, at most (0: as many as its free memory holds)
    kfac_labels: str = "sampled"  # curvature=kfac: the Fisher (labels drawn from the model) | data (empirical)
    check_steps: int = 4  # self-check: steps at which the linearised gradient is compared with the exact one
    check_orders: int = 2  # ... for this many orders

    def validate(self) -> None:
        if self.curvature not in CURVATURES:
            raise ConfigError(f"curvature={self.curvature!r} is not one of {', '.join(CURVATURES)}.")
        if self.chunk < 0 or self.check_steps < 0 or self.check_orders < 0:
            raise ConfigError("chunk (0: planned from free memory), check_steps and check_orders must be 0 or more.")
        if self.kfac_labels not in kfac.LABELS:
            raise ConfigError(f"kfac_labels={self.kfac_labels!r} is not one of {', '.join(kfac.LABELS)}.")


def expanded_grad(flat: FlatModel, theta: torch.Tensor, batch: torch.Tensor, vec: torch.Tensor,
                  second: bool = False) -> torch.Tensor:
    """g(theta) + H(theta) vec (one forward-over-reverse pass), plus 1/2 D^3 L(theta)[vec, vec] with
    ``second`` (forward over forward over reverse): the gradient at theta + vec to first or second order."""
    def g_hvp(x):
        return jvp(lambda y: flat.grad(y, batch), (x,), (vec,))

    if not second:
        g, h = g_hvp(theta)
        return g + h
    (g, h), (_, third) = jvp(g_hvp, (theta,), (vec,))
    return g + h + 0.5 * third


def linearisation_residual(flat: FlatModel, theta: torch.Tensor, gamma: torch.Tensor, batch: torch.Tensor,
                           g_est: torch.Tensor, first_order: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """How much of the change of a batch's gradient between the reference state ``theta`` and an
    estimated state ``gamma`` the estimate ``g_est`` misses: ||g(gamma) - g_est|| / ||g(gamma) - g(theta)||
    (0: exact; 1: no better than ignoring the change, as the ``none`` curvature does) -- ``residual``;
    and the same for the exact first-order expansion g(theta) + H (gamma - theta) -- ``first_order``:
    ``g_est`` itself where it is that (``hvp``), else computed here, so that every curvature reports
    the quantity the warning threshold was calibrated on."""
    g_true = flat.grad(gamma, batch)
    if first_order is None:  # g(theta) and H (gamma - theta) from one forward-over-reverse pass
        g_ref, h = jvp(lambda y: flat.grad(y, batch), (theta,), (gamma - theta,))
        first_order = g_ref + h
    else:
        g_ref = flat.grad(theta, batch)
    den = torch.linalg.vector_norm(g_true - g_ref)

    def miss(g):
        return float(torch.linalg.vector_norm(g_true - g) / den) if den > 0 else float("nan")

    return {"residual": miss(g_est), "first_order": miss(first_order)}


def est_fut_carry(rec: Record, orders, opts: FutCarryOptions) -> Estimate:
    """``curvature``: ``hvp`` (exact; on a GPU each order's gradient and Hessian-vector product come
    from one vmapped forward-over-reverse pass), ``hvp2`` (the same plus the third-derivative term:
    1.4-2x the cost on the CPU; lower parameter error, but not always a better loss ranking — worse at
    T = 32 on the CPU benchmark model — so not the default), ``secant`` (the paper's diagonal from the gradients
    of the step's batches at the current and previous reference states: 2 gradients per distinct
    batch of a step, previous states' gradients reused, so for K >> T the cost is about T gradients
    per step whatever K) or ``none``.

    A self-check that needs no retraining: at ``check_steps`` steps spread over the run, for the first
    ``check_orders`` orders that have left the reference, the exact gradient at the estimated state is
    computed and compared with the linearised one (``linearisation_residual``; 2 gradients per check,
    one of them with its HVP for curvatures other than ``hvp``, inside the timed cost). Returned as
    ``linearisation``: per check and the medians of the estimator's own residual and of the exact
    first-order expansion's (``median_first_order``, what the stages' warning was calibrated on); a
    median near 1 says the expansion is out of its range and the ranking should not be trusted."""
    return _carry(rec, orders, opts, refresh=1)


def _carry(rec: Record, orders, opts: FutCarryOptions, refresh: int) -> Estimate:
    """``est_fut_carry`` with the secant / none gradient table refreshed every ``refresh`` steps (1: every
    step, fut-carry itself; more: ``fut-ckpt``, linearised at the last refreshed state in between)."""
    flat, traj, batches = rec.flat, rec.traj, rec.batches
    curvature, chunk, check_steps, check_orders = opts.curvature, opts.chunk, opts.check_steps, opts.check_orders
    K = len(orders)
    T = traj.T
    check_at = sorted({min(T - 1, max(1, round((j + 1) * T / (check_steps + 1)))) for j in range(check_steps)})
    checks = []
    theta0 = traj.theta0
    cuda = theta0.device.type == "cuda"
    # K streams of (gamma, m, v): one clear line where they cannot fit
    require_bytes(f"fut-carry's state for {K} orders", 3 * K * theta0.numel() * theta0.element_size(), theta0.device,
                  "ask for fewer orders at a time (estimate.num_orders) or use a larger GPU")
    gamma = theta0.expand(K, -1).clone()
    m, v = torch.zeros_like(gamma), torch.zeros_like(gamma)
    plan = None
    if cuda:
        expanded_many = vmap(lambda th, b, vec: expanded_grad(flat, th, b, vec, curvature == "hvp2"),
                             in_dims=(None, 0, 0))
        if curvature in ("hvp", "hvp2"):
            plan = plan_chunk("fut-carry's vmapped passes", K, theta0.device,
                              lambda: expanded_many(theta0, batches[:1], torch.zeros_like(theta0).unsqueeze(0)),
                              0, opts.chunk or None)
            chunk = plan.chunk
    if cuda and curvature in TABLED and not chunk:
        # batches per vmapped gradient-table pass, from free memory: a batch of 16k tokens holds
        # thirty-odd times the activations of one of 512
        chunk = plan_chunk("fut-carry's gradient-table passes", 16, theta0.device,
                           lambda: grads_at(flat, theta0, batches, [0], 1), 0).chunk
    # the CPU computes one order at a time anyway: chunks of 1 keep its temporaries at [d]
    chunk = chunk or (16 if cuda else 1)
    # orders per step of the loop below. hvp: the vmapped pass's own chunk. secant / kfac / none: the
    # gradient rows are gathered from the table, so a chunk of orders costs only its [chunk, d] temporaries
    # (delta, g, products) and a few orders at a time lose nothing but Python iterations; planned apart
    # from the table passes' chunk, which on a small batch can be many times larger
    order_chunk = chunk if curvature in ("hvp", "hvp2") else min(chunk, 4)
    covered = kfac.blocks(flat) if curvature == "kfac" else []
    if curvature in TABLED:
        # the tables: this segment's gradients and (secant) the diagonal, written over the previous
        # gradients in place, so two tables at most; the order chunk's delta, g and products beside them
        segments = {t: sorted({o[s] for o in orders for s in range(t, min(T, t + refresh))}) for t in range(0, T, refresh)}
        seg_max = max(len(seg) for seg in segments.values())
        tables = (2 if curvature == "secant" else 1) * seg_max + 4 * min(order_chunk, K)
        # kfac: each batch's Kronecker factors beside its gradient
        numel = tables * theta0.numel() + seg_max * kfac.factor_numel(covered)
        require_bytes(f"fut-carry's gradient tables ({seg_max} batches) beside its state", numel
                      * theta0.element_size(), theta0.device, "ask for fewer orders at a time (estimate.num_orders) "
                      "or, for fut-ckpt, fewer steps between its tables (every)")
    table, row, prev, prev_row, prev_theta, h = None, {}, None, {}, None, None
    anchor, theta_a = 0, None  # secant / none: the state the gradient table was taken at
    for t in range(traj.T):
        theta = traj.theta(t)
        ids = [o[t] for o in orders]
        need_moved = t in check_at or (not cuda and curvature in ("hvp", "hvp2"))
        if curvature in TABLED and t % refresh == 0:
            # each distinct batch of the next ``refresh`` steps: its gradient once, at this state
            anchor, theta_a = t, theta
            seg = segments[t]
            h = table = None  # the last segment's diagonal (and, for none, its table) go before the new one
            table, row = grads_at(flat, theta, batches, seg, chunk), {b: i for i, b in enumerate(seg)}
            if curvature == "kfac":  # each batch's factors at this state: one more pass per batch
                h = {b: kfac.factors(flat, theta, batches[b], covered, opts.kfac_labels, seed=t) for b in seg}
            if curvature == "secant" and t > 0:
                missing = [b for b in seg if b not in prev_row]
                extra = grads_at(flat, prev_theta, batches, missing, chunk) if missing else None
                extra_row = {b: i for i, b in enumerate(missing)}
                dtheta = theta - prev_theta
                h = {}
                for b in seg:  # each diagonal over its batch's previous gradient, in place
                    old = prev[prev_row[b]] if b in prev_row else extra[extra_row[b]]
                    h[b] = old.copy_(_secant(table[row[b]], old, dtheta))
                del extra, dtheta
            if curvature == "secant":
                prev, prev_row, prev_theta = table, row, theta
        unmoved, checked = {}, 0
        # K orders in chunks: the deviations and gradients ([chunk, d]) live one chunk at a time, so the
        # K streams cost 3 K d (gamma, m, v) and not 5 K d
        for lo in range(0, K, order_chunk):
            hi = min(K, lo + order_chunk)
            delta = gamma[lo:hi] - theta
            # one sync: only where the CPU path or a check needs it
            moved = (delta != 0).any(dim=1).tolist() if need_moved else None
            if curvature in ("hvp", "hvp2") and cuda:  # gradient and H delta (...) together, vmapped
                idx = torch.tensor(ids[lo:hi], device=batches.device)
                g = expanded_many(theta, batches[idx], delta)
            elif curvature in ("hvp", "hvp2"):  # CPU, one order at a time: g and H delta (...) from one pass
                # orders that have not left the reference yet: the reference gradient, once per batch
                for k in range(lo, hi):
                    if not moved[k - lo] and ids[k] not in unmoved:
                        unmoved[ids[k]] = flat.grad(theta, batches[ids[k]])
                g = torch.stack([expanded_grad(flat, theta, batches[ids[k]], delta[k - lo], curvature == "hvp2")
                                 if moved[k - lo] else unmoved[ids[k]] for k in range(lo, hi)])
            else:
                g = table[torch.tensor([row[b] for b in ids[lo:hi]], device=table.device)]
                if curvature == "secant" and anchor > 0:  # linearised at the table's state
                    g = g + torch.stack([h[b] for b in ids[lo:hi]]) * (delta if anchor == t else gamma[lo:hi] - theta_a)
                elif curvature == "kfac":
                    dev = delta if anchor == t else gamma[lo:hi] - theta_a
                    g = g + torch.stack([kfac.apply(h[b], covered, dev[i]) for i, b in enumerate(ids[lo:hi])])
            if t in check_at:
                for k in range(lo, hi):
                    if moved[k - lo] and checked < check_orders:
                        checked += 1
                        checks.append({"step": t, "order": k,
                                       **linearisation_residual(flat, theta, gamma[k], batches[ids[k]], g[k - lo],
                                                                g[k - lo] if curvature == "hvp" else None)})
            del delta
            # one order at a time: the functional step's temporaries (about ten) are then [d], not [K, d],
            # which is what ran a real model's K streams out of memory; the arithmetic is the same per
            # element, so the reference order still reproduces the reference run bit for bit
            for k in range(lo, hi):
                gamma[k], m[k], v[k] = adam_step(gamma[k], m[k], v[k], g[k - lo], t + 1, traj.lrs[t], traj.hp)
            del g
    return Estimate(params=gamma, linearisation={"checks": checks, "curvature": curvature,
                                                 "median_residual": _finite_median(c["residual"] for c in checks),
                                                 "median_first_order": _finite_median(c["first_order"] for c in checks)},
                    extra={"memory_plan": plan.as_dict() if plan else None})


def _finite_median(values) -> Optional[float]:
    finite = [x for x in values if not math.isnan(x)]
    return statistics.median(finite) if finite else None


def cost(u, K: int, T: int, o: FutCarryOptions) -> float:
    """hvp: a gradient and an HVP per order and step (vmapped on a GPU), hvp2 about twice that;
    secant / none: each distinct batch's gradient per step (secant: at the previous state too); kfac:
    its factors too, and every order's product with them; and
    every order's carried step, and the self-check's passes."""
    # each order's carried Adam step, and the self-check's exact gradient and first-order pass
    steps = K * T * u.carry_step_s + o.check_steps * o.check_orders * (
        u.grad_s + (0.0 if o.curvature == "hvp" else u.hvp_s))  # hvp: its estimate is the first-order pass
    if o.curvature in ("hvp", "hvp2"):
        return K * T * u.batched_hvp_s * (2 if o.curvature == "hvp2" else 1) + steps
    if o.curvature == "kfac":  # each distinct batch's gradient and factors per step, each order's product
        return T * min(K, T) * (u.batched_grad_s + u.kfac_factor_s) + K * T * u.kfac_apply_s + steps
    return T * min(K, T) * u.batched_grad_s * (2 if o.curvature == "secant" else 1) + steps


ESTIMATOR = register(Estimator("fut-carry", est_fut_carry, FutCarryOptions, self_check=True, per_order=True, rank=20, cost=cost,
                               summary="linearised gradients, Adam's moments and step exact along the order"))
