"""The layer-by-layer driver: block inputs captured once, each block's linears pruned from the
statistics of the partly pruned model, and the pruned block's outputs fed to the next block.
With ``offload`` the model stays on the CPU and one decoder block at a time visits the device."""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from tqdm.auto import tqdm

from taylorlab.errors import ConfigError
from taylorlab.pruning.gradients import regional_gradient_stats
from taylorlab.pruning.kernels import check_kernels, fused_kernels
from taylorlab.pruning.masks import parse_pattern
from taylorlab.pruning.profiles import outlier_ratios, owl_sparsities
from taylorlab.pruning.registry import BlockTask, Calibration, LayerTask, Method, get as get_method
from taylorlab.pruning.stats import attach
from taylorlab.pruning.structure import (block_linears, capture_block_calls, find_decoder_layers, find_linears,
                                         in_features, run_block, weight_matrix)

log = logging.getLogger("taylorlab.pruning")


@dataclass
class Profile:
    """How the target sparsity is spread over the blocks (``taylorlab.pruning.profiles``)."""

    name: str = "uniform"  # uniform | owl
    m: float = 5.0  # owl: outlier threshold, a multiple of the mean score
    lmbda: float = 0.08  # owl: the block sparsities span 2 x lmbda

    def __post_init__(self):
        if self.name not in PROFILES:
            raise ConfigError(f"prune.profile={self.name!r} is not one of {', '.join(PROFILES)}.")


PROFILES = ("uniform", "owl")
# block: each block's linears scored from one statistics pass of the block as it stands (the reference codes);
# sequential: one pass per block, each linear pruned once every calibration call has reached it, so the
# linears after it see the pruned ones' outputs (SparseGPT's "true sequential", for any method)
WALKS = ("block", "sequential")


@torch.no_grad()
def prune_model(
    model: torch.nn.Module,
    method: str,
    *,
    sparsity: float = 0.5,
    pattern: str = "unstructured",
    options: Any = None,
    calibration: Optional[Calibration] = None,
    profile: Optional[Profile] = None,
    batch_size: int = 8,
    device: torch.device = torch.device("cpu"),
    offload: bool = False,
    progress: bool = False,
    walk: str = "block",
    kernels: str = "eager",
) -> Dict[str, float]:
    """Prune every prunable layer inside the decoder blocks of ``model`` in place with the
    registered ``method``; returns the sparsity asked of each block ({block index: sparsity}).

    ``options``: the method's options (its dataclass, or a mapping checked against it).
    ``calibration``: the calibration windows (and gradient statistics) methods that need them use.
    ``profile``: the spread of ``sparsity`` over the blocks (uniform, or OWL's outlier-weighted one).
    ``walk``: ``block`` (statistics of each block as it stands, then its linears pruned) or
    ``sequential`` (one pass per block, each linear pruned as soon as every call has reached it).
    ``kernels``: ``eager`` (the model's own modules) or ``liger`` (fused kernels for the calibration
    passes, ``taylorlab.pruning.kernels``).
    """
    m = get_method(method)
    opts = m.make_options(options)
    nm = parse_pattern(pattern)
    check_prunable(model, pattern, method=m, options=opts)
    check_walk(walk, m)
    check_kernels(kernels)
    # a method without calibration runs no pass of the model: nothing to fuse
    with fused_kernels(model, kernels, device) if m.needs_calibration else nullcontext():
        return _prune_model(model, m, opts, sparsity, nm, calibration, profile, batch_size, device, offload, progress,
                            walk)


