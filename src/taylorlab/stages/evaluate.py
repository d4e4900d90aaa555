"""evaluate: perplexity of the parent model on a split, in non-overlapping windows, and zero-shot
accuracy through lm-evaluation-harness when ``zero_shot_tasks`` names tasks (``taylorlab_cloze`` is
built from the held-out test split; other names are lm-eval's own tasks)."""

from __future__ import annotations

from taylorlab.evaluation import perplexity
from taylorlab.data import load_text_split
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
    if c.zero_shot_tasks:
        # local: zero_shot imports lm-eval, an optional extra (pip install .[eval]) most runs never need
        from taylorlab.evaluation.zero_shot import LOCAL_TASK, build_cloze_task, run_lm_eval

        task_dir = None
        if LOCAL_TASK in c.zero_shot_tasks:
            texts = load_text_split(ctx.artifact("data", "test"), cache_dir=ctx.dir.parent / ".hf-datasets")
            task_dir = build_cloze_task(texts, ctx.dir / "zero_shot_tasks", n_items=c.zero_shot_items,
                                        max_chars=context_length(model, 600) // 2)
        zs = run_lm_eval(model, tok, list(c.zero_shot_tasks), task_dir, batch_size=c.batch_size,
                         limit=c.zero_shot_limit, device=str(device))
        result["zero_shot"] = zs
        for task, metrics in zs.items():
            ctx.tracker.summary({f"zero_shot/{task}/{k}": v for k, v in metrics.items()})
            ctx.log.info("zero-shot %s: %s", task, metrics)
    ctx.tracker.summary({f"{c.split}/ppl": res["ppl"], f"{c.split}/nll": res["nll"], f"{c.split}/seq_len": seq_len,
                         f"{c.split}/tokens": res["tokens"]})
    ctx.log.info("%s perplexity %.3f over %d windows of %d", c.split, res["ppl"], res["windows"], seq_len)
    atomic_write_json(ctx.dir / "result.json", result)
    return {"result": "result.json"}
