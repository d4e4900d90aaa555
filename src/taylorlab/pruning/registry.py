"""The pruning methods, registered once: name, typed options, capabilities and the per-layer rule.

A method is one module under ``taylorlab.pruning.methods`` that calls ``register``; config choices
and validation, the prune stage and the results page read this registry, so adding a method
touches that module, its ``conf/prune/<name>.yaml`` and its tests, nothing else::

    @dataclass
    class RandomOptions:
        seed: int = 0

    def prune_layer(task: LayerTask) -> None:
        g = torch.Generator().manual_seed(task.options.seed)
        task.apply_scores(torch.rand(task.weight.shape, generator=g))

    register(Method("random", prune_layer, RandomOptions, needs_calibration=False))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from taylorlab.options import NoOptions, Registry, make_options
from taylorlab.pruning.masks import make_mask
from taylorlab.pruning.stats import InputStats
from taylorlab.pruning.structure import weight_matrix


@dataclass
class Calibration:
    """What the calibrate stage hands a method: token windows [N, L] and, for gradient methods,
    the accumulated per-sequence gradient statistic of every block linear (qualified names)."""

    windows: Optional[torch.Tensor] = None
    gradients: Optional[Dict[str, torch.Tensor]] = None
    gradient_samples: Optional[int] = None  # sequences the gradient statistic summed over (default: N)
    gradient_norm: str = "l2"  # l2: sum g^2 | l1: sum |g|


@dataclass
class LayerTask:
    """One prunable layer of one block, with everything a rule may use."""

    name: str  # qualified, e.g. model.layers.3.mlp.up_proj
    layer: torch.nn.Module
    stats: Optional[InputStats]  # None for methods that need no calibration
    calibration: Calibration
    sparsity: float
    nm: Optional[Tuple[int, int]]
    options: Any

    @property
    def weight(self) -> torch.Tensor:
        """The layer's weight as an [out, in] view (Conv1D's transposed storage included)."""
        return weight_matrix(self.layer)

    def gradient(self) -> torch.Tensor:
        if self.calibration.gradients is None or self.name not in self.calibration.gradients:
            raise KeyError(f"no gradient statistic for {self.name}")
        return self.calibration.gradients[self.name].to(self.weight.device)

    def apply_scores(self, scores: torch.Tensor, per_row: bool = True) -> None:
        """Zero the lowest ``scores`` ([out, in]): per row (or per matrix) at ``sparsity``, or per N:M group."""
        mask = make_mask(scores, self.sparsity, self.nm, per_row)
        w = self.weight
        w.masked_fill_(mask.to(w.device), 0)


@dataclass
class BlockTask:
    """One decoder block as the walk reaches it: its prunable layers, its inputs (per batch) and
    calls, and what the layers will be pruned to."""

    index: int
    block: torch.nn.Module
    linears: Dict[str, torch.nn.Module]
    hidden: list  # [batch] hidden-state inputs of the block (from the partly pruned model)
    calls: list  # [batch] BlockCall
    sparsity: float
    nm: Optional[Tuple[int, int]]
    options: Any


@dataclass(frozen=True)
class Method:
    name: str
    prune_layer: Callable[[LayerTask], None]
    options: type = NoOptions
    needs_calibration: bool = True  # block inputs of calibration windows (else: weights only)
    needs_gradients: bool = False  # the calibrate stage's per-sequence gradient statistic
    needs_hessian: bool = False  # InputStats.hessian (2/N X^T X) per layer
    needs_regional_gradients: bool = False  # InputStats.regional: block-local gradients (Wanda++)
    patterns: Tuple[str, ...] = ("unstructured", "n:m")
    summary: str = ""
    rank: int = 100  # where tables and plots list it (lower first)
    # extra checks of the options against a pattern: (options, nm) -> None, raises ConfigError
    check: Optional[Callable[[Any, Optional[Tuple[int, int]]], None]] = field(default=None, compare=False)
    # a step on the whole block before its statistics are taken (Wanda++'s regional optimisation):
    # (BlockTask) -> None; it may change the block's weights, never its inputs
    refine_block: Optional[Callable[["BlockTask"], None]] = field(default=None, compare=False)

    def make_options(self, values: Optional[Mapping[str, Any]] = None, key: str = "prune.options") -> Any:
        """The typed options from a mapping: an unknown key (one this method does not have) or a
        value of the wrong type is a ConfigError naming it; the dataclass's ``validate`` then runs."""
        return make_options(self.options, values, key, self.name)


_METHODS: Registry[Method] = Registry("pruning method")


def register(method: Method) -> Method:
    """Add a method (its name must be new); returns it, so a module can keep a handle."""
    return _METHODS.register(method)


def unregister(name: str) -> None:
    _METHODS.unregister(name)


def get(name: str) -> Method:
    return _METHODS.get(name, "prune.method")


def names() -> Tuple[str, ...]:
    """The registered methods in display order (the built-in ones register when
    ``taylorlab.pruning`` is imported)."""
    return _METHODS.names()
