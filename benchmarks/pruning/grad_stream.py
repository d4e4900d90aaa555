"""GBLM's per-sequence gradient pass on the Llama-2-7B shape (random bf16 weights, 128 x 2048 windows,
one GPU) with the per-sequence products on the backward's own stream and on a side stream: wall time
of each (alternating, twice), and whether the accumulated sums are bitwise equal.

    python benchmarks/pruning/grad_stream.py --out grad_stream.json [--layers 32] [--grad-batch 4]
"""

import argparse
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--grad-batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    if require_cuda("times a GPU pass"):
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    windows = torch.randint(0, 32000, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    model = build(args.layers)
    reinit(model)
    out = {"config": vars(args), "runs": []}
    first = {}
    for rep in range(args.reps):
        for side in (False, True):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.time()
            acc = per_sequence_gradient_stats(model, windows, batch_size=args.grad_batch, device=torch.device("cuda"),
                                              side_stream=side)
            torch.cuda.synchronize()
            row = {"side_stream": side, "rep": rep, "wall_s": round(time.time() - t0, 3),
                   "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
            if rep == 0 and not side:
                first = {k: v.cpu() for k, v in acc.items()}
            else:
                row["bitwise_equal_to_main_stream"] = all(torch.equal(first[k], v.cpu()) for k, v in acc.items())
            del acc
            out["runs"].append(row)
            print(row, flush=True)
            record(Path(args.out), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
