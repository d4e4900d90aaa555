"""Wanda++ (arXiv 2503.04992): Wanda's score with *regional* gradients — the gradient of each
decoder block's own output, not the whole model's loss:

    S_ij = (alpha * G_ij + ||X_j||_2) * |W_ij|,   G_ij = sqrt(mean_n g_{n,ij}^2),

g_n the gradient of ||block(x_n)||_2 (calibration sequence n's block output, its l2 norm) with
respect to W, taken on the partly pruned model's block inputs as the walk reaches each block (one
block-local backward per block call; no full-model backward). Pruned per output row (per N:M group).

Regional optimisation (``ro_iters`` > 0; off by default): before the block's final scores, ``ro_iters``
rounds of (1) pruning the block with the score above — activation norms from ``ro_samples`` randomly
chosen calibration sequences, regional gradients of the block as it was when the walk reached it —
and (2) one RMSprop step per chosen sequence on the summed squared error between the block's output
and the dense block's output for that sequence, on the prunable weights only, with fp32 weights and
optimiser state whatever the model's dtype (bf16 cannot hold steps of this size). The final scores
are then taken on the refined block, as without it, and prune it. ``ro_lr`` = 3e-7, 5 rounds and 32
sequences are the community reproduction's defaults. ``ro_precision`` says how the optimisation's
matrix products run: ``float32`` (the default, exact), ``tf32`` (fp32 with TF32 tensor-core products
on CUDA) or ``bfloat16`` (autocast: bf16 products, fp32 master weights, loss and optimiser state, as
mixed-precision training does); a dense 7B block's 160 forward-backward passes in plain fp32 are most
of the method's time on a GPU. The dense targets are the outputs of the regional gradients' own
forward pass (the block before any change), kept in fp32 for every sequence: no dense copy of the
block and no target pass. A round's activation norms need no per-sequence order, so they run over
the drawn sequences gathered into batches (no larger than the walk's own); only the RMSprop steps go
one sequence at a time. On CUDA with Triton, RMSprop's update is one fused kernel per weight
(``ro_fused``; ``pruning/optim.py`` says why), checked against ``torch.optim.RMSprop`` on first use.

Choices where the paper is silent (its code is not public): as in the community reproduction
(TTTTTTris/wandaplus), the regional loss is the l2 norm of the block output per sequence (not its
square, whose gradient grows with the output and swamps the activation term), G is the root mean
square over sequences (independent of their number), ``alpha`` defaults to 100, the paper's value,
and the optimisation follows the reproduction's loop (prune, then step, per round). The sequences of
each round are drawn by a generator seeded with ``ro_seed`` and the block's index (reproducible).
Published (LLaMA-1-7B, WikiText-2, dense 5.68): 50% 7.02 (Wanda 7.26, GBLM 7.15), 2:4 9.43 (11.53,
11.33).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from taylorlab.errors import ConfigError
from taylorlab.pruning.gradients import regional_gradient_stats
from taylorlab.pruning.masks import make_mask
from taylorlab.pruning.optim import rmsprop
from taylorlab.pruning.registry import BlockTask, LayerTask, Method, register
from taylorlab.pruning.stats import attach
from taylorlab.pruning.structure import map_call, run_block, slice_call, take_call, weight_matrix


@dataclass
class WandaPPOptions:
    alpha: float = 100.0  # weight of the regional gradient term
    ro_iters: int = 0  # rounds of regional optimisation (0: off; the reproduction uses 5)
    ro_samples: int = 32  # calibration sequences per round
    ro_lr: float = 3e-7  # RMSprop's learning rate
    ro_seed: int = 0  # which sequences each round draws (with the block's index)
    ro_precision: str = "float32"  # the optimisation's products: float32, tf32 or bfloat16 (autocast)
    ro_fused: bool = True  # RMSprop's update as one Triton kernel per weight (CUDA; else torch's RMSprop)

    def validate(self) -> None:
        if self.alpha < 0:
            raise ConfigError(f"alpha={self.alpha} must be 0 or more.")
        if self.ro_iters < 0 or self.ro_samples < 1:
            raise ConfigError(f"ro_iters={self.ro_iters} must be 0 or more and ro_samples={self.ro_samples} at least 1.")
        if self.ro_lr <= 0:
            raise ConfigError(f"ro_lr={self.ro_lr} must be positive.")
        if self.ro_precision not in PRECISIONS:
            raise ConfigError(f"ro_precision={self.ro_precision!r} must be one of {', '.join(PRECISIONS)}.")


PRECISIONS = ("float32", "tf32", "bfloat16")


@contextlib.contextmanager
def precision(kind: str, device: torch.device):
    """Where the regional optimisation's matrix products run (see the module's docstring)."""
    if kind == "bfloat16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def phase(name: str):
    """A named range of the optimisation for torch.profiler (benchmarks/pruning/block_profile.py --ro
    reads them); free when no profiler runs."""
    return torch.profiler.record_function(f"wanda++ ro: {name}")


def score(w: torch.Tensor, act_norm: torch.Tensor, regional_rms: torch.Tensor, alpha: float) -> torch.Tensor:
    return (alpha * regional_rms.float() + act_norm.float().reshape(1, -1)) * w.abs().float()


def prune_layer(task: LayerTask) -> None:
    s = task.stats
    rms = torch.sqrt(s.regional / max(s.nsamples, 1))
    task.apply_scores(score(task.weight, s.act_norm(), rms.to(task.weight.device), task.options.alpha))


def regional_optimisation(task: BlockTask) -> None:
    """The rounds of pruning and RMSprop steps described in the module's docstring, in place."""
    o = task.options
    if o.ro_iters == 0:
        return
    block, linears = task.block, task.linears
    dtype = next(block.parameters()).dtype
    work = torch.promote_types(dtype, torch.float32)

    def cast(t):
        return t.to(work) if t.is_floating_point() else t

    hidden = [x.to(work) for x in task.hidden]
    calls = [map_call(c, cast) for c in task.calls]
    where = [(k, j) for k, x in enumerate(hidden) for j in range(x.shape[0])]  # sequence -> (batch, row)
    seqs = [(hidden[k][j:j + 1], slice_call(calls[k], j, j + 1, hidden[k].shape[0])) for k, j in where]
    block.to(work)
    requires = {p: p.requires_grad for p in block.parameters()}
    device = hidden[0].device

    def batches(picked):
        """The picked sequences as gathered batches, one per calibration batch they come from (no
        larger than the batches the walk already runs): (their indices, hidden, call)."""
        by = {}
        for i in picked:
            by.setdefault(where[i][0], []).append(i)
        for k, ids in sorted(by.items()):
            rows = [where[i][1] for i in ids]
            yield ids, hidden[k][rows], take_call(calls[k], rows, hidden[k].shape[0])

    try:
        n = sum(x.shape[0] for x in hidden)
        dense = []  # the block's output per calibration batch before any change: the targets
        with torch.enable_grad(), precision(o.ro_precision, device), phase("regional gradients"):
            rms = {k: torch.sqrt(g / n)
                   for k, g in regional_gradient_stats(block, linears, hidden, calls, outputs=dense).items()}
        # the regional gradients' forward pass is the dense block's: its outputs are every sequence's
        # target, so no dense copy of the block is kept and no target pass runs
        targets = [dense[k][j:j + 1].to(work) for k, j in where]
        del dense
        for p in block.parameters():
            p.requires_grad_(False)
        weights = [lin.weight for lin in linears.values()]
        for w in weights:
            w.requires_grad_(True)
        opt = rmsprop(weights, o.ro_lr, fused=None if o.ro_fused else False)
        gen = torch.Generator().manual_seed(o.ro_seed * 100_003 + task.index)
        for _ in range(o.ro_iters):
            pick = torch.randperm(len(seqs), generator=gen)[: o.ro_samples].tolist()
            with torch.no_grad(), precision(o.ro_precision, device):
                rows = [0]
                stats, handles = attach(linears, hessian=False, sequences=lambda: rows[0])
                try:
                    with phase("activation norms"):
                        for ids, x, call in batches(pick):
                            rows[0] = len(ids)
                            run_block(block, x, call)
                finally:
                    for h in handles:
                        h.remove()
            with torch.no_grad(), phase("masks"):
                for name, lin in linears.items():
                    w = weight_matrix(lin)
                    w.masked_fill_(make_mask(score(w, stats[name].act_norm(), rms[name], o.alpha), task.sparsity,
                                             task.nm, per_row=True), 0)
            with torch.enable_grad(), phase("rmsprop steps"):
                for i in pick:
                    opt.zero_grad(set_to_none=True)
                    with precision(o.ro_precision, device):
                        out = run_block(block, *seqs[i])
                    loss = torch.nn.functional.mse_loss(out.to(work), targets[i], reduction="sum")
                    loss.backward()
                    opt.step()
    finally:
        for p, flag in requires.items():
            p.grad = None
            p.requires_grad_(flag)
        block.to(dtype)


METHOD = register(Method("wanda++", prune_layer, WandaPPOptions, needs_regional_gradients=True, rank=35,
                         refine_block=regional_optimisation,
                         summary="(alpha x regional gradient + activation norm) x |W|, block-local backward"))
