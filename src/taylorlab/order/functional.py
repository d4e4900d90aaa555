"""A model as a function of one flat parameter vector, and an exact functional AdamW step.

The reference run, the estimators and retraining all use these same functions, so the reference
order is reproduced bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch.func import functional_call, grad, jvp, vmap


@dataclass(frozen=True)
class AdamHP:
    betas: Tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: Optional[float] = None


def sqrt0(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not infinite) derivative at 0, so the adjoint through Adam's step stays finite
    where a coordinate has had no gradient yet; the value is exactly torch.sqrt's."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def adam_step(theta, m, v, g, step: int, lr: float, hp: AdamHP):
    """One AdamW step (decoupled weight decay, bias correction; ``step`` counts from 1).
    Gradient clipping by global norm, when set, is part of the step. Works on [d] or [K, d]."""
    if hp.grad_clip:
        norm = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
        g = g * torch.clamp(hp.grad_clip / (norm + 1e-6), max=1.0)
    b1, b2 = hp.betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mhat = m / (1 - b1 ** step)
    vhat = v / (1 - b2 ** step)
    theta = theta * (1 - lr * hp.weight_decay) - lr * mhat / (sqrt0(vhat) + hp.eps)
    return theta, m, v


@torch.no_grad()
def adam_step_(theta, m, v, g, step: int, lr: float, hp: AdamHP) -> None:
    """``adam_step`` in place, for retraining many copies at once ([K, d]): no [K, d] temporaries (the
    functional step makes about ten; with K copies of a 30M model that is tens of GiB and most of a
    step's memory traffic); ``g`` is overwritten. The same arithmetic up to rounding (not bitwise:
    the fused ops round differently), not differentiable."""
    if hp.grad_clip:
        norm = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
        g.mul_(torch.clamp(hp.grad_clip / (norm + 1e-6), max=1.0))
    b1, b2 = hp.betas
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = torch.div(v, 1 - b2 ** step, out=g).sqrt_().add_(hp.eps)
    if hp.weight_decay:
        theta.mul_(1 - lr * hp.weight_decay)
    theta.addcdiv_(m, denom, value=-lr / (1 - b1 ** step))


class FlatModel:
    """``loss(theta, batch)`` of a Hugging Face causal LM at flat parameters ``theta``."""

    def __init__(self, model: torch.nn.Module, micro_batch: int = 0):
        if hasattr(model, "set_attn_implementation"):
            try:
                model.set_attn_implementation("eager")  # forward-mode AD (HVPs) through plain ops
            except Exception:
                pass
        self.model = model.eval()
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.offsets = [sum(self.numels[:i]) for i in range(len(self.numels))]  # each tensor's start in theta
        self.buffers: Dict[str, torch.Tensor] = dict(model.named_buffers())
        self.dim = sum(self.numels)
        self._compiled_vgrad = None  # batched_grad(compile=True), built on first use
        # sequences per pass (0: the whole batch): the loss and gradient of a batch as the mean over its
        # micro-batches, each weighted by its share of the sequences (all have the same length), so a
        # batch whose activations (and, for an HVP, their tangents) do not fit one pass still runs
        self.micro_batch = int(micro_batch)

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]).clone()

    def unflatten(self, theta: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {name: theta[i : i + n].view(shape)
                for name, shape, n, i in zip(self.names, self.shapes, self.numels, self.offsets)}

    def load(self, theta: torch.Tensor) -> torch.nn.Module:
        with torch.no_grad():
            for p, t in zip(self.model.parameters(), self.unflatten(theta).values()):
                p.copy_(t)
        return self.model

    def _accumulate(self, fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        """``fn(batch)`` as the mean of ``fn`` over micro-batches weighted by their share of the
        sequences, one micro-batch's graph at a time; the batch in one pass (bitwise ``fn(batch)``)
        where ``micro_batch`` is 0 or not smaller."""
        n, m = batch.shape[0], self.micro_batch
        if not m or m >= n:
            return fn(batch)
        total = None
        for i in range(0, n, m):
            x = fn(batch[i:i + m]) * (min(m, n - i) / n)
            total = x if total is None else total + x
        return total

    def loss(self, theta: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        parts = self.unflatten(theta)
        return self._accumulate(lambda b: self._loss(parts, b), batch)

    def predictions(self, parts: Dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        """The logits of every predicted position, [B (L - 1), V]: those the loss scores against the
        next token (``kfac``'s Fisher scores them against tokens drawn from them instead)."""
        params = {**parts, **self.buffers}
        logits = functional_call(self.model, params, (), {"input_ids": batch, "use_cache": False}).logits
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half -> float32; float64 stays
        return logits[:, :-1].reshape(-1, logits.shape[-1])

    def _loss(self, parts: Dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.predictions(parts, batch), batch[:, 1:].reshape(-1))

    def grad(self, theta: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """The gradient at flat ``theta``, taken per parameter tensor and concatenated once: taken
        through the flat vector, every parameter's slice would scatter into its own zero-filled
        d-vector before they are summed (P full-size writes per gradient, K x P under vmap) — the same
        values, several times the cost."""
        parts = self.unflatten(theta)

        def one(b):
            g = grad(self._loss)(parts, b)
            return torch.cat([g[n].reshape(-1) for n in self.names])

        return self._accumulate(one, batch)

    def batched_grad(self, compile: bool = False):
        """``vmap(grad)``: [K, d] parameters and [K, ...] batches -> [K, d] gradients; with ``compile``
        through torch.compile, built once per FlatModel and kept."""
        if not compile:
            return vmap(self.grad)
        if self._compiled_vgrad is None:
            self._compiled_vgrad = torch.compile(vmap(self.grad))
        return self._compiled_vgrad

    def hvp(self, theta: torch.Tensor, batch: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """H(theta, batch) @ vec, exact (forward-over-reverse)."""
        return jvp(lambda th: self.grad(th, batch), (theta,), (vec,))[1]

    @torch.no_grad()
    def eval_loss(self, theta: torch.Tensor, batches: torch.Tensor) -> float:
        return float(sum(self.loss(theta, b) for b in batches) / len(batches))


def ppl(loss: float) -> float:
    """exp(loss), inf for a diverged estimate (no OverflowError)."""
    return math.exp(loss) if loss < 700 else float("inf")
def grads_at(flat: FlatModel, theta: torch.Tensor, batches: torch.Tensor, ids, chunk: int = 16) -> torch.Tensor:
    """Gradients at one theta for several batches [n, d]: vmapped in chunks on a GPU (many small
    kernels become few), one at a time on the CPU (bitwise the reference run's own gradients)."""
    ids = list(ids)
    # filled in place: a concatenation of the chunks would hold the table twice for a moment
    out = torch.empty(len(ids), theta.numel(), dtype=theta.dtype, device=theta.device)
    if theta.device.type != "cuda":
        for i, b in enumerate(ids):
            out[i] = flat.grad(theta, batches[b])
        return out
    g = vmap(flat.grad, in_dims=(None, 0))
    for i in range(0, len(ids), chunk):
        out[i:i + chunk] = g(theta, batches[ids[i:i + chunk]])
    return out


