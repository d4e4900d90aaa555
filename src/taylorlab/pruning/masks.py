"""Mask shapes. A mask is a bool tensor, True where the weight is pruned."""

from __future__ import annotations

import re
from typing import Optional

import torch

from taylorlab.errors import ConfigError


def _lowest(scores: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Indices of the ``k`` lowest scores along ``dim``, ties broken by the lower index first.

    A stable sort fixes the order of equal scores, so CPU and GPU choose the same mask whatever
    their top-k kernels do with ties (dequantised weights, e.g. GGUF, hold many equal values).
    """
    return torch.sort(scores, dim=dim, stable=True).indices.narrow(dim, 0, k)


def mask_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the ``int(cols * sparsity)`` lowest scores of every row (Wanda, GBLM)."""
    k = int(scores.shape[1] * sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, _lowest(scores, k, 1), True)
    return mask


def mask_per_matrix(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the ``int(numel * sparsity)`` lowest scores of the whole matrix (magnitude)."""
    k = int(scores.numel() * sparsity)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[_lowest(scores.flatten(), k, 0)] = True
    return mask.view_as(scores)


def mask_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of ``m`` consecutive columns of a row, keep the ``n`` highest scores."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M needs the input size ({cols}) to be a multiple of M ({m})")
    groups = scores.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, _lowest(groups, m - n, 2), True)
    return mask.reshape(rows, cols)


def make_mask(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, per_row: bool) -> torch.Tensor:
    if nm is not None:
        return mask_nm(scores, *nm)
    return mask_per_row(scores, sparsity) if per_row else mask_per_matrix(scores, sparsity)


_NM = re.compile(r"^(\d+):(\d+)$")


def parse_pattern(pattern: str) -> Optional[tuple[int, int]]:
    """``"unstructured"`` -> None; ``"2:4"`` -> (2, 4); anything else is a ConfigError.

    N:M as in NVIDIA's sparse tensor cores: in every group of M consecutive input columns of a row at
    most N weights are non-zero (M-N pruned); 2:4 and 4:8 are 50% sparse.
    """
    if pattern == "unstructured":
        return None
    m = _NM.match(str(pattern))
    if not m:
        raise ConfigError(f"prune.pattern={pattern!r} is not valid; use 'unstructured' or N:M such as 2:4.")
    n, mm = int(m.group(1)), int(m.group(2))
    if not (0 < n < mm):
        raise ConfigError(f"prune.pattern={pattern!r} needs 0 < N < M (e.g. 2:4, 4:8).")
    return n, mm


def pattern_sparsity(nm: tuple[int, int]) -> float:
    """The sparsity an N:M pattern fixes: (M - N) / M."""
    return (nm[1] - nm[0]) / nm[1]


def check_blocksize(blocksize: int, nm: Optional[tuple[int, int]]) -> None:
    """SparseGPT chooses N:M groups inside each column block: the block must hold whole groups."""
    if nm is not None and blocksize % nm[1]:
        n, m = nm
        raise ConfigError(f"prune.options.blocksize={blocksize} is not a multiple of M={m}: SparseGPT's column blocks must "
                          f"hold whole {n}:{m} groups; use prune.options.blocksize={max(m, blocksize // m * m)}.")
