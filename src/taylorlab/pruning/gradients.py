"""Exact per-sequence gradient norms of every block linear of the dense model (GBLM's G).

The reference code runs one backward pass per sequence and copies each gradient to the CPU to add
it there (31.6 s per sequence on a 7B model). Here several sequences go through one forward and
backward pass, and each sequence's weight gradient of a linear layer is formed from the layer's
saved input and output gradient (``G_n = dY_n^T X_n``) inside a tensor hook, squared (l2) or made
absolute (l1) and added to an fp32 accumulator on the compute device (on CUDA in half precision by one
Triton kernel that never stores ``G_n``: ``taylorlab.pruning.sqsum``). No parameter ``.grad`` is
allocated. The loss of a batch is the sum of the per-sequence mean next-token cross-entropies, so
each ``G_n`` is exactly the gradient of sequence n's own loss.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from taylorlab.pruning.kernels import fused_kernels
from taylorlab.pruning.sqsum import add_square_sum
from taylorlab.pruning.stats import fp32_out_on_tensor_cores
from taylorlab.pruning.structure import block_linears, run_block, weight_matrix


def per_sequence_weight_grads(gy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``G_n = dY_n^T X_n`` for every sequence n: [B, out, in]. On CUDA, half-precision operands give
    an fp32 result straight from the tensor cores (no rounding of G_n to half precision, no copy);
    elsewhere the product is in the operands' dtype."""
    if fp32_out_on_tensor_cores(gy):
        return torch.bmm(gy.transpose(1, 2), x, torch.float32)
    return torch.bmm(gy.transpose(1, 2), x)


def _per_sequence_hook(acc: torch.Tensor, batch, norm: str, fused_sum: bool = True):
    """A forward hook that adds, once the backward pass reaches the layer's output, each sequence's
    weight gradient ``G_n = dY_n^T X_n`` squared (l2) or absolute (l1) to ``acc``; ``batch[0]`` is how
    many sequences the pass holds (some models, e.g. OPT, flatten [B, T, d] to [B*T, d])."""
    def hook(mod, inp, out):
        x = inp[0].detach()

        def grad_hook(gy, x=x):
            b = batch[0]
            xs, gs = x.reshape(b, -1, x.shape[-1]), gy.reshape(b, -1, gy.shape[-1])
            if xs.dtype != gs.dtype:  # under autocast the layer multiplied its input cast to the output's dtype
                xs = xs.to(gs.dtype)
            if fused_sum and add_square_sum(acc, gs, xs, norm):  # the fused kernel: no G_n in memory
                return
            g = per_sequence_weight_grads(gs, xs)
            # one read of g: sum_n g_n^2 (l2) or sum_n |g_n| (l1), in fp32
            acc.add_(torch.linalg.vector_norm(g, ord=2 if norm == "l2" else 1, dim=0,
                                              dtype=torch.promote_types(g.dtype, torch.float32))
                     .pow_(2 if norm == "l2" else 1))

        if out.requires_grad:
            out.register_hook(grad_hook)

    return hook


def per_sequence_gradient_stats(model, windows: torch.Tensor, *, batch_size: int = 4, norm: str = "l2",
                                device: torch.device = torch.device("cpu"), progress: bool = False,
                                kernels: str = "eager", fused_sum: bool = True) -> Dict[str, torch.Tensor]:
    """{qualified linear name: sum_n g_n^2 (l2) or sum_n |g_n| (l1)} in fp32, on ``device``.
    ``kernels``: ``eager`` (the model's own modules) or ``liger`` (``taylorlab.pruning.kernels``).
    ``fused_sum``: on CUDA in half precision, square and sum each layer's per-sequence gradients in one
    Triton kernel (``taylorlab.pruning.sqsum``) instead of a batched GEMM and a reduction."""
    from tqdm.auto import tqdm

    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be l1 or l2, not {norm}")
    linears = block_linears(model)
    # [out, in] for every layer (Conv1D stores its weight transposed)
    acc = {name: torch.zeros(weight_matrix(m).shape, dtype=torch.float32, device=device) for name, m in linears.items()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)

    batch = [0]  # sequences in the current pass (some models, e.g. OPT, flatten [B, T, d] to [B*T, d])

    def forward_hook(name):
        return _per_sequence_hook(acc[name], batch, norm, fused_sum)

    handles = [m.register_forward_hook(forward_hook(n)) for n, m in linears.items()]
    was_training = model.training
    model.eval()
    embed = model.get_input_embeddings()
    try:
        with fused_kernels(model, kernels, device, key="calibrate.kernels"):
            for i in tqdm(range(0, windows.shape[0], batch_size), desc="gradients", disable=not progress, leave=False):
                ids = windows[i : i + batch_size].to(device)
                batch[0] = ids.shape[0]
                emb = embed(ids).detach().requires_grad_(True)
                logits = model(inputs_embeds=emb, use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
                ).view(ids.shape[0], -1).mean(1).sum()
                loss.backward()
                del logits, loss, emb
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(requires[n])
        model.train(was_training)
    return acc


def regional_gradient_stats(block: torch.nn.Module, linears: Dict[str, torch.nn.Module], hidden, calls,
                            outputs: Optional[list] = None) -> Dict[str, torch.Tensor]:
    """{layer name: sum_n g_n^2} (fp32) with g_n the gradient of ||block(x_n)||_2 (sequence n's own
    block output, l2 norm over its tokens and features, not squared: the gradient's scale does not
    grow with the output's) with respect to the layer's weight: Wanda++'s regional gradient. Per-sequence gradients come from each layer's saved input and output
    gradient inside a tensor hook (as in ``per_sequence_gradient_stats``); one backward per block call,
    no parameter ``.grad`` allocated. ``outputs``, when given, gets each call's block output (detached):
    the forward pass the gradients need is the block's own output, which a caller may want too."""
    acc = {name: torch.zeros(weight_matrix(m).shape, dtype=torch.float32, device=weight_matrix(m).device)
           for name, m in linears.items()}
    batch = [0]

    def forward_hook(name):
        return _per_sequence_hook(acc[name], batch, "l2")

    handles = [m.register_forward_hook(forward_hook(n)) for n, m in linears.items()]
    requires = {p: p.requires_grad for p in block.parameters()}
    for p in requires:  # gradients flow from the input; no parameter .grad is allocated
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for x, call in zip(hidden, calls):
                batch[0] = x.shape[0]
                inp = x.detach().requires_grad_(True)  # the graph starts at the block's input
                out = run_block(block, inp, call)
                # the sum of per-sequence norms: each sequence's gradient is that of its own norm
                out.float().flatten(1).norm(dim=1).sum().backward()
                if outputs is not None:
                    outputs.append(out.detach())
    finally:
        for h in handles:
            h.remove()
        for p, flag in requires.items():
            p.requires_grad_(flag)
    return acc
