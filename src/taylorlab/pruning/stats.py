"""Statistics accumulated by forward hooks on a block's linear layers."""

from __future__ import annotations

import torch
from torch import nn


class InputStats:
    """Per-layer input statistics over calibration sequences.

    ``sq_sum[j] = sum over tokens of x_j^2`` (Wanda's activation norm, squared) and, when asked,
    ``hessian = (2 / N) sum over tokens of x x^T`` (SparseGPT; fp32), N = number of sequences.
    """

    def __init__(self, layer: nn.Linear, hessian: bool):
        cols = layer.in_features
        dev = layer.weight.device
        self.sq_sum = torch.zeros(cols, dtype=torch.float32, device=dev)
        self.hessian = torch.zeros(cols, cols, dtype=torch.float32, device=dev) if hessian else None
        self.nsamples = 0

    def add(self, x: torch.Tensor) -> None:
        b = x.shape[0] if x.dim() == 3 else 1
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


def attach(layers: dict, hessian: bool):
    stats = {name: InputStats(layer, hessian) for name, layer in layers.items()}
    handles = [
        layer.register_forward_hook(lambda mod, inp, out, s=stats[name]: s.add(inp[0].detach()))
        for name, layer in layers.items()
    ]
    return stats, handles
