"""The cost-fidelity frontier of smollm2_scale_h200.json: per cell (T, peak lr) and estimator, the
Spearman of its ranking of K held-out retrained orders against its cost relative to batched
retraining of every order it scored (log scale). Left of 1 an estimator is cheaper than the exact
answer; the shaded band is the target (Spearman >= 0.9 at <= 0.1x).

    python benchmarks/order_effects/plot_scale.py benchmarks/order_effects/smollm2_scale_h200.json \
        benchmarks/order_effects/smollm2_scale64_h200.json benchmarks/order_effects/smollm2_scale64_3e-4_h200.json \
        benchmarks/order_effects/smollm2_scale64_3e-4_r400_h200.json \
        benchmarks/order_effects/smollm2_scale64_3e-4_hybrid_r200_h200.json \
        benchmarks/order_effects/smollm2_scale64_3e-4_batchloss_r640_h200.json \
        benchmarks/order_effects/smollm2_scale64_3e-5_h200.json \
        benchmarks/order_effects/smollm2_scale16_h200.json benchmarks/order_effects/smollm2_scale16_ckpt_h200.json \
        benchmarks/order_effects/smollm2_scale16k_h200.json benchmarks/order_effects/smollm2_scale16k_nudge_h200.json
        (cells of every file; figure beside the first; a cell run again keeps its colour)
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = {"fut-carry": "o", "surrogate": "s", "fut": "^", "fut2": "v", "additive": "D", "fut-ckpt": "P"}


def main(paths):
    runs = [json.loads(Path(p).read_text()) for p in paths]
    # the surrogate's prior and the tokens per step are run-wide arguments: carried onto each cell
    cells_of = [dict(c, prior=r["config"].get("prior", "none"), tokens=r["tokens_per_step"]) for r in runs for c in r["cells"]]
    tokens = sorted({c["tokens"] for c in cells_of})
    data = {"tokens_per_step": " / ".join(map(str, tokens)), "cells": cells_of}
    # a cell's truth-vs-nudge Spearman, from whichever run measured it (a run of its own, at times)
    nudged = {(c["tokens"], c["T"], c["lr"]): c["sensitivity"][0]["spearman_true_vs_perturbed"]
              for c in cells_of if c.get("sensitivity")}
    colour, labelled, used = {}, set(), set()  # one colour and one legend entry per (tokens, T, lr), whichever runs hold the cell
    path = paths[0]
    fig, ax = plt.subplots(figsize=(12, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax.axvspan(1e-3, 0.1, ymin=0.9 / 1.05, ymax=1, color="#e8f4e8", zorder=0)  # the target region
    ax.axhline(0.9, color="#999", lw=0.8, ls=":")
    ax.axvline(1.0, color="#999", lw=0.8, ls=":")
    for cell in data["cells"]:
        key = (cell["tokens"], cell["T"], cell["lr"])
        i = colour.setdefault(key, len(colour))
        label = (f"T={cell['T']}, lr {cell['lr']:g}" + (f", {cell['tokens']} tok" if len(tokens) > 1 else "")
                 + (f" (truth vs 1e-6 nudge: {nudged[key]:.3f})" if key in nudged else ""))
        first = key not in labelled
        for r in cell["fidelity"]:
            if r["estimator"] not in MARKERS or r["spearman"] != r["spearman"]:
                continue
            labelled.add(key)
            ax.scatter(r["cost_vs_batched_retrain"], r["spearman"], marker=MARKERS[r["estimator"]], s=60,
                       color=colors[i % len(colors)], label=label if first else None, zorder=3)
            fitted = f"R={r['train_orders']}, " if r.get("train_orders") else ""
            if r.get("train_orders") and cell["prior"] != "none":
                fitted += f"{cell['prior']}, "
            used.add(r["estimator"])
            if r["spearman"] < 0.95:  # the cluster at the top would be unreadable; its markers say enough
                ax.annotate(f"{r['estimator']} ({fitted}{r['orders_scored']} orders)",
                            (r["cost_vs_batched_retrain"], r["spearman"]), textcoords="offset points", xytext=(6, -3),
                            fontsize=7)
            first = False
    ax.set_xscale("log")
    ax.set_xlim(3e-3, 30)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("cost ÷ batched retraining of the orders scored")
    ax.set_ylabel("Spearman vs retrained truth (K=32 held-out)")
    ax.set_title(f"SmolLM2-135M continued training, {data['tokens_per_step']} tokens/step, one H200")
    cells = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: the axes are full
    ax.add_artist(cells)
    shapes = [plt.Line2D([], [], ls="", marker=MARKERS[n], color="#444", label=n) for n in MARKERS if n in used]
    ax.legend(handles=shapes, fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0), title="estimator",
              title_fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.74, 1))  # the legends lie to the right of the axes
    out = Path(path).with_suffix(".png")
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