def _prune_model(model, m: Method, opts, sparsity: float, nm, calibration, profile, batch_size, device, offload, progress,
                 walk) -> Dict[str, float]:
    method = m.name
    cal = calibration or Calibration()
    prefix, layers = find_decoder_layers(model)
    per_block = block_sparsities(model, sparsity, nm, profile or Profile(), cal, batch_size=batch_size, device=device)
    if not m.needs_calibration:
        for i, block in enumerate(layers):
            for name, lin in find_linears(block).items():  # each layer visits the device, then goes back
                home = lin.weight.device
                m.prune_layer(LayerTask(f"{prefix}.{i}.{name}", lin.to(device), None, cal, per_block[i], nm, opts))
                lin.to(home)
        return per_block
    if cal.windows is None:
        raise ValueError(f"{method} needs calibration windows")
    if m.needs_gradients and cal.gradients is None:
        raise ValueError(f"{method} needs the gradient statistics of the calibrate stage")
    if walk == "sequential":
        def prune_one(i, name, lin, st):
            m.prune_layer(LayerTask(f"{prefix}.{i}.{name}", lin, st, cal, per_block[i], nm, opts))

        for _ in tqdm(walk_sequential(model, cal.windows, prune_one, batch_size=batch_size, device=device,
                                      offload=offload, hessian=m.needs_hessian),
                      total=len(layers), desc=f"prune {method}", disable=not progress, leave=False):
            pass
        return per_block
    refine = None if m.refine_block is None else (
        lambda i, block, linears, hidden, calls: m.refine_block(
            BlockTask(i, block, linears, hidden, calls, per_block[i], nm, opts)))
    walk = walk_blocks(model, cal.windows, batch_size=batch_size, device=device, offload=offload,
                       hessian=m.needs_hessian, regional=m.needs_regional_gradients, refine=refine)
    for i, block, linears, stats in tqdm(walk, total=len(layers), desc=f"prune {method}", disable=not progress,
                                         leave=False):
        for name, lin in linears.items():
            m.prune_layer(LayerTask(f"{prefix}.{i}.{name}", lin, stats.pop(name), cal, per_block[i], nm, opts))
    return per_block


def block_sparsities(model: torch.nn.Module, sparsity: float, nm, profile: Profile, cal: Calibration, *,
                     batch_size: int = 8, device: torch.device = torch.device("cpu")) -> Dict[int, float]:
    """{block index: sparsity} under ``profile``; OWL reads the dense model's activations (one pass)."""
    _, layers = find_decoder_layers(model)
    if profile.name == "uniform":
        return {i: sparsity for i in range(len(layers))}
    if nm is not None:
        raise ConfigError("prune.profile=owl sets a sparsity per block, but an N:M pattern fixes it; use "
                          "prune.pattern=unstructured with OWL.")
    if cal.windows is None:
        raise ValueError("the OWL profile needs calibration windows (the dense model's activations)")
    home = next(model.parameters()).device
    stats = calibration_statistics(model, cal.windows, batch_size=batch_size, device=device)
    ratios = outlier_ratios(model, stats, profile.m)
    model.to(home)
    out = owl_sparsities(ratios, sparsity, profile.lmbda)
    log.info("OWL block sparsities (m=%g, lambda=%g): %s", profile.m, profile.lmbda, ", ".join(f"{x:.3f}" for x in out))
    return dict(enumerate(out))


class _InputsTaken(Exception):
    """Ends a statistics call of a block at its last linear's input: that call's output is never used."""


def _inputs_taken(mod, inp):
    raise _InputsTaken


@contextmanager
def _prepared(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device, offload: bool):
    """(blocks, first-block inputs per batch, calls per block and batch) with the model on ``device``
    (with ``offload``: everything but the blocks, which visit one at a time) and its KV cache off."""
    _, layers = find_decoder_layers(model)
    if offload:
        model.to("cpu")
        _move_non_block_modules(model, layers, device)
    else:
        model.to(device)
    cache = model.config.use_cache if hasattr(model.config, "use_cache") else None
    if cache is not None:
        model.config.use_cache = False
    try:
        yield (layers, *capture_block_calls(model, windows, batch_size, device, offload=offload))
    finally:
        if cache is not None:
            model.config.use_cache = cache


@contextmanager
def _visiting(block: torch.nn.Module, device: torch.device, offload: bool):
    """With ``offload``, the block on ``device`` while it is worked on, then back on the CPU."""
    if offload:
        block.to(device)
    try:
        yield
    finally:
        if offload:
            block.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()


