"""RMSprop for Wanda++'s regional optimisation, with one fused update kernel per weight on CUDA.

The optimisation takes one optimiser step per calibration sequence (160 per block with the usual
5 rounds x 32), each over the block's full fp32 weights, so the update's memory traffic counts.
``torch.optim.RMSprop`` (foreach; it has no fused variant) runs the update as five elementwise
passes with a temporary (square average scaled, accumulated, its root, plus eps, the weight step);
the kernel here reads the weight, gradient and square average once and writes the weight and
average once. ``torch.compile`` would fuse the same, but its first compilation costs about what it
saves over a whole 7B model, and every fresh machine pays it again.

Without Triton (the CPU, or an image without it) ``rmsprop`` returns ``torch.optim.RMSprop`` itself.
Only plain RMSprop is needed: no momentum, not centred, no weight decay, torch's defaults for
``alpha`` and ``eps``."""

from __future__ import annotations

import logging
from typing import List, Optional

import torch

from taylorlab.pruning.triton_lazy import lazy_triton

log = logging.getLogger("taylorlab.pruning")


def _build(triton, tl):
    @triton.jit
    def rmsprop_kernel(p_ptr, g_ptr, s_ptr, n, lr, alpha, beta, eps, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        keep = offs < n
        g = tl.load(g_ptr + offs, mask=keep)
        # beta = 1 - alpha, taken in double precision as torch takes it (in fp32 it is off by 1e-6)
        s = tl.load(s_ptr + offs, mask=keep) * alpha + g * g * beta
        p = tl.load(p_ptr + offs, mask=keep)
        # round-to-nearest root and quotient, as torch's sqrt and addcdiv give
        p = p - lr * tl.div_rn(g, tl.sqrt_rn(s) + eps)
        tl.store(s_ptr + offs, s, mask=keep)
        tl.store(p_ptr + offs, p, mask=keep)

    return triton, rmsprop_kernel


# the Triton kernel, compiled on first use; None where Triton cannot be imported
_kernel = lazy_triton(_build)


class FusedRMSprop:
    """``torch.optim.RMSprop(weights, lr)``'s step and ``zero_grad`` for contiguous fp32 CUDA tensors,
    one kernel launch per tensor."""

    BLOCK = 4096

    def __init__(self, weights: List[torch.Tensor], lr: float, alpha: float = 0.99, eps: float = 1e-8):
        self.weights, self.lr, self.alpha, self.eps = list(weights), float(lr), float(alpha), float(eps)
        self.square = [torch.zeros_like(w) for w in self.weights]
        self.triton, self.fn = _kernel()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for w in self.weights:
            w.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for w, s in zip(self.weights, self.square):
            if w.grad is None:
                continue
            g = w.grad if w.grad.is_contiguous() else w.grad.contiguous()
            n = w.numel()
            self.fn[(self.triton.cdiv(n, self.BLOCK),)](w, g, s, n, self.lr, self.alpha, 1.0 - self.alpha, self.eps,
                                                       BLOCK=self.BLOCK)


def fused_available(weights: List[torch.Tensor]) -> bool:
    """Whether ``FusedRMSprop`` can run these tensors: all fp32, contiguous, on CUDA, with Triton."""
    return (all(w.is_cuda and w.dtype == torch.float32 and w.is_contiguous() for w in weights)
            and _kernel() is not None)


def rmsprop(weights: List[torch.Tensor], lr: float, fused: Optional[bool] = None):
    """RMSprop over ``weights``: the fused kernel where it can run (``fused=None``: whenever it can;
    ``True`` insists, ``False`` never), else ``torch.optim.RMSprop``."""
    weights = list(weights)
    can = fused_available(weights)
    if fused and not can:
        raise RuntimeError("the fused RMSprop needs contiguous fp32 CUDA tensors and Triton")
    if can and fused is not False:
        try:  # compiled and checked here, on a probe, rather than failing at the first real step
            _check(weights[0].device)
            return FusedRMSprop(weights, lr)
        except Exception as exc:  # a Triton that cannot build the kernel: the eager optimiser is exact
            if fused:
                raise
            if not getattr(exc, "warned", False):
                log.warning("fused RMSprop unavailable (%s: %s); using torch.optim.RMSprop", type(exc).__name__, exc)
                exc.warned = True
    return torch.optim.RMSprop(weights, lr=lr)


_CHECKED = {}  # device -> None (the kernel agrees with torch) or why it does not


def _check(device: torch.device) -> None:
    """Two steps of the kernel against ``torch.optim.RMSprop`` on a probe tensor, once per device
    (a failure is remembered too: the warning comes once, not once per block)."""
    if device not in _CHECKED:
        try:
            _compare(device)
            _CHECKED[device] = None
        except Exception as exc:
            _CHECKED[device] = exc
    if _CHECKED[device] is not None:
        raise _CHECKED[device]


def _compare(device: torch.device) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(4096, device=device, generator=gen)
    b = a.clone()
    ours, theirs = FusedRMSprop([a], 1e-3), torch.optim.RMSprop([b], lr=1e-3)
    for _ in range(2):
        g = torch.randn(4096, device=device, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    # a step moves a weight by about lr (RMSprop normalises the gradient): rounding may differ by a
    # few ulps of the weight (fused multiply-adds) and by 1e-5 of a step
    if not torch.allclose(a, b, rtol=1e-6, atol=1e-5 * 1e-3):
        raise RuntimeError(f"the kernel's update differs from torch's by {float((a - b).abs().max()):.3g}")
