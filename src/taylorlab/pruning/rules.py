"""The per-layer rules: scores for magnitude, Wanda and GBLM; SparseGPT's OBS update."""

from __future__ import annotations

import logging

import torch

from taylorlab.pruning.masks import check_blocksize, make_mask
from taylorlab.pruning.structure import weight_matrix

log = logging.getLogger("taylorlab.pruning")

GBLM_REFERENCE_SCALE = 100.0


def score_magnitude(w: torch.Tensor) -> torch.Tensor:
    return w.abs().float()


def score_wanda(w: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    return w.abs().float() * act_norm.reshape(1, -1)


def gblm_gradient_term(grad_stat: torch.Tensor, nsamples: int, norm: str, normalization: str) -> torch.Tensor:
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
    return g * GBLM_REFERENCE_SCALE if normalization == "reference" else g


def score_gblm(w: torch.Tensor, act_norm: torch.Tensor, grad_term: torch.Tensor, alpha: float) -> torch.Tensor:
    wa = w.abs().float()
    return wa * act_norm.reshape(1, -1) + alpha * wa * grad_term.to(wa.device)


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


def apply_mask_(layer: torch.nn.Module, scores: torch.Tensor, sparsity: float, nm, per_row: bool) -> None:
    """Zero the weights ``make_mask`` selects from ``scores`` ([out, in], on any device)."""
    mask = make_mask(scores, sparsity, nm, per_row)
    w = weight_matrix(layer)
    w[mask.to(w.device)] = 0


__all__ = ["score_magnitude", "score_wanda", "score_gblm", "gblm_gradient_term", "sparsegpt_prune_",
           "apply_mask_"]
