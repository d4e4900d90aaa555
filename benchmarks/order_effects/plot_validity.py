"""The validity map as a figure, from the validity_map*.json results beside this script (no new
measurement): `fut-carry`'s Spearman against real retraining by peak learning rate for each set-up,
and its self-check (the linearisation residual, no retraining needed) against that Spearman.

    python benchmarks/order_effects/plot_validity.py            # -> benchmarks/order_effects/validity_map.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cells(folder: Path):
    """(set-up label, T, peak lr, schedule, estimator, Spearman, residual) for every measured row."""
    for path in sorted(folder.glob("validity_map*.json")):
        data = json.loads(path.read_text())
        cfg = data.get("config", {})
        model = "20.45M (H200)" if cfg.get("hidden", 384) == 384 else "1.13M (CPU)"
        for cell in data.get("cells", []):
            start = f", from {cell['pretrain_steps']} pretrained steps" if cell.get("pretrain_steps") else ""
            setup = f"{model}, T = {cell['T']}, batch {cfg.get('batch', 4)} × 128, {cell['schedule']}{start}"
            for row in cell["fidelity"]:
                rho = row["spearman"]
                if row["estimator"] == "none" or rho != rho:
                    continue
                yield (setup, cell["T"], cell["peak_lr"], row["estimator"], rho,
                       row.get("linearisation_median_residual"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "validity_map.png"))
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(cells(HERE))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 7.2))
    series = defaultdict(lambda: defaultdict(list))
    for setup, _, lr, est, rho, _ in rows:
        if est == "fut-carry":
            series[setup][lr].append(rho)
    colors = plt.get_cmap("tab20").colors
    for i, (setup, by_lr) in enumerate(sorted(series.items())):
        lrs = sorted(by_lr)
        line, = left.plot(lrs, [sum(by_lr[x]) / len(by_lr[x]) for x in lrs], marker="o", label=setup,
                          color=colors[i % len(colors)], ls="--" if "pretrained" in setup else "-")
        for x in lrs:  # every measurement (reruns with other K or samples of orders), not only the mean
            left.scatter([x] * len(by_lr[x]), by_lr[x], color=line.get_color(), s=12)
    left.axhline(0.9, color="k", ls="--", lw=0.8)
    left.set(xscale="log", xlabel="peak learning rate", ylabel="Spearman, fut-carry vs real retraining",
             title="Where fut-carry (exact HVP) ranks training orders", ylim=(-0.65, 1.02))
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1)

    for est, marker in (("fut-carry", "o"), ("fut-carry-hvp2", "^")):
        for model, start, color in (("20.45M", False, "tab:blue"), ("1.13M", False, "tab:orange"),
                                    ("20.45M", True, "tab:green"), ("1.13M", True, "tab:red")):
            pts = [(res, rho) for setup, _, _, e, rho, res in rows
                   if e == est and res is not None and model in setup and ("pretrained" in setup) == start]
            if pts:
                right.scatter(*zip(*pts), marker=marker, color=color,
                              label=f"{model}, {est}" + (", continued training" if start else ""))
    right.axvline(0.5, color="k", ls="--", lw=0.8)
    right.axhline(0.9, color="k", ls=":", lw=0.8)
    right.set(xlabel="self-check: share of the gradient's change the expansion misses (median)",
              ylabel="Spearman vs real retraining", title="The self-check against the truth (warning above 0.5)")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110, bbox_inches="tight")
    print(f"{len(rows)} rows from {len(list(HERE.glob('validity_map*.json')))} files -> {a.out}")


if __name__ == "__main__":
    main()
