"""2:4 against dense, one linear layer at a time, at the Llama-2-7B shapes: where does the 2:4 path's
fixed per-call cost come from, and what removes it from the calling side?

Per shape and token count: dense F.linear; torch's semi-structured subclass (the documented path);
taylorlab's CsltLinear (direct torch._cslt_sparse_mm, algorithm 0 and the searched one); each eagerly
and replayed from a CUDA graph (host work paid once at capture). A torch.profiler trace of one call
splits host time (dispatch, cuSPARSELt set-up) from the kernel's own time.

    python benchmarks/inference/kernels_2to4.py --out benchmarks/inference/kernels_2to4_h200.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import record, require_cuda  # noqa: E402

from taylorlab.evaluation.inference import CsltLinear, time_call  # noqa: E402

SHAPES = {"q_proj": (4096, 4096), "gate_proj": (11008, 4096), "down_proj": (4096, 11008)}


def two_four(out_f: int, in_f: int, device, dtype) -> torch.Tensor:
    w = torch.randn(out_f, in_f, device=device, dtype=dtype)
    keep = w.reshape(out_f, -1, 4).abs().topk(2, dim=-1).indices  # the 2 largest of every 4: a 2:4 mask
    mask = torch.zeros_like(w.reshape(out_f, -1, 4), dtype=torch.bool).scatter_(-1, keep, True)
    return (w.reshape(out_f, -1, 4) * mask).reshape(out_f, in_f)


def graphed(fn, x):
    """A CUDA graph of one call of fn on x's buffer; returns the replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(x)
    return g.replay


def profile_call(fn, x, reps: int = 20) -> dict:
    """Host (CPU) time per call by operator and device time per call by kernel, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn(x)
        torch.cuda.synchronize()
    host, device = {}, {}
    for e in prof.key_averages():
        if e.self_cpu_time_total > 0:
            host[e.key] = e.self_cpu_time_total / reps
        dev = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if dev > 0:
            device[e.key] = dev / reps
    top = lambda d: dict(sorted(d.items(), key=lambda kv: -kv[1])[:8])  # noqa: E731
    return {"host_us_per_call": top(host), "device_us_per_call": top(device),
            "host_us_total": sum(host.values()), "device_us_total": sum(device.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 128, 2048, 8192])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--min-run-time", type=float, default=0.2)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if require_cuda("times CUDA kernels"):
        return 2
    dev, dtype = torch.device("cuda"), torch.bfloat16
    rows, profiles = [], {}
    for name in a.shapes:
        out_f, in_f = SHAPES[name]
        w = two_four(out_f, in_f, dev, dtype)
        lin = torch.nn.Linear(in_f, out_f, bias=False, device=dev, dtype=dtype)
        lin.weight.data.copy_(w)
        w_sub = torch.sparse.to_sparse_semi_structured(w)
        cslt0, cslt = CsltLinear(lin, search=False), CsltLinear(lin, search=True)
        paths = {"dense": lambda x: F.linear(x, w), "semi_structured": lambda x: F.linear(x, w_sub),
                 "cslt_alg0": cslt0, "cslt_searched": cslt}
        for n in a.tokens:
            x = torch.randn(n, in_f, device=dev, dtype=dtype)
            ref = F.linear(x, w).float()
            row = {"shape": name, "out": out_f, "in": in_f, "tokens": n, "alg_id": cslt.alg_id}
            for p, fn in paths.items():
                err = (fn(x).float() - ref).abs().max().item() / (ref.abs().max().item() or 1.0)
                row[f"{p}_rel_err"] = err
                row[f"{p}_eager_us"] = 1e6 * time_call(lambda: fn(x), dev, a.min_run_time)["median_s"]
                try:
                    replay = graphed(fn, x)
                    row[f"{p}_graph_us"] = 1e6 * time_call(replay, dev, a.min_run_time)["median_s"]
                except Exception as exc:  # capture refused: said, not hidden
                    row[f"{p}_graph_us"] = None
                    row[f"{p}_graph_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            for p in ("semi_structured", "cslt_alg0", "cslt_searched"):
                for m in ("eager", "graph"):
                    d, s = row.get(f"dense_{m}_us"), row.get(f"{p}_{m}_us")
                    row[f"{p}_{m}_speedup"] = d / s if d and s else None
            rows.append(row)
            print(name, n, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                            if k.endswith(("_us", "speedup"))}, flush=True)
        x = torch.randn(128, in_f, device=dev, dtype=dtype)
        profiles[name] = {p: profile_call(fn, x) for p, fn in paths.items()}
        print(name, "profile", {p: (round(v["host_us_total"]), round(v["device_us_total"]))
                                for p, v in profiles[name].items()}, flush=True)
    record(a.out, {"dtype": "bfloat16", "rows": rows, "profile_128_tokens": profiles,
                   "cusparselt_version": getattr(torch.backends.cusparselt, "version", lambda: None)()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
