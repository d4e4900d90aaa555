"""Seeded random projections R^d -> R^k (Johnson-Lindenstrauss), as the paper stores its terms.

``P`` (d x k, entries N(0, 1/k) or +-1/sqrt(k)) is never held whole: it is generated in row chunks
from a seed per chunk, so projecting needs chunk x k memory and the same seed gives the same P on
any device. A projection preserves inner products and distances in expectation, not coordinates:
use projected vectors only where the result is an inner product (``additive``'s scores), never
decode them back (the method notes measured that decoding is worse than not estimating).
"""

from __future__ import annotations

import math

import torch

from taylorlab.errors import ConfigError


class Projector:
    def __init__(self, dim: int, k: int, seed: int = 0, kind: str = "gaussian", chunk: int = 65536):
        if kind not in ("gaussian", "rademacher"):
            raise ConfigError(f"projection kind {kind!r} is not one of gaussian, rademacher.")
        if k < 1:
            raise ConfigError(f"projection dimension must be at least 1, got {k}.")
        self.dim, self.k, self.seed, self.kind, self.chunk = dim, k, seed, kind, chunk

    def _block(self, i: int, rows: int, dtype, device) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        if self.kind == "gaussian":
            b = torch.randn(rows, self.k, generator=g, dtype=torch.float64)
        else:
            b = torch.randint(0, 2, (rows, self.k), generator=g).to(torch.float64) * 2 - 1
        return (b / math.sqrt(self.k)).to(device=device, dtype=dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d] -> [..., k]."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected vectors of {self.dim}, got {x.shape[-1]}")
        out = torch.zeros(*x.shape[:-1], self.k, dtype=x.dtype, device=x.device)
        for i, lo in enumerate(range(0, self.dim, self.chunk)):
            hi = min(lo + self.chunk, self.dim)
            out += x[..., lo:hi] @ self._block(i, hi - lo, x.dtype, x.device)
        return out
