"""OWL's two hyper-parameters (m, lambda) against the uniform profile for one method and sparsity on
the embedded SmolLM2-135M, through the pipeline — at a reduced protocol that a 2-core CPU can run
(calibration 32 x 512 tokens, test perplexity over 32 windows of 512), so the numbers say which way
m and lambda move perplexity, not the papers' protocol values (benchmarks/pruning/README.md).

    python benchmarks/pruning/owl_sweep.py --out-dir /tmp/owl/out --out benchmarks/pruning/owl_sweep_cpu.json
    python benchmarks/pruning/owl_sweep.py --out-dir /tmp/owl/out --out ... --collect   (a finished run only)
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import record  # noqa: E402

REDUCED = ["calibrate.num_samples=32", "calibrate.seq_len=512", "calibrate.gradients=false", "evaluate.seq_len=512",
           "evaluate.max_windows=32", "evaluate.batch_size=4", "prune.batch_size=8"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--out-dir", required=True, help="the pipeline's out_dir (run 'owl' inside it)")
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--sparsity", default="0.7")
    ap.add_argument("--lambdas", default="0.08,0.14", help="OWL lambda values (2 lambda < 1 - sparsity)")
    ap.add_argument("--ms", default="5,10", help="OWL outlier thresholds m")
    ap.add_argument("--collect", action="store_true", help="only read the finished run directory")
    a = ap.parse_args(argv)
    common = ["model=smollm2", "launcher=inline", "run=owl", f"out_dir={a.out_dir}",
              "stages=[evaluate_dense,evaluate_pruned]", "wandb.mode=disabled", "progress=false",
              f"prune.method={a.method}", f"prune.sparsity={a.sparsity}", *REDUCED]
    commands = [common + ["prune.profile=uniform"],
                ["-m", *common, "prune.profile=owl", f"prune.owl_lambda={a.lambdas}", f"prune.owl_m={a.ms}"]]
    if not a.collect:
        for c in commands:
            subprocess.run([sys.executable, str(ROOT / "pipelines" / "run.py"), *c], cwd=ROOT, check=True)
    run = Path(a.out_dir) / "owl"
    dense = [json.loads((d / "result.json").read_text()) for d in run.glob("evaluate_dense-*") if (d / "DONE").exists()]
    rows = []
    for d in sorted(run.glob("evaluate_pruned-*")):
        if not (d / "DONE").exists():
            continue
        r = json.loads((d / "result.json").read_text())
        rec = r["recipe"]
        rows.append({"method": rec["method"], "sparsity": rec["sparsity"], "profile": rec["profile"]["name"],
                     "owl_m": rec["profile"]["m"], "owl_lambda": rec["profile"]["lmbda"], "ppl": r["ppl"],
                     "windows": r["windows"], "seq_len": r["seq_len"], "block_sparsity": rec["block_sparsity"],
                     "prune_wall_s": rec["prune_wall_s"]})
    uniform = next((r["ppl"] for r in rows if r["profile"] == "uniform"), None)
    for r in rows:
        r["improvement_vs_uniform"] = None if uniform is None else 1 - r["ppl"] / uniform
    rows.sort(key=lambda r: (r["profile"] != "uniform", r["owl_lambda"], r["owl_m"]))
    record(Path(a.out), {"protocol": REDUCED, "dense_ppl": dense[0]["ppl"] if dense else None, "rows": rows,
                         "pipeline_commands": [" ".join(c) for c in commands]})
    for r in rows:
        print(f"{r['profile']:8s} m={r['owl_m']:g} lambda={r['owl_lambda']:g}: ppl {r['ppl']:.1f} "
              f"({r['improvement_vs_uniform']:+.1%} vs uniform)" if uniform else r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
