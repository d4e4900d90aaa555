from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List

from taylorlab.engine.executors import slurm_job_state
from taylorlab.engine.rundir import finished, stage_dirs

from taylorlab.pruning import registry as pruning_registry
from taylorlab.report.verdicts import pruned_model_kind


def _slurm_state(job_id) -> str:
    if not shutil.which("squeue"):
        return "submitted"
    return slurm_job_state(job_id)


def stage_status(run_dir: Path) -> List[Dict]:
    """One row per stage directory: node, hash, state (done / failed / submitted / running / incomplete)."""
    rows = []
    for sd in stage_dirs(run_dir):
        state, detail = sd.state(), ""
        if state == "done":
            detail = f"{(sd.manifest() or {}).get('wall_s', 0):.1f} s"
        elif state == "failed":
            detail = sd.failure_cause()
        elif state == "submitted":
            job_id = (sd.submission() or {}).get("job_id")
            state = f"slurm {_slurm_state(job_id).lower()}"
            detail = f"job {job_id}"
        rows.append({"node": sd.node, "hash": sd.hash, "state": state, "detail": detail, "dir": str(sd.path),
                     "log": str(sd.path / "stage.log")})
    return rows


def collect_results(run_dirs: List[Path]) -> List[Dict]:
    """Every finished evaluate result under the run directories, with its pruning recipe."""
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        for sd in finished([run_dir], stage="evaluate"):
            res = sd.artifact("result")
            if res is None:
                continue
            d = sd.path
            r = json.loads(res.read_text())
            recipe = r.get("recipe", {})
            rows.append({
                "run": run_dir.name, "stage": d.name, "method": recipe.get("method", "dense"),
                "pattern": recipe.get("pattern", "-"), "sparsity": recipe.get("sparsity", 0.0),
                "mask_device": recipe.get("mask_device"), "split": r.get("split"), "ppl": r.get("ppl"), "seq_len": r.get("seq_len"),
                "windows": r.get("windows"), "model_stage": r.get("model_stage"),
                # the model the row's weights come from: for a pruned row, the model that was pruned
                "model": pruned_model_kind(recipe.get("model_stage") or r.get("model_stage")),
                "calibration": _calibration(recipe.get("calibration")),
                "zero_shot": {f"{t}/{k}": v for t, m in (r.get("zero_shot") or {}).items() for k, v in m.items()
                              if k in ("acc", "acc_norm")},
            })
    order = {"dense": 0, **{name: i + 1 for i, name in enumerate(pruning_registry.names())}}
    rows.sort(key=lambda r: (r["run"], r["pattern"] != "-", r["pattern"], r["sparsity"], order.get(r["method"], 9)))
    return rows


def _calibration(meta) -> str:
    if not meta:
        return "-"
    return f"{meta.get('num_samples', '?')}x{meta.get('seq_len', '?')} {meta.get('split', '')}".strip()


def format_table(rows: List[Dict]) -> str:
    if not rows:
        return "(no finished evaluate stages)"
    zs = sorted({k for r in rows for k in r.get("zero_shot", {})})
    head = (f"{'run':14s} {'method':10s} {'pattern':12s} {'sparsity':>8s} {'split':6s} {'seq':>5s} {'perplexity':>11s}"
            f"  {'model':10s} {'calibration':18s}" + "".join(f" {k:>24s}" for k in zs))
    lines = [head, "-" * len(head)]
    for r in rows:
        extra = "".join(f" {r['zero_shot'][k]:24.3f}" if k in r.get("zero_shot", {}) else f" {'-':>24s}" for k in zs)
        lines.append(f"{r['run'][:14]:14s} {r['method']:10s} {str(r['pattern']):12s} {float(r['sparsity']):8.2f} "
                     f"{str(r['split']):6s} {int(r['seq_len'] or 0):5d} {float(r['ppl']):11.3f}"
                     f"  {r['model'][:10]:10s} {r['calibration'][:18]:18s}{extra}")
    return "\n".join(lines)
