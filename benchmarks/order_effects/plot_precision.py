"""How far a 1e-6 nudge of theta_0 moves the true loss of each order, over the spread of the true loss
across the orders (log scale), against tokens per step: the CPU model in each arithmetic (lines, from
precision_nudge.py) beside SmolLM2-135M on the H200 (stars, from smollm2_scale.py runs with a nudge).
Above ~0.1 the nudge reorders the truth; the figure goes beside the first file.

    python benchmarks/order_effects/plot_precision.py benchmarks/order_effects/precision_nudge_cpu.json \
        benchmarks/order_effects/precision_nudge16k_cpu.json --smollm2 \
        benchmarks/order_effects/smollm2_scale16_h200.json benchmarks/order_effects/smollm2_scale16k_nudge_h200.json
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"float64": ("tab:blue", "o"), "float32": ("tab:green", "s"), "tf32": ("tab:red", "^")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cpu", nargs="+", help="precision_nudge.py results")
    ap.add_argument("--smollm2", nargs="*", default=[], help="smollm2_scale.py results whose cells have a nudge")
    a = ap.parse_args()
    points = {}  # arithmetic -> {tokens per step: mae / spread}
    for p in a.cpu:
        for c in json.loads(Path(p).read_text())["cells"]:
            for arith, row in c["arithmetics"].items():
                points.setdefault(arith, {})[c["tokens_per_step"]] = row["nudge"]["mae_over_spread"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for arith, pts in points.items():
        xs = sorted(pts)
        colour, marker = STYLE.get(arith, ("tab:gray", "x"))
        label = "TF32, emulated" if arith == "tf32" else arith
        ax.plot(xs, [pts[x] for x in xs], marker=marker, color=colour, label=f"1.13M Llama, CPU, {label}")
    stars = {}  # (tokens per step, arithmetic) -> [(cell, sensitivity)]: cells of one set-up share a label
    for p in a.smollm2:
        run = json.loads(Path(p).read_text())
        for c in run["cells"]:
            for s in c.get("sensitivity", []):
                stars.setdefault((run["tokens_per_step"], run.get("matmul_precision", "float32")), []).append((c, s))
    for (tokens, arith), cells in stars.items():
        colour = STYLE.get(arith, ("tab:gray", "x"))[0]
        ys = [s["mae_over_spread"] for _, s in cells]
        ax.scatter([tokens] * len(ys), ys, marker="*", s=180, color=colour, edgecolor="black", zorder=3)
        text = "\n".join(f"T={c['T']}, lr {c['lr']:g}: Spearman {s['spearman_true_vs_perturbed']:.2f}" for c, s in cells)
        ax.annotate(f"SmolLM2-135M, H200, {arith}\n{text}", (tokens, max(ys)), textcoords="offset points",
                    xytext=(12, -4) if tokens < 4096 else (-12, -30), ha="left" if tokens < 4096 else "right",
                    fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylim(top=1)
    ax.set_xlim(2 ** 8.5, 2 ** 14.5)
    ax.axhline(0.1, color="gray", ls="--", lw=1)
    ax.set_xlabel("tokens per step")
    ax.set_ylabel("nudged truth: mean |loss change| / spread over orders")
    ax.set_title("A 1e-6 nudge of θ₀ against the order effect", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = Path(a.cpu[0]).with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
