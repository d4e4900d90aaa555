"""Layerwise sparsity profiles: how a target sparsity is spread over the decoder blocks.

``uniform``: every block at the target. ``owl`` — Outlier Weighed Layerwise sparsity (Yin et al.,
ICML 2024): a block's outlier ratio D_l is the share of its Wanda scores |W_ij| * ||X_j|| (over all
its prunable layers, activations of the dense model on the calibration windows) above ``m`` times
their mean; the ratios are mapped linearly onto [0, 2 * lambda] and block l gets the sparsity
``target - (r_l - mean(r))``: blocks with more outliers keep more weights, the mean stays the
target, and the block sparsities span 2 * lambda. The paper's defaults: m = 5, lambda = 0.08
(LLaMA at 70%). Choices where the paper is silent: all blocks equal (no spread) when every ratio
is the same; sparsities clipped to [0, 0.99].
"""

from __future__ import annotations

from typing import Dict, List

import torch

from taylorlab.pruning.stats import InputStats
from taylorlab.pruning.structure import find_decoder_layers, find_linears, weight_matrix


def outlier_ratios(model: torch.nn.Module, stats: Dict[str, InputStats], m: float) -> List[float]:
    """D_l per decoder block: the share of its Wanda scores above ``m`` x their mean."""
    prefix, layers = find_decoder_layers(model)
    out = []
    for i, block in enumerate(layers):
        scores = [(weight_matrix(lin).abs().float() * stats[f"{prefix}.{i}.{name}"].act_norm().reshape(1, -1)
                   .to(lin.weight.device)).flatten() for name, lin in find_linears(block).items()]
        z = torch.cat(scores)
        out.append(float((z > m * z.mean()).float().mean()))
    return out


def owl_sparsities(ratios: List[float], target: float, lmbda: float) -> List[float]:
    """Per-block sparsities from outlier ratios (see the module's rule)."""
    lo, hi = min(ratios), max(ratios)
    if hi == lo:
        return [target] * len(ratios)
    r = [(x - lo) / (hi - lo) * 2 * lmbda for x in ratios]
    mean = sum(r) / len(r)
    return [min(0.99, max(0.0, target - (x - mean))) for x in r]
