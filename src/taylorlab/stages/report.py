"""report: a table and a page of the results this pipeline's stages produced."""

from __future__ import annotations

from taylorlab.io import atomic_write_text
from taylorlab.report import collect_results, format_table, write_html


def run(ctx):
    run_dir = ctx.dir.parent
    rows = [r for r in collect_results([run_dir]) if r["stage"] in {p.name for p in ctx.parents.values()}]
    atomic_write_text(ctx.dir / "results.txt", format_table(rows) + "\n")
    ctx.tracker.table("report/perplexity", ["method", "pattern", "sparsity", "split", "seq_len", "ppl"],
                      [[r["method"], r["pattern"], r["sparsity"], r["split"], r["seq_len"], r["ppl"]] for r in rows])
    write_html([run_dir], ctx.dir / "index.html", title=f"taylorlab run {run_dir.name}")
    return {"table": "results.txt", "page": "index.html"}
