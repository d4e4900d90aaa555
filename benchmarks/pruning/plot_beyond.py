"""The figure of quality_beyond_smollm2_h200.json: perplexity against sparsity per method, uniform
(solid) and OWL (dashed), with the 2:4 / 4:8 cells as markers at 50%.

    python benchmarks/pruning/plot_beyond.py benchmarks/pruning/quality_beyond_smollm2_h200.json
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(path):
    data = json.loads(Path(path).read_text())
    rows = data["rows"]
    dense = next(r["ppl"] for r in rows if r["method"] == "dense")
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "dense"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, m in enumerate(methods):
        for profile, style in (("uniform", "-"), ("owl", "--")):
            pts = sorted((r["sparsity"], r["ppl"]) for r in rows
                         if r["method"] == m and r["profile"] == profile and r["pattern"] == "unstructured")
            if pts:
                ax.plot(*zip(*pts), style, marker="o", color=colors[i % len(colors)],
                        label=f"{m}{' + OWL' if profile == 'owl' else ''}")
        for pattern, marker in (("2:4", "s"), ("4:8", "^")):
            for r in rows:
                if r["method"] == m and r["pattern"] == pattern:
                    ax.plot(0.5, r["ppl"], marker, color=colors[i % len(colors)], markersize=7, alpha=0.7)
    ax.axhline(dense, color="black", linewidth=1, label=f"dense {dense:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (squares: 2:4, triangles: 4:8, at 0.5)")
    ax.set_ylabel("test perplexity (2048-token windows)")
    ax.set_title("SmolLM2-135M pruned, 128 x 2048 calibration (H200)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = Path(path).with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1])