def walk_blocks(model: torch.nn.Module, windows: torch.Tensor, *, batch_size: int = 8,
                device: torch.device = torch.device("cpu"), offload: bool = False, hessian: bool = False,
                regional: bool = False, refine=None):
    """Yield ``(index, block, layers, stats)`` for every decoder block in turn: ``stats`` holds the
    ``InputStats`` of the block's prunable ``layers`` over the calibration windows, gathered with
    the block called exactly as the model calls it. Whatever the consumer does to the block before
    asking for the next one (pruning it) is what the next block's inputs come from.

    With ``offload`` the model stays on the CPU and one block at a time visits ``device``. With
    ``regional`` every ``InputStats`` also gets ``regional``: the sum over calibration sequences of
    the squared gradient of the sequence's block-output l2 norm with respect to the layer's
    weight (Wanda++'s regional gradient), from one block-local backward per call. ``refine(index,
    block, layers, hidden, calls)``, when given, runs on each block before its statistics are taken.
    """
    with _prepared(model, windows, batch_size, device, offload) as (layers, hidden, calls):
        current = [0]  # sequences in the block call under way (the stats hooks cannot always see it)
        for i, block in enumerate(layers):
            with _visiting(block, device, offload):  # with offload, the block visits the device
                linears = find_linears(block)
                if refine is not None:
                    refine(i, block, linears, hidden, calls[i])
                stats, handles = attach(linears, hessian=hessian, sequences=lambda: current[0])
                ran = []  # the linears in the order the block's first call runs them
                probes = [m.register_forward_pre_hook(lambda mod, inp, n=n, ran=ran: ran.append(n))
                          for n, m in linears.items()]
                try:
                    for k, (x, call) in enumerate(zip(hidden, calls[i])):
                        current[0] = x.shape[0]
                        if k == 1:
                            for h in probes:
                                h.remove()
                            probes = []
                            if sorted(ran) == sorted(linears):  # each linear once per call: once the last one has its
                                # input, the rest of the call (its product, the residual) changes no statistic
                                handles.append(linears[ran[-1]].register_forward_pre_hook(_inputs_taken))
                        try:
                            run_block(block, x, call)
                        except _InputsTaken:
                            pass
                finally:
                    for h in handles + probes:
                        h.remove()
                if regional:
                    for name, g in regional_gradient_stats(block, linears, hidden, calls[i]).items():
                        stats[name].regional = g
                yield i, block, linears, stats
                # the (possibly pruned) outputs of this block are the next block's inputs
                if i + 1 < len(layers):
                    hidden = [run_block(block, x, call) for x, call in zip(hidden, calls[i])]


def _sequential_block(i: int, block, linears: Dict[str, torch.nn.Module], hidden, calls, prune, hessian: bool):
    """One pass of every calibration call through ``block``: at each linear's input every call adds
    its input to the linear's statistics, and once the last call has, ``prune(i, name, layer, stats)``
    prunes the linear before any call runs it. Returns the block's outputs (the next block's inputs).

    Each call is a greenlet (a coroutine on this thread): its hook at a linear's input switches back
    to the loop here, which resumes the calls in order and prunes the linear once all stand at it. The
    device sees the kernels of one thread in one order and the statistics add up in call order, as in
    the block walk. A switch costs microseconds and takes no lock: on a GPU the block's Python is what
    keeps the device fed, and threads handing a turn to each other starved it. A linear reading the
    very input an earlier one read (k/v after q, up after gate) shares its statistics, complete by
    then, and is pruned at once."""
    from greenlet import GreenletExit, getcurrent, greenlet  # only this walk needs it

    n = len(hidden)
    cur = [0]  # the call under way
    stats, handles = attach(linears, hessian=hessian, sequences=lambda: hidden[cur[0]].shape[0],
                            call=lambda: cur[0])  # the call's sequences (OPT flattens them)
    order: list = []  # the linears in the order the first call runs them
    points = [0] * n  # per call: how many linears it has reached
    outs: list = [None] * n
    main = getcurrent()  # the loop below; a call's hook switches back to it

    def hook(name):  # registered after the statistics' hooks, so it runs once the input is added
        def fn(mod, inp):
            b, p = cur[0], points[cur[0]]
            points[b] += 1
            if b == 0:
                if name in order:
                    raise RuntimeError(f"{name} runs more than once in a call of block {i}; prune.walk=sequential "
                                       "prunes a linear at its first input: use prune.walk=block")
                order.append(name)
            elif p >= len(order) or order[p] != name:
                raise RuntimeError(f"call {b} of block {i} runs {name} where the first call ran "
                                   f"{order[p] if p < len(order) else 'no more linears'}; prune.walk=sequential "
                                   "needs every call to run the same linears in the same order: use prune.walk=block")
            if stats[name].leader is not None:  # the leader's statistics, complete: pruned at once, no call waits
                if b == 0:
                    prune(i, name, linears[name], stats[name])
                return
            main.switch(name)
        return fn

    def body(b):
        outs[b] = run_block(block, hidden[b], calls[b])

    handles += [lin.register_forward_pre_hook(hook(name)) for name, lin in linears.items()]
    lets = [greenlet(lambda b=b: body(b)) for b in range(n)]
    try:
        while True:
            at = []
            for b, g in enumerate(lets):
                if g.dead:
                    continue
                cur[0] = b
                at.append(g.switch())  # runs call b to its next linear (the linear's name) or to its end (None)
            if not at:
                break
            if any(a != at[0] for a in at):
                raise RuntimeError(f"the calls of block {i} stopped at different linears ({', '.join(map(str, at))}); "
                                   "prune.walk=sequential needs every call to run the same linears: use prune.walk=block")
            if at[0] is None:
                break
            prune(i, at[0], linears[at[0]], stats[at[0]])
    finally:
        for h in handles:
            h.remove()
        for g in lets:
            if not g.dead:
                g.throw(GreenletExit)
    for name, lin in linears.items():
        if name not in order:  # never called: pruned from empty statistics, as the block walk does
            prune(i, name, lin, stats[name])
    return outs


