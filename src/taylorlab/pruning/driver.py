"""The layer-by-layer driver: block inputs captured once, each block's linears pruned from the
statistics of the partly pruned model, and the pruned block's outputs fed to the next block.
With ``offload`` the model stays on the CPU and one decoder block at a time visits the device."""

from __future__ import annotations

import logging
from typing import Dict, Optional

import torch

from taylorlab.errors import ConfigError
from taylorlab.pruning import rules
from taylorlab.pruning.masks import check_blocksize, parse_pattern
from taylorlab.pruning.stats import attach
from taylorlab.pruning.structure import (block_linears, capture_block_calls, find_decoder_layers, find_linears,
                                         in_features, run_block, weight_matrix)

log = logging.getLogger("taylorlab.pruning")

METHODS = ("magnitude", "wanda", "sparsegpt", "gblm")


@torch.no_grad()
def prune_model(
    model: torch.nn.Module,
    *,
    method: str,
    sparsity: float = 0.5,
    pattern: str = "unstructured",
    windows: Optional[torch.Tensor] = None,
    gradients: Optional[Dict[str, torch.Tensor]] = None,
    grad_nsamples: Optional[int] = None,
    grad_norm: str = "l2",
    alpha: float = 1.0,
    gblm_normalization: str = "reference",
    percdamp: float = 0.01,
    blocksize: int = 128,
    batch_size: int = 8,
    device: torch.device = torch.device("cpu"),
    offload: bool = False,
    progress: bool = False,
) -> torch.nn.Module:
    """Prune every nn.Linear inside the decoder blocks of ``model`` in place and return it.

    ``windows`` [N, L] are calibration token windows (not needed for magnitude); ``gradients`` maps
    qualified linear names to GBLM's accumulated per-sequence gradient statistic.
    """
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    nm = parse_pattern(pattern)
    check_prunable(model, pattern, blocksize=blocksize if method == "sparsegpt" else None)
    prefix, layers = find_decoder_layers(model)
    if method == "magnitude":
        for lin in block_linears(model).values():
            w = weight_matrix(lin)
            rules.apply_mask_(lin, rules.score_magnitude(w.to(device)), sparsity, nm, per_row=False)
        return model
    if windows is None:
        raise ValueError(f"{method} needs calibration windows")
    if method == "gblm" and gradients is None:
        raise ValueError("gblm needs the gradient statistics of the calibrate stage")
    n = windows.shape[0]
    walk = walk_blocks(model, windows, batch_size=batch_size, device=device, offload=offload,
                       hessian=(method == "sparsegpt"))
    for i, block, linears, stats in tqdm(walk, total=len(layers), desc=f"prune {method}", disable=not progress,
                                         leave=False):
        for name, lin in linears.items():
            s = stats.pop(name)
            w = weight_matrix(lin)
            if method == "sparsegpt":
                rules.sparsegpt_prune_(lin, s.hessian, sparsity, nm, blocksize=blocksize, percdamp=percdamp)
            elif method == "wanda":
                rules.apply_mask_(lin, rules.score_wanda(w, s.act_norm()), sparsity, nm, per_row=True)
            else:
                key = f"{prefix}.{i}.{name}"
                if key not in gradients:
                    raise KeyError(f"no gradient statistic for {key}")
                g = rules.gblm_gradient_term(gradients[key].to(w.device), grad_nsamples or n, grad_norm,
                                             gblm_normalization)
                rules.apply_mask_(lin, rules.score_gblm(w, s.act_norm(), g, alpha), sparsity, nm, per_row=True)
    return model


