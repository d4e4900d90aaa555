"""Size and load time of the results page for an N-run sweep, in headless Chromium.

The N runs are copies of one real run directory (its stage folders, results, metrics and logs;
model weights and data splits left out, as the page never reads them). Load time is the page's own
``performance.now()`` when its script has drawn everything (navigation start to charts drawn),
read back from the DOM; the median of --repeats loads.

    python benchmarks/report/load_sweep.py outputs/demo --runs 100 --out benchmarks/report/load_100.json
"""

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import record  # noqa: E402
from taylorlab.report.dashboard import write_dashboard  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SKIP = shutil.ignore_patterns("model", "*.safetensors", "wandb", ".hydra", "tokenizer", "submitit", ".hf-datasets",
                              "train.jsonl", "validation.jsonl", "calibration.jsonl", "test.jsonl", "report")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    chromium = shutil.which("chromium")
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for i in range(args.runs):
            dst = Path(tmp) / f"run{i:03d}"
            shutil.copytree(args.run_dir, dst, ignore=SKIP)
            runs.append(dst)
        page = write_dashboard(runs, Path(tmp) / "index.html", title=f"{args.runs}-run sweep")
        size = page.stat().st_size
        times = []
        for k in range(args.repeats):
            out = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp}/prof{k}",
                                  "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
            m = re.search(r'data-render-ms="(\d+)"', out)
            times.append(int(m.group(1)))
            points = out.count('class="point"')
    res = {"runs": args.runs, "page_bytes": size, "page_mib": round(size / 2**20, 3), "load_ms_median": statistics.median(times),
           "load_ms_all": times, "points_drawn": points}
    record(Path(args.out), res)
    print(res)


if __name__ == "__main__":
    main()
