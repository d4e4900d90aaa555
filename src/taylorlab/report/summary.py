from __future__ import annotations

import html
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
                "split": r.get("split"), "ppl": r.get("ppl"), "seq_len": r.get("seq_len"),
                "windows": r.get("windows"), "model_stage": r.get("model_stage"),
            })
    order = {"dense": 0, "magnitude": 1, "wanda": 2, "sparsegpt": 3, "gblm": 4}
    rows.sort(key=lambda r: (r["run"], r["pattern"] != "-", r["pattern"], r["sparsity"], order.get(r["method"], 9)))
    return rows


def format_table(rows: List[Dict]) -> str:
    if not rows:
        return "(no finished evaluate stages)"
    head = f"{'run':14s} {'method':10s} {'pattern':12s} {'sparsity':>8s} {'split':6s} {'seq':>5s} {'perplexity':>11s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['run'][:14]:14s} {r['method']:10s} {str(r['pattern']):12s} {float(r['sparsity']):8.2f} "
                     f"{str(r['split']):6s} {int(r['seq_len'] or 0):5d} {float(r['ppl']):11.3f}")
    return "\n".join(lines)


def write_html(run_dirs: List[Path], path: Path, title: str = "taylorlab results") -> Path:
    from taylorlab.io import atomic_write_text

    rows = collect_results(run_dirs)
    status = [dict(s, run=Path(rd).name) for rd in run_dirs for s in stage_status(Path(rd))]
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in ("run", "method", "pattern", "sparsity", "split",
                                                                          "seq_len"))
        + f"<td class=num>{float(r['ppl']):.3f}</td></tr>" for r in rows
    ) or "<tr><td colspan=7>No evaluate stage has finished yet.</td></tr>"
    srows = "".join(
        f"<tr><td>{html.escape(s['run'])}</td><td>{html.escape(s['node'])}</td><td>{s['hash']}</td>"
        f"<td class={html.escape(s['state'].split()[0])}>{html.escape(s['state'])}</td><td>{html.escape(s['detail'])}</td>"
        f"<td><a href='file://{html.escape(s['log'])}'>stage.log</a></td></tr>" for s in status
    )
    page = f"""<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}
.num{{text-align:right}}.done{{color:#070}}.failed{{color:#a00}}</style></head><body>
<h1>{html.escape(title)}</h1><h2>Perplexity</h2>
<table><tr><th>run</th><th>method</th><th>pattern</th><th>sparsity</th><th>split</th><th>seq len</th><th>perplexity</th></tr>{cells}</table>
<h2>Stages</h2><table><tr><th>run</th><th>stage</th><th>hash</th><th>state</th><th>detail</th><th>log</th></tr>{srows}</table>
<script type="application/json" id="results">{html.escape(json.dumps(rows))}</script>
</body></html>"""
    atomic_write_text(path, page)
    return path
