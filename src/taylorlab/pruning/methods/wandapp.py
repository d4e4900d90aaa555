"""Wanda++ (arXiv 2503.04992): Wanda's score with *regional* gradients — the gradient of each
decoder block's own output, not the whole model's loss:

    S_ij = (alpha * G_ij + ||X_j||_2) * |W_ij|,   G_ij = sqrt(mean_n g_{n,ij}^2),

g_n the gradient of ||block(x_n)||_2 (calibration sequence n's block output, its l2 norm) with
respect to W, taken on the partly pruned model's block inputs as the walk reaches each block (one
block-local backward per block call; no full-model backward). Pruned per output row (per N:M group).

Choices where the paper is silent (its code is not public): as in the community reproduction
(TTTTTTris/wandaplus), the regional loss is the l2 norm of the block output per sequence (not its
square, whose gradient grows with the output and swamps the activation term) and G is the root mean
square over sequences (independent of their number); ``alpha`` defaults to 100, the paper's value. The paper's optional regional optimisation (a few
steps that refit the kept weights of a block to the dense block's outputs) is not implemented.
Published (LLaMA-1-7B, WikiText-2, dense 5.68): 50% 7.02 (Wanda 7.26, GBLM 7.15), 2:4 9.43 (11.53,
11.33).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taylorlab.errors import ConfigError
from taylorlab.pruning.registry import LayerTask, Method, register


@dataclass
class WandaPPOptions:
    alpha: float = 100.0  # weight of the regional gradient term

    def validate(self) -> None:
        if self.alpha < 0:
            raise ConfigError(f"alpha={self.alpha} must be 0 or more.")


def score(w: torch.Tensor, act_norm: torch.Tensor, regional_rms: torch.Tensor, alpha: float) -> torch.Tensor:
    return (alpha * regional_rms.float() + act_norm.float().reshape(1, -1)) * w.abs().float()


def prune_layer(task: LayerTask) -> None:
    s = task.stats
    rms = torch.sqrt(s.regional / max(s.nsamples, 1))
    task.apply_scores(score(task.weight, s.act_norm(), rms.to(task.weight.device), task.options.alpha))


METHOD = register(Method("wanda++", prune_layer, WandaPPOptions, needs_regional_gradients=True, rank=35,
                         summary="(alpha x regional gradient + activation norm) x |W|, block-local backward"))
