"""SparseGPT (Frantar & Alistarh 2023): OBS pruning with lazy block updates of the kept weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from taylorlab.errors import ConfigError
from taylorlab.pruning.masks import check_blocksize
from taylorlab.pruning.registry import LayerTask, Method, register
from taylorlab.pruning.structure import weight_matrix

log = logging.getLogger("taylorlab.pruning")


@dataclass
class SparseGPTOptions:
    percdamp: float = 0.01  # damping, a fraction of mean(diag H)
    blocksize: int = 128  # column block of the lazy updates

    def validate(self) -> None:
        if self.blocksize <= 0:
            raise ConfigError(f"blocksize={self.blocksize} must be positive.")
        if self.percdamp < 0:
            raise ConfigError(f"percdamp={self.percdamp} must be 0 or more.")


def _choose(W1: torch.Tensor, d: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The reference's unstructured rule inside one column block: the ``int(numel * sparsity)`` lowest
    ``w^2 / d^2`` of the whole block (all rows together) are pruned."""
    tmp = W1 ** 2 / d.reshape(1, -1) ** 2
    k = int(tmp.numel() * sparsity)
    if k == 0:
        return torch.zeros_like(W1, dtype=torch.bool)
    return tmp <= torch.sort(tmp.flatten())[0][k - 1]


def _choose_nm(W1: torch.Tensor, d: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The N:M rule on ``m`` columns: per row the ``m - n`` lowest ``w^2 / d^2`` are pruned."""
    tmp = W1 ** 2 / d.reshape(1, -1) ** 2
    # stable sort: equal scores are pruned lower column first, on CPU and GPU alike
    lowest = torch.sort(tmp, dim=1, stable=True).indices[:, : m - n]
    return torch.zeros_like(W1, dtype=torch.bool).scatter_(1, lowest, True)


def _obs_segment(W1: torch.Tensor, mask: torch.Tensor, U: torch.Tensor, row_chunk: int):
    """The OBS updates of one segment of columns whose mask is fixed, solved at once.

    The reference walks the segment column by column: ``e_j = m_j (w_j - sum_{i<j} e_i U_ij) / U_jj``
    (``w`` the segment before its own updates, ``U`` the segment's block of the upper Cholesky factor
    of H^-1, ``m_j`` 1 where pruned). That is, per row, the triangular system ``e A = m * w`` with
    ``A_ij = m_j U_ij`` (i < j) and ``A_jj = U_jj``: one batched triangular solve instead of a Python
    loop of small kernels per column (the same arithmetic up to the order of float additions).
    Returns ``(Q, E)``: the segment's kept weights and its scaled errors."""
    mf = mask.to(W1.dtype)
    strict = torch.triu(U, diagonal=1)
    diag = torch.diagonal(U)
    E = torch.empty_like(W1)
    if W1.shape[1] <= 8:  # an N:M group: substitution column by column costs less than a batched solve
        for j in range(W1.shape[1]):
            E[:, j] = mf[:, j] * (W1[:, j] - E[:, :j] @ U[:j, j]) / U[j, j]
        return (W1 - E @ strict).masked_fill_(mask, 0), E
    for r0 in range(0, W1.shape[0], row_chunk):
        mr = mf[r0 : r0 + row_chunk]
        A = strict.unsqueeze(0) * mr.unsqueeze(1)  # A[r, i, j] = U_ij m_rj  (i < j)
        A.diagonal(dim1=1, dim2=2).copy_(diag.expand(mr.shape[0], -1))
        b = (W1[r0 : r0 + row_chunk] * mr).unsqueeze(1)
        E[r0 : r0 + row_chunk] = torch.linalg.solve_triangular(A, b, upper=True, left=False).squeeze(1)
    Q = (W1 - E @ strict).masked_fill_(mask, 0)
    return Q, E


def sparsegpt_prune_(layer: torch.nn.Module, hessian: torch.Tensor, sparsity: float, nm, blocksize: int = 128,
                     percdamp: float = 0.01, row_chunk: Optional[int] = None) -> None:
    """SparseGPT on one layer, in place: OBS with lazy block updates (IST-DASLab's algorithm).

    With N:M the groups are chosen inside each column block, so the block size must be a multiple
    of M (else a group would straddle two blocks and the constraint would break). ``row_chunk`` bounds
    the rows solved at once (memory: row_chunk x blocksize^2 floats); by default many on a GPU (fewer
    launches), few on a CPU (the per-row matrices stay in cache)."""
    check_blocksize(blocksize, nm)
    target = weight_matrix(layer)
    if row_chunk is None:
        row_chunk = 4096 if target.is_cuda else 64
    # fp32 as in the reference; fp64 where the Hessian is fp64 (checks against the column loop)
    W = target.clone().to(torch.promote_types(hessian.dtype, torch.float32))
    rows, cols = W.shape
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(cols, device=W.device)
    Hinv = None
    for attempt in range(6):
        Hd = H.clone()
        Hd[diag, diag] += damp
        try:
            L = torch.linalg.cholesky(Hd)
            # H^-1 by a solve against I: the same matrix as cholesky_inverse, which is several times slower on CPUs
            eye = torch.eye(cols, dtype=L.dtype, device=L.device)
            Hinv = torch.linalg.cholesky(torch.cholesky_solve(eye, L), upper=True)
            break
        except torch.linalg.LinAlgError:
            damp = damp * 10 if damp > 0 else 1e-6
            log.warning("SparseGPT: Cholesky failed; raising the damping to %.3g (attempt %d)", float(damp), attempt + 1)
    if Hinv is None:
        raise RuntimeError("SparseGPT: the Hessian is not positive definite even with strong damping")
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        U1 = Hinv[i1:i2, i1:i2]
        d = torch.diagonal(U1)
        if nm is None:  # the block's mask is chosen once, before its updates
            Q1, E1 = _obs_segment(W[:, i1:i2], _choose(W[:, i1:i2], d, sparsity), U1, row_chunk)
        else:  # each group's mask is chosen from the block as updated by the groups before it
            n, m = nm
            W1 = W[:, i1:i2].clone()
            Q1, E1 = torch.empty_like(W1), torch.empty_like(W1)
            for s in range(0, i2 - i1, m):
                g = slice(s, s + m)
                Q1[:, g], E1[:, g] = _obs_segment(W1[:, g], _choose_nm(W1[:, g], d[g], n, m), U1[g, g], row_chunk)
                W1[:, s + m:] -= E1[:, g] @ U1[g, s + m:]
        W[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    target.copy_(W.to(target.dtype))


def prune_layer(task: LayerTask) -> None:
    o = task.options
    sparsegpt_prune_(task.layer, task.stats.hessian, task.sparsity, task.nm, blocksize=o.blocksize,
                     percdamp=o.percdamp)


METHOD = register(Method("sparsegpt", prune_layer, SparseGPTOptions, needs_hessian=True,
                         check=lambda o, nm: check_blocksize(o.blocksize, nm),
                         rank=30, summary="OBS with lazy block updates of the kept weights"))
