"""A pruned model in the size it earned: every pruned weight matrix as its kept values and a bitmask
(one bit per weight, ``packbits`` order: row-major, least significant bit first), every other tensor
as it is, in one safetensors file with the model's config and the tensors' layout as JSON metadata.

The bitmask serves unstructured and N:M masks alike: for 2:4 it is exactly the 1 bit per weight that
2-bit indices of the kept pair cost (cuSPARSELt's metadata), so the file is (1 - s) x the values plus
1/16 (fp16/bf16) or 1/32 (fp32) of the dense weights. ``load_compact`` rebuilds the dense model
(``from_config`` + the expanded weights): safetensors and JSON only, nothing unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import torch
from safetensors import safe_open

from taylorlab.io import atomic_save_tensors
from taylorlab.pruning.structure import block_linears

FORMAT = "taylorlab-bitmask-v1"
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool [n] -> uint8 [ceil(n / 8)], least significant bit first."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8)])
    return (flat.view(-1, 8) * _BITS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 [m] -> bool [n] (the inverse of ``pack_bits``)."""
    return ((packed[:, None] & _BITS) != 0).reshape(-1)[:n]


def _pruned_names(model) -> Dict[str, str]:
    """{state_dict key: layer name} of the weights the pruning library prunes (the block linears)."""
    return {f"{name}.weight": name for name in block_linears(model)}


def compact_tensors(model) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) of the compact form of ``model`` (tied parameters stored once)."""
    pruned = _pruned_names(model)
    tensors, layout, seen = {}, {}, {}
    for key, t in model.state_dict().items():
        t = t.detach().cpu()
        ptr = (t.data_ptr(), tuple(t.shape), t.dtype)
        if ptr in seen and t.numel():  # tied weights (e.g. lm_head = embed_tokens): one copy
            layout[key] = {"kind": "alias", "of": seen[ptr]}
            continue
        seen[ptr] = key
        if key in pruned:
            mask = t != 0
            tensors[f"{key}.values"] = t[mask].contiguous()
            tensors[f"{key}.mask"] = pack_bits(mask)
            layout[key] = {"kind": "bitmask", "shape": list(t.shape), "dtype": str(t.dtype).split(".")[-1]}
        else:
            tensors[key] = t.contiguous()
            layout[key] = {"kind": "dense"}
    meta = {"format": FORMAT, "config": model.config.to_json_string(), "layout": json.dumps(layout)}
    return tensors, meta


def save_compact(model, path: Path) -> int:
    """Write the compact form to ``path`` (one .safetensors file, renamed into place) and return its size."""
    tensors, meta = compact_tensors(model)
    atomic_save_tensors(Path(path), tensors, metadata=meta)
    return Path(path).stat().st_size


def load_compact(path: Path, dtype: torch.dtype = None):
    """The dense model back from ``save_compact``'s file (weights equal bit for bit)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file (format {meta.get('format')!r}).")
        layout = json.loads(meta["layout"])
        raw = {k: fh.get_tensor(k) for k in fh.keys()}
    config = AutoConfig.for_model(**json.loads(meta["config"]))
    model = AutoModelForCausalLM.from_config(config)
    state = {}
    for key, spec in layout.items():
        if spec["kind"] == "dense":
            state[key] = raw[key]
        elif spec["kind"] == "bitmask":
            shape = spec["shape"]
            n = 1
            for s in shape:
                n *= s
            mask = unpack_bits(raw[f"{key}.mask"], n)
            values = raw[f"{key}.values"]
            dense = torch.zeros(n, dtype=values.dtype)
            dense[mask] = values
            state[key] = dense.view(shape)
    for key, spec in layout.items():
        if spec["kind"] == "alias":
            state[key] = state[spec["of"]]
    model.load_state_dict(state, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()  # as from_pretrained leaves it (dropout off)
    return model.to(dtype) if dtype is not None else model
