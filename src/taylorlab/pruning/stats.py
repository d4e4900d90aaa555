"""Statistics accumulated by forward hooks on a block's prunable layers."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from taylorlab.pruning.structure import in_features


class InputStats:
    """Per-layer input statistics over calibration sequences.

    ``sq_sum[j] = sum over tokens of x_j^2`` (Wanda's activation norm, squared) and, when asked,
    ``hessian = (2 / N) sum over tokens of x x^T`` (SparseGPT; fp32), N = number of sequences.
    """

    def __init__(self, layer: nn.Module, hessian: bool):
        cols = in_features(layer)
        dev = layer.weight.device
        self.sq_sum = torch.zeros(cols, dtype=torch.float32, device=dev)
        self.hessian = torch.zeros(cols, cols, dtype=torch.float32, device=dev) if hessian else None
        self.nsamples = 0
        self.regional = None  # set by walk_blocks(regional=True): sum_n (d ||block_n(x)||_2 / dW)^2

    def add(self, x: torch.Tensor, sequences: Optional[int] = None) -> None:
        """Add one call's input. ``sequences`` is how many calibration sequences the call holds; it
        is needed where a model flattens [batch, tokens, d] to [batch * tokens, d] before a layer
        (OPT's fc1/fc2), where the tensor's shape no longer says it."""
        b = sequences if sequences is not None else (x.shape[0] if x.dim() == 3 else 1)
        x = x.reshape(-1, x.shape[-1]).float()
        self.sq_sum += (x * x).sum(0)
        if self.hessian is not None:
            # running mean as in the reference: H <- H * n/(n+b) + 2/(n+b) * X^T X
            self.hessian *= self.nsamples / (self.nsamples + b)
            self.hessian.addmm_(x.t(), x, alpha=2.0 / (self.nsamples + b))
        self.nsamples += b

    def act_norm(self) -> torch.Tensor:
        """sqrt(sum_tokens x^2 / N): the reference Wanda/GBLM activation term."""
        return torch.sqrt(self.sq_sum / max(self.nsamples, 1))


def attach(layers: dict, hessian: bool, sequences: Optional[Callable[[], int]] = None):
    """Hooks that feed every layer's input to its ``InputStats``; ``sequences()`` tells how many
    sequences the current call holds (the caller knows; the tensor may not)."""
    stats = {name: InputStats(layer, hessian) for name, layer in layers.items()}

    def hook(s):
        return lambda mod, inp, out: s.add(inp[0].detach(), sequences() if sequences else None)

    handles = [layer.register_forward_hook(hook(stats[name])) for name, layer in layers.items()]
    return stats, handles
