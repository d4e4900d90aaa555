"""Where the time of one decoder-block pass goes, on the Llama-2-7B shape (random bf16 weights): the
call the block receives (attention implementation, mask), the achieved TFLOP/s of one pass over a
batch of the calibration windows, the same for the GEMMs alone, and torch.profiler's top operators
for the block pass and for one batch of GBLM's per-sequence gradient pass. With ``--ro``: instead,
Wanda++'s regional optimisation of the first block (5 rounds x 32 of --windows sequences, bf16
products), timed, then profiled once: the time of each of its named phases and its top operators.

    python benchmarks/pruning/block_profile.py --out profile.json [--layers 2] [--batch 8]
    python benchmarks/pruning/block_profile.py --ro --out ro_profile.json [--windows 128]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import record, require_cuda  # noqa: E402
from speed_7b import build, reinit  # noqa: E402
from taylorlab.pruning import per_sequence_gradient_stats  # noqa: E402
from taylorlab.pruning.structure import capture_block_calls, find_decoder_layers, find_linears, run_block  # noqa: E402


def timed(fn, reps=5):
    fn()
    torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.time() - t0) / reps


def describe(v):
    if isinstance(v, torch.Tensor):
        return f"tensor{tuple(v.shape)} {v.dtype}"
    if isinstance(v, (tuple, list)):
        return [describe(x) for x in v]
    return repr(v)[:80]


def profiled(fn):
    """torch.profiler's operator averages of one run of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return prof.key_averages()


def top_ops(fn, n=15, keep=lambda key: True, averages=None):
    """The ``n`` operators (those ``keep`` admits) with the most device time, from ``averages`` when
    given (one profiled run read twice), else from profiling ``fn``."""
    rows = []
    for e in sorted(averages if averages is not None else profiled(fn), key=lambda e: -e.device_time_total):
        if keep(e.key) and len(rows) < n:
            rows.append({"op": e.key, "calls": e.count, "device_ms": round(e.device_time_total / 1e3, 2),
                         "host_ms": round(e.cpu_time_total / 1e3, 2)})
    return rows


def ro_profile(args) -> dict:
    """Wanda++'s regional optimisation on the first block of the 7B shape, as the walk runs it."""
    from taylorlab.pruning import registry
    from taylorlab.pruning.methods.wandapp import regional_optimisation
    from taylorlab.pruning.registry import BlockTask

    model = build(1)
    reinit(model)
    windows = torch.randint(0, 32000, (args.windows, args.seqlen), generator=torch.Generator().manual_seed(0))
    hidden, calls = capture_block_calls(model, windows, args.batch, torch.device("cuda"))
    block = find_decoder_layers(model)[1][0]
    opts = registry.get("wanda++").make_options({"ro_iters": 5, "ro_samples": 32, "ro_lr": 1e-5,
                                                 "ro_precision": "bfloat16"})
    task = BlockTask(0, block, find_linears(block), hidden, calls[0], 0.5, None, opts)
    out = {"config": vars(args), "ro_block_s": timed(lambda: regional_optimisation(task), reps=2)}
    averages = profiled(lambda: regional_optimisation(task))
    out["ro_phases"] = top_ops(None, n=10, keep=lambda k: k.startswith("wanda++ ro:"), averages=averages)
    out["ro_top_ops"] = top_ops(None, n=20, keep=lambda k: not k.startswith("wanda++"), averages=averages)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--ro", action="store_true", help="profile Wanda++'s regional optimisation instead")
    ap.add_argument("--windows", type=int, default=128, help="calibration sequences (--ro)")
    args = ap.parse_args()
    if require_cuda("profiles a GPU pass"):
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.ro:
        out = ro_profile(args)
        record(Path(args.out), out)
        print(json.dumps(out, indent=1), flush=True)
        return 0
    model = build(args.layers)
    reinit(model)
    out = {"config": vars(args), "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    windows = torch.randint(0, 32000, (args.batch, args.seqlen), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden, calls = capture_block_calls(model, windows, args.batch, torch.device("cuda"))
        block = find_decoder_layers(model)[1][0]
        call = calls[0][0]
        out["call"] = {"args": describe(call.args), "kwargs": {k: describe(v) for k, v in call.kwargs.items()}}
        x = hidden[0]
        t = timed(lambda: run_block(block, x, call))
        tokens = x.shape[0] * x.shape[1]
        params = sum(p.numel() for n, p in block.named_parameters() if p.dim() == 2)
        out["block_pass_s"] = t
        out["block_pass_tflops_linear_only"] = 2 * params * tokens / t / 1e12
        a = torch.randn(tokens, 4096, device="cuda", dtype=torch.bfloat16)
        w1 = torch.randn(11008, 4096, device="cuda", dtype=torch.bfloat16)
        w2 = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        tg = timed(lambda: (a @ w1.t(), a @ w2.t()))
        out["gemm_tflops"] = 2 * tokens * 4096 * (11008 + 4096) / tg / 1e12
        out["block_top_ops"] = top_ops(lambda: run_block(block, x, call))
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            try:
                out["block_pass_flash_only_s"] = timed(lambda: run_block(block, x, call))
            except RuntimeError as exc:
                out["block_pass_flash_only_s"] = f"error: {str(exc)[:200]}"
    g = windows[:4]
    out["gradient_batch_s"] = timed(lambda: per_sequence_gradient_stats(model, g, batch_size=4, device=torch.device("cuda")), reps=2)
    out["gradient_top_ops"] = top_ops(lambda: per_sequence_gradient_stats(model, g, batch_size=4, device=torch.device("cuda")))
    record(Path(args.out), out)
    for k, v in out.items():
        print(k, v if not isinstance(v, list) else "", flush=True)
        if isinstance(v, list):
            for r in v:
                print("   ", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
