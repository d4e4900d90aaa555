"""Kronecker-factored curvature (K-FAC) of one batch's loss at one state, for the estimators that
linearise each order's gradient around a shared state (``fut-carry`` / ``fut-ckpt`` with
``curvature=kfac``): per linear layer y = W x, H ≈ A ⊗ G with A the inputs' second moment and G the
output gradients' (the Fisher's Kronecker factors, Martens & Grosse 2015), so that
H vec(ΔW) = vec(G ΔW A). Applied to an order's deviation it costs two small matrix products per
layer and no network pass; building it costs one pass per batch and state.

Covered: the ``nn.Linear`` weights that are parameters of their own (a weight tied to another
module's, such as an LM head tied to the embeddings, is left to that module) whose two factors hold
at most ``MAX_FACTOR_RATIO`` times the weight's numbers (an LM head's output factor is vocabulary²:
8192² for a 64-wide head is 128 times its weight). Every other parameter (embeddings, norms, biases)
gets no curvature, as with ``curvature=none``. So the factors of one batch hold at most 4d numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch

from taylorlab.order.functional import FlatModel

MAX_FACTOR_RATIO = 4
LABELS = ("sampled", "data")


@dataclass(frozen=True)
class Block:
    """One covered linear weight: its slice of the flat vector and its [out, in] shape."""

    name: str
    offset: int
    out: int
    inp: int


def blocks(flat: FlatModel) -> List[Block]:
    """The linear weights K-FAC covers, in the flat vector's order."""
    offsets = dict(zip(flat.names, flat.offsets))
    out = []
    for mod_name, mod in flat.model.named_modules():
        name = f"{mod_name}.weight" if mod_name else "weight"
        if (isinstance(mod, torch.nn.Linear) and name in offsets
                and mod.in_features ** 2 + mod.out_features ** 2 <= MAX_FACTOR_RATIO * mod.weight.numel()):
            out.append(Block(name, offsets[name], mod.out_features, mod.in_features))
    return sorted(out, key=lambda b: b.offset)


def factors(flat: FlatModel, theta: torch.Tensor, batch: torch.Tensor, covered: List[Block],
            labels: str = "sampled", seed: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """(A, G) per covered block at ``theta`` on ``batch``: A = mean of x xᵀ over the batch's positions,
    G = N · Σ g gᵀ with g = ∂L/∂y (L the batch's mean loss over N positions, micro-batched as
    ``flat.loss``). ``labels="data"``: L is the batch's own loss, so A ⊗ G is the empirical Fisher;
    ``"sampled"``: each position's next token drawn from the model's own prediction (seeded), so that
    A ⊗ G is the Fisher, whose expectation for the cross-entropy is the Gauss-Newton matrix."""
    if labels not in LABELS:
        raise ValueError(f"labels={labels!r} is not one of {', '.join(LABELS)}")
    by_name = {b.name: k for k, b in enumerate(covered)}
    dt, dev = theta.dtype, theta.device
    A = [torch.zeros(b.inp, b.inp, dtype=dt, device=dev) for b in covered]
    G = [torch.zeros(b.out, b.out, dtype=dt, device=dev) for b in covered]
    rows = [0]
    hooks = []

    def attach(k):
        def backward(g):
            g = g.reshape(-1, g.shape[-1]).to(dt)
            G[k].addmm_(g.T, g)

        def forward(_mod, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(dt)
            A[k].addmm_(x.T, x)
            if k == 0:  # positions counted once per pass (every micro-batch's)
                rows[0] += x.shape[0]
            if output.requires_grad:
                output.register_hook(backward)
        return forward

    for mod_name, mod in flat.model.named_modules():
        k = by_name.get(f"{mod_name}.weight")
        if k is not None:
            hooks.append(mod.register_forward_hook(attach(k)))
    try:
        x = theta.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            if labels == "data":
                loss = flat.loss(x, batch)
            else:
                gen = torch.Generator(device=dev).manual_seed(seed)
                parts = flat.unflatten(x)
                loss = flat._accumulate(lambda b: _sampled_loss(flat, parts, b, gen), batch)
            torch.autograd.grad(loss, x)
    finally:
        for h in hooks:
            h.remove()
    n = max(1, rows[0])
    return [(a / n, g * n) for a, g in zip(A, G)]


def _sampled_loss(flat: FlatModel, parts, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The mean cross-entropy of the batch's predictions against next tokens drawn from them."""
    z = flat.predictions(parts, batch)
    y = torch.multinomial(torch.softmax(z.detach(), -1), 1, generator=gen).squeeze(-1)
    return torch.nn.functional.cross_entropy(z, y)


def factor_numel(covered: List[Block]) -> int:
    return sum(b.inp * b.inp + b.out * b.out for b in covered)


def apply(fac: List[Tuple[torch.Tensor, torch.Tensor]], covered: List[Block], vec: torch.Tensor) -> torch.Tensor:
    """The K-FAC curvature times ``vec`` ([d]): G ΔW A on each covered block, zero elsewhere."""
    out = torch.zeros_like(vec)
    for (a, g), b in zip(fac, covered):
        w = vec[b.offset:b.offset + b.out * b.inp].view(b.out, b.inp)
        out[b.offset:b.offset + b.out * b.inp] = (g @ w @ a).reshape(-1)
    return out
