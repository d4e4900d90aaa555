"""Finding decoder blocks and their prunable layers from the module tree (no hard-coded names), and
capturing and replaying each block's own call.

A prunable layer is an ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2 style, weight stored as
[in, out]); ``weight_matrix`` gives every one of them as an [out, in] view, so rules, statistics
and masks see one orientation and write through to the stored weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

try:  # an optional dependency of the library: without transformers only nn.Linear is prunable
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency of the package
    Conv1D = None

_PRUNABLE = (nn.Linear,) if Conv1D is None else (nn.Linear, Conv1D)


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


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, _PRUNABLE)


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as an [out, in] tensor sharing storage with the parameter (a transposed
    view for Conv1D), so in-place writes prune the stored weight."""
    w = layer.weight.data
    return w if isinstance(layer, nn.Linear) else w.t()


def in_features(layer: nn.Module) -> int:
    return weight_matrix(layer).shape[1]


def find_linears(block: nn.Module) -> Dict[str, nn.Module]:
    """Every prunable layer (nn.Linear, Conv1D) of a block, by name inside the block."""
    return {name: m for name, m in block.named_modules() if is_prunable(m)}


def block_linears(model: nn.Module) -> Dict[str, nn.Module]:
    """Every prunable layer inside the decoder blocks, by qualified name (embeddings and lm_head
    excluded: they live outside the blocks)."""
    prefix, layers = find_decoder_layers(model)
    out = {}
    for i, block in enumerate(layers):
        for name, m in find_linears(block).items():
            out[f"{prefix}.{i}.{name}"] = m
    if not out:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or Conv1D inside its decoder blocks: "
                         "nothing to prune")
    return out


@dataclass
class BlockCall:
    """How the model called one block for one batch: every positional argument after the hidden
    states and every keyword argument (masks, positions, rotary embeddings, alibi...), as the model
    passed them — so a block with its own mask or rotary settings is replayed with its own."""

    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    hidden_as_kwarg: bool


def map_call(call: BlockCall, fn) -> BlockCall:
    """``call`` with ``fn`` applied to every tensor among its arguments (inside tuples and lists too)."""
    def walk(v):
        if isinstance(v, torch.Tensor):
            return fn(v)
        if isinstance(v, (tuple, list)):
            return type(v)(walk(x) for x in v)
        return v

    return BlockCall(tuple(walk(a) for a in call.args), {k: walk(v) for k, v in call.kwargs.items()},
                     call.hidden_as_kwarg)


def slice_call(call: BlockCall, start: int, stop: int, batch: int) -> BlockCall:
    """The call for sequences ``start:stop`` of a batch of ``batch``: tensors of two or more dimensions
    whose first is the batch (masks, per-sequence position embeddings) are sliced, and those whose first
    is a multiple of it batch-major (BLOOM's alibi, [batch x heads, 1, T]); shared ones (first dimension
    1, or one-dimensional such as cache positions) are kept."""
    return _rows_of(call, slice(start, stop), batch)


def take_call(call: BlockCall, rows: Sequence[int], batch: int) -> BlockCall:
    """The call for sequences ``rows`` (any of them, in any order) of a batch of ``batch``, cut as
    ``slice_call`` cuts: a gathered batch for the rows one pass serves (Wanda++'s rounds)."""
    rows = list(rows)
    return call if rows == list(range(batch)) else _rows_of(call, rows, batch)


def _rows_of(call: BlockCall, index, batch: int) -> BlockCall:
    if batch == 1:
        return call

    def cut(t):
        if t.dim() < 2 or t.shape[0] % batch or t.shape[0] < batch:
            return t
        rest = t.shape[1:]
        return t.reshape(batch, -1, *rest)[index].reshape(-1, *rest)

    return map_call(call, cut)


def run_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall):
    """Call ``block`` on ``hidden`` exactly as the model did, and return its hidden-state output."""
    if call.hidden_as_kwarg:
        out = block(*call.args, hidden_states=hidden, **call.kwargs)
    else:
        out = block(hidden, *call.args, **call.kwargs)
    return block_output(out)


class _Caught(Exception):
    pass


@torch.no_grad()
def capture_block_calls(model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device,
                        offload: bool = False) -> Tuple[List[torch.Tensor], List[List[BlockCall]]]:
    """Run the dense model over the windows and keep, per batch, the first block's hidden-state
    input and, per block and batch, the block's own call (``BlockCall``). Returns
    ``(inputs[batch], calls[block][batch])``.

    Every block is recorded, not only the first: models whose layers differ (sliding-window and full
    attention, per-layer rotary settings) pass each block other masks and position embeddings. Only
    the first block computes: the others pass their input through while their calls are recorded (a
    model builds masks and position embeddings before its layers, from the ids, not from the hidden
    states), and the forward stops before the last block. With ``offload`` the first block visits
    ``device`` only while it runs. Tensors the model shares between blocks (one mask for all) are kept once.
    """
    _, layers = find_decoder_layers(model)
    inputs: List[torch.Tensor] = []
    calls: List[List[BlockCall]] = [[] for _ in layers]
    last = len(layers) - 1
    first_output = []  # the first block's output: the structure the pass-through blocks return

    def pre_hook(i):
        def hook(module, args, kwargs):
            kwargs = dict(kwargs)
            if args:
                hidden, rest, as_kw = args[0], tuple(args[1:]), False
            else:
                hidden, rest, as_kw = kwargs.pop("hidden_states"), (), True
            calls[i].append(BlockCall(rest, kwargs, as_kw))
            if i == 0:
                inputs.append(hidden)
            if i == last:
                raise _Caught
            if offload and i == 0:
                module.to(device)

        return hook

    def first_post_hook(module, args, output):
        first_output[:] = [output]
        if offload:
            module.to("cpu")

    def passthrough(*args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        out = first_output[0]
        return hidden if isinstance(out, torch.Tensor) else (hidden, *out[1:])

    handles = [blk.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, blk in enumerate(layers)]
    handles.append(layers[0].register_forward_hook(first_post_hook))
    for blk in list(layers)[1:last]:
        blk.forward = passthrough  # an instance attribute: Module.__call__ calls it after the pre-hooks
    try:
        for start in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[start : start + batch_size].to(device), use_cache=False)
            except _Caught:
                pass
    finally:
        for h in handles:
            h.remove()
        for blk in list(layers)[1:last]:
            del blk.forward
    return inputs, calls


def block_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out
