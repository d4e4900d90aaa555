"""Perplexity of SmolLM2-135M (the embedded GGUF) pruned with every method and pattern.

Calibration: 128 windows of 2048 tokens (seed 0) from the Wikipedia-leads calibration split;
evaluation: the full-articles test split, non-overlapping windows of 2048 tokens. Splits are the
data stage's JSON-lines files (made by taylorlab.data.build_default_splits).

    python benchmarks/pruning/quality_smollm2.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --data DIR --out results.json
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import record  # noqa: E402
from taylorlab.data.tokens import sample_windows, tokenize_texts  # noqa: E402
from taylorlab.evaluation import perplexity  # noqa: E402
from taylorlab.models import load_gguf_model  # noqa: E402
from taylorlab.pruning import per_sequence_gradient_stats, prune_model, sparsity_report  # noqa: E402


def texts(path):
    return [json.loads(line)["text"] for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt,gblm")
    ap.add_argument("--patterns", default="unstructured,2:4,4:8")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    dense, tok = load_gguf_model(Path(args.gguf), dtype=args.dtype)
    dense.to(dev)
    load_s = time.time() - t0
    seqlen = min(args.seqlen, dense.config.max_position_embeddings)
    test = tokenize_texts(tok, texts(Path(args.data) / "test.jsonl"))
    calib = sample_windows(tokenize_texts(tok, texts(Path(args.data) / "calibration.jsonl")), args.nsamples, seqlen, 0)
    results = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)", "seq_len": seqlen,
               "nsamples": args.nsamples, "test_tokens": int(test.numel()), "gguf_load_s": round(load_s, 1), "rows": []}
    dense_ppl = perplexity(dense, test, seqlen, batch_size=4, device=dev)
    results["rows"].append({"method": "dense", "pattern": "-", "ppl": dense_ppl["ppl"], "windows": dense_ppl["windows"]})
    print("dense", dense_ppl, flush=True)
    t0 = time.time()
    grads = per_sequence_gradient_stats(dense, calib, batch_size=8, norm="l2", device=dev)
    results["gradient_pass_s"] = round(time.time() - t0, 1)
    state = copy.deepcopy(dense.state_dict())
    for pattern in args.patterns.split(","):
        for method in args.methods.split(","):
            dense.load_state_dict(state)
            t0 = time.time()
            prune_model(dense, method=method, sparsity=0.5, pattern=pattern, windows=calib, gradients=grads,
                        grad_nsamples=args.nsamples, batch_size=16, device=dev)
            prune_s = time.time() - t0
            ppl = perplexity(dense, test, seqlen, batch_size=4, device=dev)
            row = {"method": method, "pattern": pattern, "sparsity": 0.5, "ppl": ppl["ppl"],
                   "block_sparsity": round(sparsity_report(dense)["total"]["sparsity"], 4), "prune_s": round(prune_s, 1)}
            results["rows"].append(row)
            print(row, flush=True)
            record(Path(args.out), results)
    print(f"\n{'method':10s} {'pattern':12s} {'ppl':>9s}")
    for r in results["rows"]:
        print(f"{r['method']:10s} {r['pattern']:12s} {r['ppl']:9.2f}")


if __name__ == "__main__":
    main()
