"""Perplexity of SmolLM2-135M (the embedded GGUF) pruned with every method and pattern — through the
pipeline (`pipelines/run.py`), so the numbers are what a user's `-m` sweep produces: one code path.

Protocol (conf/experiment/smollm2_prune.yaml): calibration 128 windows of 2048 tokens (seed 0) from the
Wikipedia-leads calibration split; perplexity on the full-articles test split, non-overlapping
windows of 2048 tokens; 50% unstructured, 2:4 and 4:8 (``--grid beyond``: every registered method at
50 / 60 / 70% unstructured with the uniform and the OWL profile, and at 2:4 and 4:8).

    python benchmarks/pruning/quality_smollm2.py --out quality_smollm2_pipeline.json \
        [--device cuda] [--cpu-masks magnitude] [--gguf /abs/path.gguf] [--grid seeds|beyond] [--set key=value ...]

``--cpu-masks M`` also runs method M with ``prune.device=cpu`` (masks chosen on the CPU, the rest on
``--device``) and records whether its perplexities equal the device's.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import record  # noqa: E402
from taylorlab.report import collect_results  # noqa: E402


def run(overrides, out_dir):
    cmd = [sys.executable, str(ROOT / "pipelines" / "run.py"), "-m", "model=smollm2", "experiment=smollm2_prune",
           f"out_dir={out_dir}", "launcher=inline", "hydra/job_logging=none", "hydra/hydra_logging=none", *overrides]
    print("+", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, text=True)
    return proc.returncode, time.time() - t0


def rows_of(run_dir):
    rows = []
    for r in collect_results([run_dir]):
        rows.append({"method": r["method"], "pattern": r["pattern"], "sparsity": r["sparsity"], "ppl": r["ppl"],
                     "stage": r["stage"],
                     "mask_device": r.get("mask_device"), "split": r.get("split"), "seq_len": r.get("seq_len"),
                     "windows": r.get("windows")})
    return sorted(rows, key=lambda r: (r["method"] != "dense", str(r["pattern"]), r["method"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--out-dir", default="outputs", help="the pipeline's out_dir")
    ap.add_argument("--device", default="auto", help="calibrate/prune/evaluate device")
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt,gblm")
    ap.add_argument("--patterns", default="unstructured,2:4,4:8")
    ap.add_argument("--cpu-masks", default="", help="methods also run with prune.device=cpu")
    ap.add_argument("--gguf", default=None, help="absolute path of the GGUF file (default: the embedded package's)")
    ap.add_argument("--set", nargs="*", default=[], help="further pipeline overrides")
    ap.add_argument("--grid", default="seeds", choices=["seeds", "beyond"],
                    help="seeds: --methods x --patterns; beyond: every method x 50/60/70%% (uniform, OWL), 2:4, 4:8")
    args = ap.parse_args()
    if args.grid == "beyond":
        return beyond(args)
    common = [f"calibrate.device={args.device}", f"evaluate.device={args.device}", *args.set]
    if args.gguf:
        common.append(f"model.gguf_file={args.gguf}")
    results = {"protocol": "conf/experiment/smollm2_prune.yaml", "overrides": common, "runs": {}}
    run_dir = Path(args.out_dir) / "smollm2-prune"
    rc, wall = run(common + [f"prune.device={args.device}", f"prune.method={args.methods}",
                             f"prune.pattern={args.patterns}", "run=smollm2-prune"], args.out_dir)
    results["runs"]["device"] = {"returncode": rc, "wall_s": round(wall, 1), "rows": [
        r for r in rows_of(run_dir) if r["mask_device"] != "cpu" or args.device == "cpu"]}
    record(Path(args.out), results)
    if args.cpu_masks:  # same run directory: data, base model and calibration are shared
        rc, wall = run(common + ["prune.device=cpu", f"prune.method={args.cpu_masks}",
                                 f"prune.pattern={args.patterns}", "run=smollm2-prune"], args.out_dir)
        cpu_rows = [r for r in rows_of(run_dir) if r["mask_device"] == "cpu"]
        dev = {(r["method"], r["pattern"]): r["ppl"] for r in results["runs"]["device"]["rows"]}
        for r in cpu_rows:
            r["equal_to_device_masks"] = dev.get((r["method"], r["pattern"])) == r["ppl"]
        results["runs"]["cpu_masks"] = {"returncode": rc, "wall_s": round(wall, 1), "rows": cpu_rows}
        record(Path(args.out), results)
    print(f"\n{'run':10s} {'method':10s} {'pattern':12s} {'ppl':>9s}")
    for name, r in results["runs"].items():
        for row in r["rows"]:
            print(f"{name:10s} {row['method']:10s} {str(row['pattern']):12s} {row['ppl']:9.2f}")
    sys.exit(max(r["returncode"] for r in results["runs"].values()))


def beyond(args):
    """Every registered method: 50 / 60 / 70% unstructured with and without OWL, and 2:4 / 4:8."""
    from taylorlab.pruning import registry

    methods = ",".join(registry.names())
    common = [f"calibrate.device={args.device}", f"evaluate.device={args.device}", f"prune.device={args.device}",
              "run=smollm2-beyond", *args.set]
    if args.gguf:
        common.append(f"model.gguf_file={args.gguf}")
    sweeps = {"nm": [f"prune.method={methods}", "prune.pattern=2:4,4:8"],
              "unstructured": [f"prune.method={methods}", "prune.pattern=unstructured", "prune.sparsity=0.5,0.6,0.7",
                               "prune.profile=uniform,owl"]}
    results = {"protocol": "conf/experiment/smollm2_prune.yaml", "overrides": common, "sweeps": sweeps, "runs": {}}
    run_dir = Path(args.out_dir) / "smollm2-beyond"
    for name, sweep in sweeps.items():
        rc, wall = run(common + sweep, args.out_dir)
        results["runs"][name] = {"returncode": rc, "wall_s": round(wall, 1)}
        results["rows"] = rows_of(run_dir)
        record(Path(args.out), results)
    rows = results["rows"]
    print(f"\n{'method':14s} {'pattern':12s} {'sparsity':>8s} {'ppl':>9s}")
    for row in rows:
        print(f"{row['method']:14s} {str(row['pattern']):12s} {row['sparsity']:8.2f} {row['ppl']:9.2f}")
    sys.exit(max(r["returncode"] for r in results["runs"].values()))


if __name__ == "__main__":
    main()