def walk_sequential(model: torch.nn.Module, windows: torch.Tensor, prune, *, batch_size: int = 8,
                    device: torch.device = torch.device("cpu"), offload: bool = False, hessian: bool = False):
    """Prune every decoder block in one pass of its calibration calls (``_sequential_block``),
    yielding each block's index once it is pruned. Each linear's statistics come from the inputs
    the block's already pruned linears give it, and each block's from the pruned blocks before it:
    one forward of each block per batch, where the block walk needs a statistics pass and a pass
    of the pruned block."""
    with _prepared(model, windows, batch_size, device, offload) as (layers, hidden, calls):
        for i, block in enumerate(layers):
            with _visiting(block, device, offload):
                hidden = _sequential_block(i, block, find_linears(block), hidden, calls[i], prune, hessian)
            yield i


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


def check_walk(walk: str, method: Method) -> None:
    """The walk is known and the method can be walked that way (used by the config check too)."""
    if walk not in WALKS:
        raise ConfigError(f"prune.walk={walk!r} is not one of {', '.join(WALKS)}.")
    if walk == "sequential" and (method.needs_regional_gradients or method.refine_block is not None):
        raise ConfigError(f"prune.walk=sequential prunes each linear while the block's calls are under way, but "
                          f"prune.method={method.name} needs the whole block first (regional gradients, "
                          "block refinement); use prune.walk=block.")


def check_prunable(model: torch.nn.Module, pattern: str, method: Optional[Method] = None, options: Any = None) -> None:
    """Before anything is pruned: the model has prunable layers in its blocks, the method supports
    the pattern and its options fit it (e.g. SparseGPT's block size holds whole N:M groups), and an
    N:M pattern fits every layer (M divides each input width).
    Raises ConfigError naming the first thing that does not fit."""
    nm = parse_pattern(pattern)
    try:
        linears = block_linears(model)
    except ValueError as exc:
        raise ConfigError(f"{exc}.") from None
    if method is not None:
        check_method(method, nm, pattern, options)
    if nm is None:
        return
    m = nm[1]
    for name, lin in linears.items():
        if in_features(lin) % m:
            raise ConfigError(f"prune.pattern={pattern}: M={m} does not divide the input width {in_features(lin)} "
                              f"of {name}; choose an M that divides every layer's input width (e.g. 2:4 or 4:8).")


def check_method(method: Method, nm, pattern: str, options: Any) -> None:
    """The method supports the pattern and its options fit it (used by the config check too)."""
    kind = "unstructured" if nm is None else "n:m"
    if kind not in method.patterns:
        raise ConfigError(f"prune.method={method.name} does not support prune.pattern={pattern} "
                          f"(it supports: {', '.join(method.patterns)}).")
    if method.check is not None:
        method.check(options, nm)


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
