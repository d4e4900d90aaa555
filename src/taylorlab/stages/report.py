"""report: a table and a page of the results this pipeline's stages produced."""

from __future__ import annotations

from taylorlab.io import atomic_path, atomic_write_text, read_json
from taylorlab.report import figures
from taylorlab.report import collect_results, format_table, write_html


def run(ctx):
    run_dir = ctx.dir.parent
    rows = [r for r in collect_results([run_dir]) if r["stage"] in {p.name for p in ctx.parents.values()}]
    atomic_write_text(ctx.dir / "results.txt", format_table(rows) + "\n")
    ctx.tracker.table("report/perplexity", ["method", "pattern", "sparsity", "split", "seq_len", "ppl"],
                      [[r["method"], r["pattern"], r["sparsity"], r["split"], r["seq_len"], r["ppl"]] for r in rows])
    write_html([run_dir], ctx.dir / "index.html", title=f"taylorlab run {run_dir.name}")
    artifacts = {"table": "results.txt", "page": "index.html"}
    with atomic_path(ctx.dir / "perplexity_vs_sparsity.png") as tmp:
        if figures.perplexity_vs_sparsity(rows, tmp):
            artifacts["perplexity_figure"] = "perplexity_vs_sparsity.png"
    if "perplexity_figure" in artifacts:
        ctx.tracker.image("report/perplexity_vs_sparsity", ctx.dir / "perplexity_vs_sparsity.png")
    if "orders" in ctx.parents:
        estimates = read_json(ctx.parents["orders"] / "estimates.json")
        with atomic_path(ctx.dir / "order_estimates.png") as tmp:
            figures.order_scatter(estimates, tmp)
        ctx.tracker.image("report/order_estimates", ctx.dir / "order_estimates.png")
        artifacts["order_figure"] = "order_estimates.png"
    return artifacts
