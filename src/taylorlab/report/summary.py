from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List

from taylorlab.engine.executors import slurm_job_state
from taylorlab.engine.rundir import finished, stage_dirs

from taylorlab.pruning import registry as pruning_registry
from taylorlab.report.verdicts import judge, pruned_model_kind


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
                "run": run_dir.name, "stage": d.name,
                "method": recipe.get("method", "dense")
                + ("+owl" if (recipe.get("profile") or {}).get("name") == "owl" else "")
                + ("+seq" if recipe.get("walk") == "sequential" else "")  # prune.walk=sequential
                + ("+liger" if recipe.get("kernels") == "liger" else ""),  # prune.kernels=liger (not bitwise eager)
                "pattern": recipe.get("pattern", "-"), "sparsity": recipe.get("sparsity", 0.0),
                "mask_device": recipe.get("mask_device"), "split": r.get("split"), "ppl": r.get("ppl"), "seq_len": r.get("seq_len"),
                "windows": r.get("windows"), "model_stage": r.get("model_stage"),
                # the model the row's weights come from: for a pruned row, the model that was pruned
                "model": pruned_model_kind(recipe.get("model_stage") or r.get("model_stage")),
                "source_stage": recipe.get("model_stage") or r.get("model_stage"),  # the dense model behind the row
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
    head = (f"{'run':14s} {'method':14s} {'pattern':12s} {'sparsity':>8s} {'split':6s} {'seq':>5s} {'perplexity':>11s}"
            f"  {'model':10s} {'calibration':18s}" + "".join(f" {k:>24s}" for k in zs))
    lines = [head, "-" * len(head)]
    for r in rows:
        extra = "".join(f" {r['zero_shot'][k]:24.3f}" if k in r.get("zero_shot", {}) else f" {'-':>24s}" for k in zs)
        lines.append(f"{r['run'][:14]:14s} {r['method'][:14]:14s} {str(r['pattern']):12s} {float(r['sparsity']):8.2f} "
                     f"{str(r['split']):6s} {int(r['seq_len'] or 0):5d} {float(r['ppl']):11.3f}"
                     f"  {r['model'][:10]:10s} {r['calibration'][:18]:18s}{extra}")
    return "\n".join(lines)


def plain_summary(run_dirs: List[Path]) -> str:
    """What the runs found, in plain words, and which numbers to trust (the terminal's summary)."""
    lines = []
    rows = [r for r in collect_results(run_dirs) if r.get("split") in ("test", None)]
    for run in sorted({r["run"] for r in rows}):
        rr = [r for r in rows if r["run"] == run]
        for dense in [r for r in rr if r["method"] == "dense"]:
            pruned = [r for r in rr if r["method"] != "dense" and r["source_stage"] == dense["source_stage"]]
            lines.append(f"Pruning ({dense['model']} model, test perplexity {dense['ppl']:.2f} dense):")
            for (pattern, sparsity) in sorted({(r["pattern"], r["sparsity"]) for r in pruned}, key=str):
                cell = sorted((r for r in pruned if (r["pattern"], r["sparsity"]) == (pattern, sparsity)),
                              key=lambda r: r["ppl"])
                text = ", ".join(f"{r['method']} {r['ppl']:.1f} ({r['ppl'] / dense['ppl']:.1f}x)" for r in cell)
                worse = all(r["ppl"] > dense["ppl"] for r in cell)
                lines.append(f"  {pattern} at {float(sparsity):.0%}: {text}"
                             + ("" if worse else "  -- a pruned model beat the dense one: check the evaluation size"))
    for sd in finished(run_dirs, stage="estimate"):
        path = sd.artifact("estimates")
        if path is None:
            continue
        E = json.loads(path.read_text())
        J = judge(E)
        sens = [s["spearman_true_vs_perturbed"] for s in E.get("sensitivity") or []]
        where = f"{sd.path.parent.name}/{sd.name}: K={E['speed']['K']} random orders, T={E['speed']['T']}"
        lines.append(f"Order effects ({where}" + (f"; the truth re-ranks itself at Spearman {sens[0]:.2f} under a "
                                                 f"1e-6 nudge" if sens and sens[0] == sens[0] else "") + "):")
        for row in E["fidelity"]:
            v = J["verdicts"][row["estimator"]]
            if v["verdict"] == "baseline":
                continue
            advice = {"ranks": "trust its ranking", "does not rank": "retrain instead",
                      "not checked": "no verdict"}[v["verdict"]]
            cost = row.get("retrainings_equivalent")
            lines.append(f"  {row['estimator']}: {v['verdict']} ({v['why']}); {advice}"
                         + (f"; it cost {cost:.1f} retrainings" if isinstance(cost, (int, float)) else ""))
    return "\n".join(lines) if lines else "(nothing finished to summarise)"
