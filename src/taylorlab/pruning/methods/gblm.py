"""GBLM-Pruner (Das et al. 2023): Wanda's score plus alpha * |W| * G, G from the dense model's
per-sequence gradients of the language-modelling loss (calibrate stage)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taylorlab.errors import ConfigError
from taylorlab.pruning.methods.wanda import score as wanda_score
from taylorlab.pruning.registry import LayerTask, Method, register

REFERENCE_SCALE = 100.0


@dataclass
class GBLMOptions:
    alpha: float = 1.0  # weight of the gradient term
    normalization: str = "reference"  # reference | rms (docs/reference.md)

    def validate(self) -> None:
        if self.normalization not in ("reference", "rms"):
            raise ConfigError(f"normalization={self.normalization!r} is not one of reference, rms.")


def gradient_term(grad_stat: torch.Tensor, nsamples: int, norm: str, normalization: str) -> torch.Tensor:
    """G from the accumulated per-sequence gradient statistic (sum g^2 for l2, sum |g| for l1).

    reference: ``100 * sqrt(sum_n g_n^2)`` (l2) or ``100 * sum_n |g_n|`` (l1) — the GBLM code's scale,
    not divided by N, so its balance against the activation term shifts with N.
    rms: ``sqrt(mean_n g_n^2)`` (l2) or ``mean_n |g_n|`` (l1) — independent of N; with
    ``alpha = 100 * sqrt(N)`` (l2) it equals the reference at that N.
    """
    g = grad_stat.float()
    if norm == "l2":
        g = torch.sqrt(g) if normalization == "reference" else torch.sqrt(g / nsamples)
    else:
        g = g if normalization == "reference" else g / nsamples
    return g * REFERENCE_SCALE if normalization == "reference" else g


def score(w: torch.Tensor, act_norm: torch.Tensor, grad_term: torch.Tensor, alpha: float) -> torch.Tensor:
    return wanda_score(w, act_norm) + alpha * w.abs().float() * grad_term.to(w.device)


def prune_layer(task: LayerTask) -> None:
    cal, o = task.calibration, task.options
    n = cal.gradient_samples or cal.windows.shape[0]
    g = gradient_term(task.gradient(), n, cal.gradient_norm, o.normalization)
    task.apply_scores(score(task.weight, task.stats.act_norm(), g, o.alpha))


METHOD = register(Method("gblm", prune_layer, GBLMOptions, needs_gradients=True,
                         rank=40, summary="Wanda's score + alpha |W| x per-sequence gradient norm"))
