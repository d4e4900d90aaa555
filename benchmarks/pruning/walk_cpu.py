"""Wall time of Wanda and SparseGPT on the embedded SmolLM2-135M on this machine's CPU, from the model
in memory to the pruned model in memory, with N x L calibration windows of its own tokens: the cost
of the layer-by-layer walk where no GPU is lent. The masks' digest is recorded, so two runs (two
commits) can be compared for identical results as well as for time. A method spelled ``name@seq``
runs with ``walk="sequential"`` (one pass per block); ``--eval-windows`` adds the pruned model's
perplexity on that many windows of the validation tokens (a reduced protocol: the walks compared
on quality as well as time).

    python benchmarks/pruning/walk_cpu.py --gguf <SmolLM2 .gguf> --tokens .bench/smollm2_tokens.pt \\
        --out benchmarks/pruning/walk_cpu.json [--methods wanda,sparsegpt,wanda@seq] [--windows 32] [--seqlen 512] \\
        [--pattern 2:4 | --sparsity 0.7] [--eval-windows 16]

Needs torch, transformers and gguf.
"""

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import record  # noqa: E402
from taylorlab.evaluation.perplexity import perplexity as _perplexity  # noqa: E402
from taylorlab.models import load_gguf_model  # noqa: E402
from taylorlab.pruning import Calibration, prune_model  # noqa: E402
from taylorlab.pruning.structure import block_linears  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--tokens", required=True, help="token streams from benchmarks/order_effects/make_tokens.py --gguf")
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per method (the best is reported)")
    ap.add_argument("--pattern", default="unstructured", help="unstructured or N:M")
    ap.add_argument("--sparsity", type=float, default=0.5, help="of each layer, with --pattern unstructured")
    ap.add_argument("--eval-windows", type=int, default=0, help="perplexity on this many validation windows (0: none)")
    a = ap.parse_args()
    torch.manual_seed(0)
    ids = torch.load(a.tokens, weights_only=True)["train"].long()
    windows = ids[: a.windows * a.seqlen].view(a.windows, a.seqlen)
    val = torch.load(a.tokens, weights_only=True)["validation"].long()

    def perplexity(model):  # the evaluate stage's own: non-overlapping windows of --seqlen tokens
        return _perplexity(model, val, a.seqlen, batch_size=a.batch, max_windows=a.eval_windows)["ppl"]
    base, _ = load_gguf_model(a.gguf)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    rows = []
    if a.eval_windows:
        rows.append({"method": "dense", "ppl": round(perplexity(base), 4)})
        print(rows[-1], flush=True)
    for method in [m for m in a.methods.split(",") if m]:
        name, _, flag = method.partition("@")
        walk = {"": "block", "seq": "sequential"}[flag]
        times = []
        for _ in range(a.repeats):
            base.load_state_dict(state)
            t0 = time.perf_counter()
            prune_model(base, name, sparsity=a.sparsity, pattern=a.pattern, calibration=Calibration(windows=windows),
                        batch_size=a.batch, walk=walk)
            times.append(time.perf_counter() - t0)
        digest = hashlib.sha256()
        for _, lin in sorted(block_linears(base).items()):
            digest.update((lin.weight != 0).cpu().numpy().tobytes())
        rows.append({"method": method, "walk": walk, "pattern": a.pattern,
                     "sparsity": a.sparsity if a.pattern == "unstructured" else None, "wall_s": round(min(times), 3),
                     "all_s": [round(t, 3) for t in times], "mask_sha256": digest.hexdigest()[:16]})
        if a.eval_windows:
            rows[-1]["ppl"] = round(perplexity(base), 4)
        print(rows[-1], flush=True)
    record(Path(a.out), {"config": vars(a), "threads": torch.get_num_threads(), "results": rows})


if __name__ == "__main__":
    main()
