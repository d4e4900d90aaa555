"""A whole 2:4-pruned model at serving time: prefill latency per prompt length, decode tokens/s and peak
memory, dense weights against torch's semi-structured kernels and the direct cuSPARSELt call, eager
and as CUDA graphs, with every backend's logits checked against the dense-masked model.

Models: ``smollm2`` (the embedded SmolLM2-135M from its GGUF when --gguf is given, else its shape
with random weights) and ``7b`` (the Llama-2-7B shape, random weights: speed does not depend on the
values). The 2:4 mask keeps the 2 largest magnitudes of every 4 inputs (what magnitude 2:4 does).

    python benchmarks/inference/model_speed.py --model 7b --out benchmarks/inference/model_speed_7b_h200.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import record, require_cuda  # noqa: E402

from taylorlab.evaluation import inference as inf  # noqa: E402

SHAPES = {  # LlamaConfig fields of the two shapes
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=8192),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True),
}


def build(name: str, gguf: Path | None, layers: int | None, device, dtype):
    if name == "smollm2" and gguf is not None:
        from taylorlab.models import load_gguf_model

        model, _ = load_gguf_model(gguf, dtype="bfloat16")
        return model.to(device), "SmolLM2-135M-Instruct (embedded GGUF weights)"
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(SHAPES[name])
    if layers:
        cfg["num_hidden_layers"] = layers
    config = LlamaConfig(**cfg, attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model, f"{name} shape, random weights, {config.num_hidden_layers} layers"


@torch.no_grad()
def mask_two_four(model) -> None:
    for _, lin in inf.block_linears(model):
        w = lin.weight.data
        g = w.reshape(w.shape[0], -1, 4)
        keep = g.abs().topk(2, dim=-1).indices
        g.mul_(torch.zeros_like(g, dtype=torch.bool).scatter_(-1, keep, True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=list(SHAPES), required=True)
    ap.add_argument("--gguf", type=Path, default=None, help="the SmolLM2 GGUF (real weights); else random")
    ap.add_argument("--layers", type=int, default=None, help="fewer decoder layers than the shape's own")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 2048, 8192])
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--backends", nargs="+", default=["dense", "semi_structured", "cslt"], choices=inf.BACKENDS)
    ap.add_argument("--modes", nargs="+", default=["eager", "graph"], choices=inf.MODES)
    ap.add_argument("--min-run-time", type=float, default=0.5)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if require_cuda("measures the GPU"):
        return 2
    dev, dtype = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    base, what = build(a.model, a.gguf, a.layers, dev, dtype)
    base.eval()
    mask_two_four(base)
    spec = inf.InferenceSpec(prompt_lengths=a.lengths, decode_batches=a.decode_batches, decode_tokens=a.decode_tokens,
                             min_run_time=a.min_run_time)
    check_ids = inf.prompts(base.config.vocab_size, 2, 128, dev, seed=1)
    reference = inf.last_logits(base, check_ids)
    rows = []
    for backend in a.backends:
        t0 = time.time()
        model = base if backend == "dense" else copy.deepcopy(base)
        conv = inf.apply_backend(model, backend)
        if model is not base:
            base.cpu()  # the peak memory measured is this model's alone
        convert_s = time.time() - t0
        for mode in a.modes:
            try:
                logits = inf.last_logits(model, check_ids, mode)
                row = {"backend": backend, "mode": mode, "layers": conv, "convert_s": convert_s,
                       "check": {**inf.compare(reference, logits), "tolerance": inf.tolerance(dtype)}}
                row.update(inf.measure(model, spec, mode=mode, progress=lambda s: print("  ", backend, s, flush=True)))
            except RuntimeError as exc:  # e.g. a capture the model refuses: the row says so, the others run
                print(backend, mode, "failed:", exc, flush=True)
                rows.append({"backend": backend, "mode": mode, "skipped": f"{type(exc).__name__}: {exc}"[:500]})
                torch.cuda.synchronize()
                continue
            rows.append(row)
            print(backend, mode, {L: round(v["median_s"] * 1e3, 2) for L, v in row["prefill"].items()},
                  {b: round(v["tokens_per_s"], 1) for b, v in row["decode"].items()},
                  f"peak {row['peak_bytes'] / 2**30:.1f} GiB", "check", round(row["check"]["rel_max_diff"], 4),
                  flush=True)
        if model is not base:
            del model
            torch.cuda.empty_cache()
            base.to(dev)
    inf.ratio_table(rows, lambda r: r["backend"] == "dense")  # against the dense-masked weights
    record(a.out, {"model": what, "config": base.config.to_dict(), "dtype": "bfloat16", "spec": vars(spec),
                   "rows": rows})
    for r in (r for r in rows if "prefill_speedup" in r):
        print(r["backend"], r["mode"], "prefill x dense:", {L: round(v, 3) for L, v in r["prefill_speedup"].items()},
              "decode x dense:", {b: round(v, 3) for b, v in r.get("decode_speedup", {}).items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
