"""evaluate: perplexity of the parent model on a split, in non-overlapping windows."""

from __future__ import annotations

from taylorlab.evaluation import perplexity
from taylorlab.io import atomic_write_json, read_json
from taylorlab.models import context_length, load_model_artifact, resolve_device
from taylorlab.stages.common import split_tokens


def run(ctx):
    c = ctx.cfg
    device = resolve_device(c.device)
    model, tok = load_model_artifact(ctx.artifact("model", "model"), device=device, dtype=c.dtype)
    seq_len = context_length(model, c.seq_len)
    res = perplexity(model, split_tokens(ctx, c.split, tok), seq_len, batch_size=c.batch_size,
                     max_windows=c.max_windows, device=device, progress=ctx.progress)
    recipe_path = ctx.artifact("model", "recipe", required=False)
    recipe = read_json(recipe_path) if recipe_path else {"method": "dense"}
    result = {**res, "split": c.split, "model_stage": ctx.parents["model"].name, "recipe": recipe}
    ctx.tracker.summary({f"{c.split}/ppl": res["ppl"], f"{c.split}/nll": res["nll"], f"{c.split}/seq_len": seq_len,
                         f"{c.split}/tokens": res["tokens"]})
    ctx.log.info("%s perplexity %.3f over %d windows of %d", c.split, res["ppl"], res["windows"], seq_len)
    atomic_write_json(ctx.dir / "result.json", result)
    return {"result": "result.json"}
