"""Where the time of Wanda's sequential walk and of GBLM's gradient pass goes on the Llama-2-7B shape
(random bf16 weights, --layers of its 32 blocks, 128 x 2048 calibration tokens): the walk's wall
time against the one-pass floor at several call batch sizes; the device time the profiler sees
against the wall time (what the GPU waits on the host); the kernels with the most self device time;
and the per-row mask of one layer's scores (the stable sort every per-row method uses) timed against
a threshold selection that gives the same mask.

    python benchmarks/pruning/walk_profile.py --out walk_profile.json [--layers 4] [--batches 8,16]
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

from block_profile import profiled  # noqa: E402
from common import record, require_cuda  # noqa: E402
from speed_7b import reinit, two_pass, windows_and_model  # noqa: E402
from taylorlab.pruning import Calibration, per_sequence_gradient_stats, prune_model  # noqa: E402
from taylorlab.pruning.masks import mask_per_row  # noqa: E402


def wall(fn):
    torch.cuda.synchronize()
    t0 = time.time()
    fn()
    torch.cuda.synchronize()
    return time.time() - t0


def kernel_profile(fn, n=25):
    """fn's wall time under the profiler, the summed self device time of its kernels, and the top ``n``."""
    torch.cuda.synchronize()
    t0 = time.time()
    averages = profiled(fn)  # one profiled run; its averages read once
    w = time.time() - t0
    total = sum(e.self_device_time_total for e in averages if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3
    ops = [e for e in averages if e.self_device_time_total > 0]
    rows = [{"kernel": e.key[:160], "calls": e.count, "self_device_ms": round(e.self_device_time_total / 1e3, 2)}
            for e in sorted(ops, key=lambda e: -e.self_device_time_total)[:n]]
    return {"wall_s_under_profiler": round(w, 3), "kernel_device_s": round(total / 1e3, 3), "top": rows}


def mask_by_threshold(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The mask of ``mask_per_row``: the k-th lowest score of a row is its threshold, everything below
    it is pruned, and of the scores equal to it the first ones by index, as a stable sort orders them."""
    k = int(scores.shape[1] * sparsity)
    v = torch.topk(scores, k, dim=1, largest=False, sorted=False).values.amax(1, keepdim=True)
    less = scores < v
    eq = scores == v
    need = k - less.sum(1, keepdim=True)
    return less | (eq & (torch.cumsum(eq, 1, dtype=torch.int32) <= need))


def time_masks(reps=5):
    out = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for shape in ((4096, 4096), (11008, 4096), (4096, 11008)):
        s = torch.rand(shape, device="cuda", generator=g)
        s[:, :64] = 0.5  # ties, as dequantised weights make
        a, b = mask_per_row(s, 0.5), mask_by_threshold(s, 0.5)
        ta = min(wall(lambda: mask_per_row(s, 0.5)) for _ in range(reps))
        tb = min(wall(lambda: mask_by_threshold(s, 0.5)) for _ in range(reps))
        out.append({"shape": list(shape), "sort_ms": round(ta * 1e3, 3), "threshold_ms": round(tb * 1e3, 3),
                    "masks_equal": bool(torch.equal(a, b))})
        print(out[-1], flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batches", default="8,16", help="call batch sizes of the walk to time")
    ap.add_argument("--grad-samples", type=int, default=16)
    args = ap.parse_args()
    if require_cuda("profiles GPU passes"):
        return 2
    windows, model = windows_and_model(args.nsamples, args.seqlen, args.layers)
    out = {"config": vars(args), "masks": time_masks()}
    cal = Calibration(windows)
    for b in (int(x) for x in args.batches.split(",")):
        reinit(model)
        floor = wall(lambda: two_pass(model, windows, batch_size=b, passes=1))
        t = wall(lambda: prune_model(model, "wanda", sparsity=0.5, batch_size=b, device=torch.device("cuda"),
                                     walk="sequential", calibration=cal))
        out.setdefault("walk", []).append({"batch": b, "one_pass_s": round(floor, 3), "wanda_seq_s": round(t, 3)})
        print(out["walk"][-1], flush=True)
        record(Path(args.out), out)
    reinit(model)
    out["wanda_seq_profile"] = kernel_profile(lambda: prune_model(
        model, "wanda", sparsity=0.5, batch_size=8, device=torch.device("cuda"), walk="sequential", calibration=cal))
    print(json.dumps(out["wanda_seq_profile"], indent=1), flush=True)
    reinit(model)
    g = windows[: args.grad_samples]
    out["gradient_s"] = round(wall(lambda: per_sequence_gradient_stats(model, g, batch_size=4, device=torch.device("cuda"))), 3)
    out["gradient_profile"] = kernel_profile(lambda: per_sequence_gradient_stats(model, g, batch_size=4,
                                                                                  device=torch.device("cuda")))
    print(json.dumps(out["gradient_profile"], indent=1), flush=True)
    record(Path(args.out), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
