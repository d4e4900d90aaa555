"""Stage functions for engine tests (the engine is generic: it runs any StageSpec)."""

from taylorlab.io import atomic_write_text


def produce(ctx):
    value = int(ctx.cfg.value)
    for role in ctx.parents:
        value += int((ctx.parents[role] / "out.txt").read_text())
    atomic_write_text(ctx.dir / "out.txt", str(value))
    ctx.tracker.log({"toy/value": value})
    with open(ctx.dir.parent / "calls.log", "a") as fh:
        fh.write(ctx.node + "\n")
    return {"out": "out.txt"}


def explode(ctx):
    (ctx.dir / "partial.txt.tmp").write_text("half")
    raise ValueError("boom in the toy stage")
