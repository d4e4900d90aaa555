"""What a pruned model is worth when it runs: prefill latency, decode throughput, peak memory and the
bytes its weights take, for the same weights held dense or as 2:4 semi-structured sparse tensors.

Backends (how a decoder block's 2:4 linear layers are computed):
- ``dense``: ``nn.Linear`` as saved (a pruned model's zeros are multiplied like any other number);
- ``semi_structured``: ``torch.sparse.to_sparse_semi_structured`` weights, the path PyTorch documents
  (a tensor subclass; every call goes through ``__torch_dispatch__`` and cuSPARSELt);
- ``cslt``: the same compressed weights called through ``torch._cslt_sparse_mm`` from a small module
  (no subclass dispatch, the input's transpose fused into the call, the cuSPARSELt algorithm chosen
  once per layer by ``torch._cslt_sparse_mm_search`` instead of algorithm 0).
Each can run eagerly or as a CUDA graph (``graph``): captured once per input shape and replayed, so
the host-side work of every call (plan and descriptor set-up, Python dispatch) is paid at capture
time only.

The 2:4 backends need a CUDA device of compute capability ≥ 8.0 with cuSPARSELt and bf16/fp16
weights; where they cannot run, the row says why instead of a number.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

BACKENDS = ("dense", "semi_structured", "cslt")
MODES = ("eager", "graph")


# ---------------------------------------------------------------- which layers are 2:4

def is_two_four(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive inputs of every output row holds at most 2 non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def block_linears(model: nn.Module) -> List[Tuple[str, nn.Linear]]:
    """The ``nn.Linear`` layers inside the decoder blocks (what the pruners prune; not embeddings or head)."""
    from taylorlab.pruning.structure import block_linears as prunable  # the one place that knows architectures

    return [(n, m) for n, m in prunable(model).items() if isinstance(m, nn.Linear)]


def semi_structured_support(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when the 2:4 kernels can run here, else the reason in words."""
    if device.type != "cuda":
        return f"2:4 kernels run on CUDA only (device is {device.type})"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"2:4 kernels need compute capability >= 8.0 (this GPU is {major}.{minor})"
    if not torch.backends.cusparselt.is_available():
        return "this PyTorch build has no cuSPARSELt"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"2:4 kernels here take float16/bfloat16 weights (dtype is {str(dtype).replace('torch.', '')})"
    return None


# ---------------------------------------------------------------- the direct cuSPARSELt linear

