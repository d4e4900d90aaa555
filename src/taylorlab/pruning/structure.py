"""Finding decoder blocks and their linear layers from the module tree (no hard-coded names)."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn


def find_decoder_layers(model: nn.Module) -> Tuple[str, nn.ModuleList]:
    """The ModuleList of decoder blocks: the longest ModuleList of identical block types
    (``model.layers`` in Llama/Mistral/Qwen2, ``model.decoder.layers`` in OPT, ``transformer.h`` in
    GPT-style models). Returns its qualified name and the list."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best: Tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1:
            if n_layers is not None and len(mod) == n_layers:
                return name, mod
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no list of decoder blocks")
    return best


def find_linears(block: nn.Module) -> Dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def block_linears(model: nn.Module) -> Dict[str, nn.Linear]:
    """Every nn.Linear inside the decoder blocks, by qualified name (embeddings and lm_head excluded)."""
    prefix, layers = find_decoder_layers(model)
    out = {}
    for i, block in enumerate(layers):
        for name, m in find_linears(block).items():
            out[f"{prefix}.{i}.{name}"] = m
    return out


class _Caught(Exception):
    pass


@torch.no_grad()
def capture_block_inputs(model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device):
    """Run the model up to its first decoder block and keep, for every batch of windows, the
    block's hidden-state input and the keyword arguments the model passed to it (masks, positions,
    rotary embeddings) — generic across architectures."""
    _, layers = find_decoder_layers(model)
    captured = []

    def hook(module, args, kwargs):
        captured.append((args[0] if args else kwargs.pop("hidden_states"), {k: v for k, v in kwargs.items()}))
        raise _Caught

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[i : i + batch_size].to(device), use_cache=False)
            except _Caught:
                pass
    finally:
        handle.remove()
    return captured


def block_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out