def walk_blocks(model: torch.nn.Module, windows: torch.Tensor, *, batch_size: int = 8,
                device: torch.device = torch.device("cpu"), offload: bool = False, hessian: bool = False):
    """Yield ``(index, block, layers, stats)`` for every decoder block in turn: ``stats`` holds the
    ``InputStats`` of the block's prunable ``layers`` over the calibration windows, gathered with
    the block called exactly as the model calls it. Whatever the consumer does to the block before
    asking for the next one (pruning it) is what the next block's inputs come from.

    With ``offload`` the model stays on the CPU and one block at a time visits ``device``.
    """
    _, layers = find_decoder_layers(model)
    if offload:
        model.to("cpu")
        # everything but the blocks goes to the device; blocks visit one at a time
        _move_non_block_modules(model, layers, device)
    else:
        model.to(device)
    cache = model.config.use_cache if hasattr(model.config, "use_cache") else None
    if cache is not None:
        model.config.use_cache = False
    try:
        hidden, calls = capture_block_calls(model, windows, batch_size, device, offload=offload)
        current = [0]  # sequences in the block call under way (the stats hooks cannot always see it)
        for i, block in enumerate(layers):
            if offload:
                block.to(device)
            linears = find_linears(block)
            stats, handles = attach(linears, hessian=hessian, sequences=lambda: current[0])
            try:
                for x, call in zip(hidden, calls[i]):
                    current[0] = x.shape[0]
                    run_block(block, x, call)
            finally:
                for h in handles:
                    h.remove()
            yield i, block, linears, stats
            # the (possibly pruned) outputs of this block are the next block's inputs
            if i + 1 < len(layers):
                hidden = [run_block(block, x, call) for x, call in zip(hidden, calls[i])]
            if offload:
                block.to("cpu")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        if cache is not None:
            model.config.use_cache = cache


@torch.no_grad()
def calibration_statistics(model: torch.nn.Module, windows: torch.Tensor, *, batch_size: int = 8,
                           device: torch.device = torch.device("cpu"), hessian: bool = False):
    """{qualified layer name: InputStats} of the dense model over ``windows``, without pruning."""
    prefix, _ = find_decoder_layers(model)
    out = {}
    for i, _block, _linears, stats in walk_blocks(model, windows, batch_size=batch_size, device=device,
                                                   hessian=hessian):
        out.update({f"{prefix}.{i}.{name}": s for name, s in stats.items()})
    return out


def check_prunable(model: torch.nn.Module, pattern: str, blocksize: Optional[int] = None) -> None:
    """Before anything is pruned: the model has prunable layers in its blocks, and an N:M pattern
    fits every one of them (M divides each input width; SparseGPT's block size is a multiple of M).
    Raises ConfigError naming the first layer that does not fit."""
    nm = parse_pattern(pattern)
    try:
        linears = block_linears(model)
    except ValueError as exc:
        raise ConfigError(f"{exc}.") from None
    if nm is None:
        return
    m = nm[1]
    if blocksize is not None:
        check_blocksize(blocksize, nm)
    for name, lin in linears.items():
        if in_features(lin) % m:
            raise ConfigError(f"prune.pattern={pattern}: M={m} does not divide the input width {in_features(lin)} "
                              f"of {name}; choose an M that divides every layer's input width (e.g. 2:4 or 4:8).")


def _move_non_block_modules(model, layers, device):
    block_params = {id(p) for p in layers.parameters()}
    block_bufs = {id(b) for b in layers.buffers()}
    for mod in model.modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            if id(p) not in block_params:
                p.data = p.data.to(device)
        for name, b in list(mod.named_buffers(recurse=False)):
            if id(b) not in block_bufs:
                mod._buffers[name] = b.to(device)


def sparsity_report(model: torch.nn.Module) -> Dict[str, Dict[str, float]]:
    """Fraction of zero weights of every block linear, by qualified name, plus the total."""
    prefix, layers = find_decoder_layers(model)
    report = {}
    zeros = total = 0
    for i, block in enumerate(layers):
        for name, lin in find_linears(block).items():
            z = int((weight_matrix(lin) == 0).sum())
            t = lin.weight.numel()
            report[f"{prefix}.{i}.{name}"] = {"zeros": z, "numel": t, "sparsity": z / t}
            zeros += z
            total += t
    report["total"] = {"zeros": zeros, "numel": total, "sparsity": zeros / max(total, 1)}
    return report
