"""Wanda (Sun et al. 2023): |W_ij| * ||X_j||_2, the lowest pruned per output row."""

import torch

from taylorlab.pruning.registry import LayerTask, Method, register


def score(w: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    return w.abs().float() * act_norm.reshape(1, -1)


def prune_layer(task: LayerTask) -> None:
    task.apply_scores(score(task.weight, task.stats.act_norm()))


METHOD = register(Method("wanda", prune_layer, rank=20, summary="|W| x input activation norm, per output row"))
