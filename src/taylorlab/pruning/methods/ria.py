"""RIA — relative importance and activations (Zhang et al., ICLR 2024, "Plug-and-Play").

Score of weight (i, j) of an [out, in] matrix: its relative importance within its row and within
its column, weighted by the input channel's activation norm to the power ``a``:

    S_ij = (|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * ||X_j||_2 ** a

The lowest are pruned per output row (as Wanda; with N:M per group of M inputs), or with
``per_row=false`` across the whole matrix, as the authors' code does by default. The paper's
default ``a = 0.5``; the activation norm is the same as Wanda's (sqrt of the mean over calibration
sequences of the summed squared inputs). Choices where the paper leaves room: a zero row or column
sum counts as no importance from that side (no division by zero); the paper's channel permutation
for N:M is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taylorlab.errors import ConfigError
from taylorlab.pruning.registry import LayerTask, Method, register


@dataclass
class RIAOptions:
    a: float = 0.5  # exponent of the activation norm
    # unstructured: compare within each output row (as Wanda) or across the whole matrix (the
    # authors' code's default, its --per_outneuron off)
    per_row: bool = True

    def validate(self) -> None:
        if self.a < 0:
            raise ConfigError(f"a={self.a} must be 0 or more.")


def _safe(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, torch.ones_like(x))


def score(w: torch.Tensor, act_norm: torch.Tensor, a: float) -> torch.Tensor:
    wa = w.abs().float()
    relative = wa / _safe(wa.sum(dim=1, keepdim=True)) + wa / _safe(wa.sum(dim=0, keepdim=True))
    return relative * act_norm.float().reshape(1, -1).to(wa.device) ** a


def prune_layer(task: LayerTask) -> None:
    task.apply_scores(score(task.weight, task.stats.act_norm(), task.options.a), per_row=task.options.per_row)


METHOD = register(Method("ria", prune_layer, RIAOptions, rank=25,
                         summary="relative importance in row and column x activation norm ** a"))
