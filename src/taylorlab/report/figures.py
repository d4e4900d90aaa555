"""PNG figures of the results (matplotlib, no display): for W&B images and for people who prefer a file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

from taylorlab.report.palette import method_colors


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, ax, xlabel: str, ylabel: str, path: Path) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def perplexity_vs_sparsity(rows: List[Dict], path: Path) -> Optional[Path]:
    """Perplexity against sparsity per method and pattern (the dense model at sparsity 0)."""
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    dense = [r for r in rows if r["method"] == "dense"]
    colors = method_colors()
    groups: Dict[tuple, list] = {}
    for r in rows:
        if r["method"] != "dense":
            groups.setdefault((r["method"], str(r["pattern"])), []).append((r["sparsity"], r["ppl"]))
    for (method, pattern), pts in sorted(groups.items()):
        pts = sorted(([(0.0, dense[0]["ppl"])] if dense else []) + pts)
        ax.plot(*zip(*pts), marker="o", color=colors.get(method), linestyle="-" if pattern == "unstructured" else "--",
                label=f"{method} {pattern}")
    if dense and not groups:
        ax.plot([0], [dense[0]["ppl"]], "ko", label="dense")
    return _save(plt, fig, ax, "sparsity", "perplexity", path)


def order_scatter(estimates: Dict, path: Path) -> Optional[Path]:
    """Estimated against true validation perplexity of every queried order, per estimator."""
    orders = estimates.get("orders") or []
    if not orders:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    true = [math.exp(min(o["true_loss"], 50)) for o in orders]
    for row in estimates.get("fidelity", []):
        name = row["estimator"]
        est = [math.exp(min(o[f"{name}_loss"], 50)) for o in orders]
        ax.scatter(true, est, s=14, label=f"{name} (Spearman {row['spearman']:.2f})" if row["spearman"] == row["spearman"] else name)
    lo, hi = min(true), max(true)
    ax.plot([lo, hi], [lo, hi], color="#bbb", linewidth=1)
    return _save(plt, fig, ax, "true perplexity (retrained)", "estimated perplexity", path)


def memorization_heatmaps(mem: Dict, path: Path) -> Path:
    """Rows of heatmaps over the computed (batch i, position j) cells: the loss on batch i at the end
    (memorization) and, when present, the held-out loss (generalization) — estimated, true and their
    difference side by side."""
    import numpy as np

    plt = _plt()
    groups = [("loss on batch i", mem)]
    if mem.get("generalization"):
        groups.append(("held-out loss", mem["generalization"]))
    rows = sorted({i for i, _ in mem["cells"]})
    cols = sorted({j for _, j in mem["cells"]})
    ncol = 3 if mem.get("true") is not None else 1
    fig, axes = plt.subplots(len(groups), ncol, figsize=(4.2 * ncol, (0.5 * len(rows) + 2.0) * len(groups)),
                             squeeze=False)

    def grid(m):
        return np.array([[np.nan if m[i][j] is None else m[i][j] for j in cols] for i in rows], dtype=float)

    for r, (what, g) in enumerate(groups):
        panels = [(f"{what}: estimated ({mem['estimator']})", grid(g["estimated"]))]
        if g.get("true") is not None:
            panels += [(f"{what}: true (retrained)", grid(g["true"])),
                       ("estimated − true", grid(g["estimated"]) - grid(g["true"]))]
        for ax, (title, a) in zip(axes[r], panels):
            lim = np.nanmax(np.abs(a)) if "−" in title else None
            im = ax.imshow(a, aspect="auto", cmap="RdBu_r" if lim is not None else "viridis",
                           vmin=-lim if lim else None, vmax=lim)
            ax.set_xticks(range(len(cols)), [str(j) for j in cols])
            ax.set_yticks(range(len(rows)), [str(i) for i in rows])
            ax.set_xlabel("position j batch i is moved to")
            ax.set_ylabel("batch i")
            ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
