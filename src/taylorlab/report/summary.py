from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List


def _stage_dirs(run_dir: Path):
    return sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and "-" in p.name and not p.name.startswith("."))


def _slurm_state(job_id) -> str:
    import shutil

    if not shutil.which("squeue"):
        return "submitted"
    from taylorlab.engine.executors import slurm_job_state

    return slurm_job_state(job_id)


def stage_status(run_dir: Path) -> List[Dict]:
    """One row per stage directory: node, hash, state (done / failed / submitted / running / incomplete)."""
    rows = []
    for d in _stage_dirs(run_dir):
        node, _, h = d.name.rpartition("-")
        state, detail = "incomplete", ""
        if (d / "DONE").exists():
            state = "done"
            try:
                detail = f"{json.loads((d / 'manifest.json').read_text()).get('wall_s', 0):.1f} s"
            except (OSError, ValueError):
                state = "corrupt"
        elif (d / "FAILED").exists():
            state = "failed"
            try:
                detail = json.loads((d / "FAILED").read_text()).get("cause", "")
            except (OSError, ValueError):
                pass
        elif (d / "submission.json").exists():
            job_id = json.loads((d / "submission.json").read_text()).get("job_id")
            state = f"slurm {_slurm_state(job_id).lower()}"
            detail = f"job {job_id}"
        elif (d / "checkpoints").exists():
            state = "interrupted (resumable)"
        rows.append({"node": node, "hash": h, "state": state, "detail": detail, "dir": str(d),
                     "log": str(d / "stage.log")})
    return rows


def collect_results(run_dirs: List[Path]) -> List[Dict]:
    """Every finished evaluate result under the run directories, with its pruning recipe."""
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        for d in _stage_dirs(run_dir):
            res = d / "result.json"
            if not (d / "DONE").exists() or not res.exists():
                continue
            r = json.loads(res.read_text())
            recipe = r.get("recipe", {})
            rows.append({
                "run": run_dir.name, "stage": d.name, "method": recipe.get("method", "dense"),
                "pattern": recipe.get("pattern", "-"), "sparsity": recipe.get("sparsity", 0.0),
                "mask_device": recipe.get("mask_device"), "split": r.get("split"), "ppl": r.get("ppl"), "seq_len": r.get("seq_len"),
                "windows": r.get("windows"), "model_stage": r.get("model_stage"),
                "zero_shot": {f"{t}/{k}": v for t, m in (r.get("zero_shot") or {}).items() for k, v in m.items()
                              if k in ("acc", "acc_norm")},
            })
    order = {"dense": 0, "magnitude": 1, "wanda": 2, "sparsegpt": 3, "gblm": 4}
    rows.sort(key=lambda r: (r["run"], r["pattern"] != "-", r["pattern"], r["sparsity"], order.get(r["method"], 9)))
    return rows


def format_table(rows: List[Dict]) -> str:
    if not rows:
        return "(no finished evaluate stages)"
    zs = sorted({k for r in rows for k in r.get("zero_shot", {})})
    head = (f"{'run':14s} {'method':10s} {'pattern':12s} {'sparsity':>8s} {'split':6s} {'seq':>5s} {'perplexity':>11s}"
            + "".join(f" {k:>24s}" for k in zs))
    lines = [head, "-" * len(head)]
    for r in rows:
        extra = "".join(f" {r['zero_shot'][k]:24.3f}" if k in r.get("zero_shot", {}) else f" {'-':>24s}" for k in zs)
        lines.append(f"{r['run'][:14]:14s} {r['method']:10s} {str(r['pattern']):12s} {float(r['sparsity']):8.2f} "
                     f"{str(r['split']):6s} {int(r['seq_len'] or 0):5d} {float(r['ppl']):11.3f}{extra}")
    return "\n".join(lines)


def write_html(run_dirs: List[Path], path: Path, title: str = "taylorlab results") -> Path:
    """The self-contained results page (see taylorlab.report.dashboard)."""
    from taylorlab.report.dashboard import write_dashboard

    return write_dashboard(run_dirs, path, title)
