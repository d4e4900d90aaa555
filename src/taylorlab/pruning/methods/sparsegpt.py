"""SparseGPT (Frantar & Alistarh 2023): OBS pruning with lazy block updates of the kept weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


def sparsegpt_prune_(layer: torch.nn.Module, hessian: torch.Tensor, sparsity: float, nm, blocksize: int = 128,
                     percdamp: float = 0.01) -> None:
    """SparseGPT on one layer, in place: OBS with lazy block updates (IST-DASLab's algorithm).

    With N:M the groups are chosen inside each column block, so the block size must be a multiple
    of M (else a group would straddle two blocks and the constraint would break)."""
    check_blocksize(blocksize, nm)
    target = weight_matrix(layer)
    W = target.clone().float()
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
            Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
            break
        except torch.linalg.LinAlgError:
            damp = damp * 10 if damp > 0 else 1e-6
            log.warning("SparseGPT: Cholesky failed; raising the damping to %.3g (attempt %d)", float(damp), attempt + 1)
    if Hinv is None:
        raise RuntimeError("SparseGPT: the Hessian is not positive definite even with strong damping")
    prunen, prunem = nm if nm is not None else (0, 0)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if nm is None:
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape(1, -1)) ** 2
            k = int(tmp.numel() * sparsity)
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            if k > 0:
                thresh = torch.sort(tmp.flatten())[0][k - 1]
                mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if nm is not None and i % prunem == 0:
                tmp = W1[:, i : i + prunem] ** 2 / (torch.diag(Hinv1)[i : i + prunem].reshape(1, -1)) ** 2
                # stable sort: equal scores are pruned lower column first, on CPU and GPU alike
                lowest = torch.sort(tmp, dim=1, stable=True).indices[:, : prunem - prunen]
                mask1.scatter_(1, i + lowest, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    target.copy_(W.to(target.dtype))


def prune_layer(task: LayerTask) -> None:
    o = task.options
    sparsegpt_prune_(task.layer, task.stats.hessian, task.sparsity, task.nm, blocksize=o.blocksize,
                     percdamp=o.percdamp)


METHOD = register(Method("sparsegpt", prune_layer, SparseGPTOptions, needs_hessian=True,
                         check=lambda o, nm: check_blocksize(o.blocksize, nm),
                         rank=30, summary="OBS with lazy block updates of the kept weights"))