class CsltLinear(nn.Module):
    """``y = x W^T + b`` with W compressed once by cuSPARSELt and called without the tensor subclass."""

    # bf16/fp16: cuSPARSELt wants the dense operand's rows in multiples of 8 (torch's own constraint table)
    ROW_MULTIPLE = 8

    def __init__(self, linear: nn.Linear, search: bool = True):
        super().__init__()
        w = linear.weight.detach().contiguous()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.register_buffer("packed", torch._cslt_compress(w), persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.alg_id = 0
        if search:  # once, at a representative shape; algorithm 0 is what the subclass uses
            probe = torch.zeros(128, self.in_features, dtype=w.dtype, device=w.device)
            self.alg_id = int(torch._cslt_sparse_mm_search(self.packed, probe.t(), bias=self.bias,
                                                           transpose_result=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        rows = x2.shape[0]
        pad = (-rows) % self.ROW_MULTIPLE
        if pad:
            x2 = torch.nn.functional.pad(x2, (0, 0, 0, pad))
        y = torch._cslt_sparse_mm(self.packed, x2.t(), bias=self.bias, transpose_result=True, alg_id=self.alg_id)
        if pad:
            y = y[:rows]
        return y.reshape(*shape[:-1], self.out_features)


def _set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def apply_backend(model: nn.Module, backend: str) -> Dict[str, object]:
    """Swap every 2:4 block linear to ``backend`` in place; returns what was converted and what was not."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    linears = block_linears(model)
    two_four = [(n, m) for n, m in linears if is_two_four(m.weight)]
    info: Dict[str, object] = {"block_linears": len(linears), "two_four_linears": len(two_four), "converted": 0}
    if backend == "dense":
        return info
    converted, refused = 0, []
    for name, mod in two_four:
        try:
            if backend == "semi_structured":
                mod.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(mod.weight.detach()),
                                          requires_grad=False)
            else:
                _set_module(model, name, CsltLinear(mod))
            converted += 1
        except RuntimeError as exc:  # a shape the kernels refuse: stays dense, said so
            refused.append(f"{name}: {str(exc).splitlines()[0]}")
    info["converted"] = converted
    if refused:
        info["refused"] = refused
    return info


def weight_bytes(model: nn.Module) -> int:
    """Bytes the parameters and buffers take on the device (2:4 tensors: values plus metadata)."""
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    for t in tensors:
        parts = []
        if isinstance(t, torch.sparse.SparseSemiStructuredTensor):
            parts = [p for p in (t.packed, t.meta, t.packed_t, t.meta_t) if p is not None]
        else:
            parts = [t.data if isinstance(t, nn.Parameter) else t]
        for p in parts:
            key = (p.untyped_storage().data_ptr(), p.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                total += p.untyped_storage().nbytes()
    return total


# ---------------------------------------------------------------- timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, min_run_time: float = 0.5) -> Dict[str, float]:
    """Median seconds per call (torch.utils.benchmark: warm-up, blocks of calls, CUDA synchronised)."""
    from torch.utils import benchmark

    fn()
    _sync(device)
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
    return {"median_s": float(m.median), "iqr_s": float(m.iqr), "runs": len(m.times)}


class GraphedForward:
    """The model's forward over a fixed input shape as a CUDA graph (the last position's logits)."""

    def __init__(self, model: nn.Module, input_ids: torch.Tensor):
        self.input_ids = input_ids.clone()
        side = torch.cuda.Stream(device=input_ids.device)
        side.wait_stream(torch.cuda.current_stream(input_ids.device))
        with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
            for _ in range(2):
                _forward(model, self.input_ids)
        torch.cuda.current_stream(input_ids.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = _forward(model, self.input_ids)

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.input_ids.copy_(input_ids)
        self.graph.replay()
        return self.logits


class GraphedDecode:
    """Greedy decoding of a batch with one step (embed, every block, the head, argmax) captured as a
    CUDA graph over a static KV cache (transformers' ``StaticCache``); the prompt is prefilled
    eagerly. The step reads the token and the cache position from device tensors, so each replay
    decodes the next token for real. ``capture=False`` runs the same step eagerly (any device)."""

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, new_tokens: int, capture: bool = True):
        from transformers import StaticCache

        b, p = input_ids.shape
        self.model, self.capture, self.prompt_len, self.new_tokens = model, capture, p, new_tokens
        self.cache = StaticCache(config=model.config, max_cache_len=p + new_tokens + 2)
        device = input_ids.device
        out = model(input_ids=input_ids, past_key_values=self.cache, cache_position=torch.arange(p, device=device),
                    use_cache=True, logits_to_keep=1)
        self.first = out.logits[:, -1].argmax(-1, keepdim=True)
        self.token = self.first.clone()
        self.position = torch.tensor([p], device=device)
        if capture:
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step()
                    self._rewind()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.next = self._step()
        self._rewind()

    def _rewind(self) -> None:
        """Back to the first decoded token; caches that count their own length (newer transformers
        keep a device counter per layer) are set back with it, so the step writes where it should."""
        self.position.fill_(self.prompt_len)
        self.token.copy_(self.first)
        for layer in getattr(self.cache, "layers", []):
            counter = getattr(layer, "cumulative_length", None)
            if isinstance(counter, torch.Tensor):
                counter.fill_(self.prompt_len)

    def _step(self) -> torch.Tensor:
        out = self.model(input_ids=self.token, past_key_values=self.cache, cache_position=self.position,
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1, keepdim=True)

    def run(self, n: int) -> torch.Tensor:
        """The first n greedy tokens after the prompt (the first comes from the prefill)."""
        if n > self.new_tokens:
            raise ValueError(f"{n} tokens asked of a cache built for {self.new_tokens}")
        self._rewind()
        out = [self.first.clone()]
        for _ in range(n - 1):
            if self.capture:
                self.graph.replay()
                nxt = self.next
            else:
                nxt = self._step()
            out.append(nxt.clone())
            self.token.copy_(nxt)
            self.position.add_(1)
        return torch.cat(out, 1)

    def seconds_per_step(self, repeats: int = 3) -> float:
        """Median over ``repeats`` decodes of ``new_tokens`` of the wall time per step (synchronised)."""
        device = self.first.device
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            _sync(device)
            t0 = time.perf_counter()
            self.run(self.new_tokens)
            _sync(device)
            times.append((time.perf_counter() - t0) / max(self.new_tokens - 1, 1))
        return float(statistics.median(times[1:]))


def _forward(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    # a prompt's forward as generation's prefill needs it: only the last position's logits
    return model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits


# ---------------------------------------------------------------- one model, one backend, one mode

@dataclass
class InferenceSpec:
    prompt_lengths: Sequence[int] = (128, 2048, 8192)
    prefill_batch: int = 1
    decode_batches: Sequence[int] = (1, 16)
    decode_prompt: int = 128
    decode_tokens: int = 32
    check_length: int = 128
    min_run_time: float = 0.5
    seed: int = 0


def prompts(vocab_size: int, batch: int, length: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Token ids drawn uniformly (speed does not depend on which tokens; the check compares backends)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + batch * 10_007 + length)
    return torch.randint(0, vocab_size, (batch, length), generator=g).to(device)


@torch.no_grad()
def last_logits(model: nn.Module, input_ids: torch.Tensor, mode: str = "eager") -> torch.Tensor:
    """The last position's logits in float32, computed the way ``mode`` runs the model."""
    if mode == "graph":
        return GraphedForward(model, input_ids)(input_ids).float().clone()
    return _forward(model, input_ids).float()


def compare(reference: torch.Tensor, other: torch.Tensor) -> Dict[str, float]:
    """How far one backend's logits are from the reference's: max |Δ| relative to max |reference|."""
    diff = (reference - other).abs().max().item()
    scale = reference.abs().max().item() or 1.0
    agree = (reference.argmax(-1) == other.argmax(-1)).float().mean().item()
    return {"max_abs_diff": diff, "rel_max_diff": diff / scale, "top1_agreement": agree}


@torch.no_grad()
def measure(model: nn.Module, spec: InferenceSpec, *, mode: str = "eager",
            progress: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Prefill seconds per prompt length, decode tokens/s per batch and the peak memory of both."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    say = progress or (lambda s: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    out: Dict[str, object] = {"mode": mode, "weight_bytes": weight_bytes(model), "prefill": {}, "decode": {}}
    for L in spec.prompt_lengths:
        ids = prompts(vocab, spec.prefill_batch, L, device, spec.seed)
        say(f"prefill {L} tokens ({mode})")
        if mode == "graph":
            g = GraphedForward(model, ids)
            t = time_call(lambda: g(ids), device, spec.min_run_time)
            del g
        else:
            t = time_call(lambda: _forward(model, ids), device, spec.min_run_time)
        out["prefill"][str(L)] = {**t, "tokens_per_s": spec.prefill_batch * L / t["median_s"]}
    for b in spec.decode_batches:
        ids = prompts(vocab, b, spec.decode_prompt, device, spec.seed)
        say(f"decode batch {b} ({spec.decode_tokens} tokens, {mode})")
        if mode == "graph":  # one captured step over a static cache, replayed token after token
            g = GraphedDecode(model, ids, spec.decode_tokens)
            step = g.seconds_per_step()
            out["decode"][str(b)] = {"tokens_per_s": b / step, "ms_per_step": 1e3 * step}
            del g
            continue
        full = time_call(lambda: _generate(model, ids, spec.decode_tokens), device, spec.min_run_time)
        first = time_call(lambda: _generate(model, ids, 1), device, spec.min_run_time)
        steps = full["median_s"] - first["median_s"]
        row = {"generate_s": full["median_s"], "first_token_s": first["median_s"], "tokens_per_s": None,
               "ms_per_step": None}
        if steps > 0:
            row.update(tokens_per_s=b * (spec.decode_tokens - 1) / steps,
                       ms_per_step=1e3 * steps / (spec.decode_tokens - 1))
        else:  # n tokens took no longer than 1: timing noise of a tiny model, no number to give
            row["note"] = f"{spec.decode_tokens} tokens timed no slower than 1; raise decode_length"
        out["decode"][str(b)] = row
    out["peak_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return out


def _generate(model: nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    # exactly n new tokens: no end-of-sequence stop, greedy (speed, not text, is measured)
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                          min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)


def ratio_table(rows: List[Dict[str, object]], is_baseline: Callable[[Dict[str, object]], bool]) -> None:
    """Speed-ups of every measured row against the baseline row run the same way (eager or graph):
    ``prefill_speedup`` (baseline seconds ÷ row seconds) and ``decode_speedup`` (tokens/s ÷ baseline
    tokens/s); and ``prefill_speedup_vs_eager_dense`` against the eager baseline."""
    base = {r["mode"]: r for r in rows if not r.get("skipped") and is_baseline(r)}
    for r in rows:
        if r.get("skipped") or r["mode"] not in base:
            continue
        b0 = base[r["mode"]]
        r["prefill_speedup"] = {L: b0["prefill"][L]["median_s"] / v["median_s"]
                                for L, v in r["prefill"].items() if L in b0["prefill"]}
        r["decode_speedup"] = {b: v["tokens_per_s"] / b0["decode"][b]["tokens_per_s"]
                               for b, v in r["decode"].items() if b in b0.get("decode", {})
                               and v["tokens_per_s"] and b0["decode"][b]["tokens_per_s"]}
        if "eager" in base:
            r["prefill_speedup_vs_eager_dense"] = {L: base["eager"]["prefill"][L]["median_s"] / v["median_s"]
                                                   for L, v in r["prefill"].items() if L in base["eager"]["prefill"]}


def tolerance(dtype: torch.dtype) -> float:
    """Relative logit tolerance between backends: a few units of the dtype's last place, summed over a model."""
    return {torch.bfloat16: 5e-2, torch.float16: 1e-2}.get(dtype, 1e-4)


def fits(lengths: Sequence[int], context: int) -> Tuple[List[int], List[int]]:
    kept = [L for L in lengths if L <= context]
    return kept, [L for L in lengths if L > context]


__all__ = ["BACKENDS", "MODES", "CsltLinear", "GraphedDecode", "GraphedForward", "InferenceSpec", "apply_backend",
           "block_linears", "compare", "fits", "is_two_four", "last_logits", "measure", "prompts", "ratio_table",
           "semi_structured_support", "time_call", "tolerance", "weight_bytes"]
