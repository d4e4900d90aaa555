"""inference: what the pruned model is worth when it runs. The dense model under study and the pruned
model, each measured for prefill latency per prompt length, decode tokens/s per batch and peak memory;
the pruned model's 2:4 layers also through PyTorch's semi-structured kernels and the direct
cuSPARSELt call, eagerly and as CUDA graphs, each checked against the pruned model's dense logits."""

from __future__ import annotations

import platform

import torch
from tqdm import tqdm

from taylorlab.errors import ConfigError
from taylorlab.evaluation import inference as inf
from taylorlab.io import atomic_write_json, read_json
from taylorlab.models import context_length, load_model_artifact, resolve_device, torch_dtype


def _dtype(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    return "bfloat16" if device.type == "cuda" else "float32"  # bf16: what a served model runs in


def run(ctx):
    c = ctx.cfg
    device = resolve_device(c.device)
    dtype_name = _dtype(c.dtype, device)
    dtype = torch_dtype(dtype_name)
    recipe = read_json(ctx.artifact("pruned", "recipe"))
    combos = [("dense", "dense", m) for m in c.modes]
    combos += [("pruned", b, m) for b in c.backends for m in c.modes]
    spec = None
    rows, reference, skipped_lengths = [], None, []
    bar = tqdm(combos, desc="inference", disable=not ctx.progress)
    loaded = {}
    for role, backend, mode in bar:
        bar.set_postfix_str(f"{role}/{backend}/{mode}")
        row = {"model": role, "backend": backend, "mode": mode}
        why = _cannot(backend, mode, device, dtype)
        if why:
            rows.append({**row, "skipped": why})
            ctx.log.info("%s/%s/%s: skipped (%s)", role, backend, mode, why)
            continue
        key = (role, backend)
        if key not in loaded:  # one load per model and backend; both modes share it
            loaded.clear()
            model = None  # the previous model is freed before the next one loads (two 7B copies need not fit)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            model, _ = load_model_artifact(ctx.artifact("dense" if role == "dense" else "pruned", "model"),
                                           device=device, dtype=dtype_name)
            model.eval()
            if spec is None:
                ctx_len = context_length(model, max(c.prompt_lengths))
                lengths, skipped_lengths = inf.fits(list(c.prompt_lengths), ctx_len)
                if not lengths:
                    raise ConfigError(f"inference.prompt_lengths={list(c.prompt_lengths)}: every length exceeds the "
                                      f"model's context ({ctx_len} tokens); give one of at most {ctx_len}.")
                if skipped_lengths:
                    ctx.log.info("prompt lengths %s exceed the model's context (%d tokens): not measured",
                                 skipped_lengths, ctx_len)
                spec = inf.InferenceSpec(prompt_lengths=lengths, prefill_batch=c.prefill_batch,
                                         decode_batches=list(c.decode_batches),
                                         decode_prompt=min(c.decode_prompt, ctx_len - c.decode_length),
                                         decode_tokens=c.decode_length, check_length=min(c.check_length, ctx_len),
                                         min_run_time=c.min_run_time)
                check_ids = inf.prompts(model.config.vocab_size, 2, spec.check_length, device, seed=1)
            conversion = inf.apply_backend(model, backend)
            loaded[key] = (model, conversion)
        model, conversion = loaded[key]
        row["layers"] = conversion
        if backend != "dense" and not conversion["converted"]:
            rows.append({**row, "skipped": f"no 2:4 layers to convert (pattern {recipe.get('pattern')})"})
            continue
        try:
            logits = inf.last_logits(model, check_ids, mode)
            measured = inf.measure(model, spec, mode=mode)
        except RuntimeError as exc:  # e.g. a CUDA graph this model's forward cannot be captured in
            rows.append({**row, "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
            ctx.log.warning("%s/%s/%s: skipped (%s)", role, backend, mode, rows[-1]["skipped"])
            continue
        if role == "pruned" and backend == "dense" and reference is None:  # eager first when it runs
            reference = logits
        if role == "pruned" and reference is not None:
            row["check"] = {**inf.compare(reference, logits), "tolerance": inf.tolerance(dtype)}
            row["check"]["equal_within_tolerance"] = row["check"]["rel_max_diff"] <= row["check"]["tolerance"]
            if not row["check"]["equal_within_tolerance"]:
                ctx.log.warning("%s/%s: logits differ from the pruned model's dense logits by %.3g (relative), "
                                "beyond %.3g", backend, mode, row["check"]["rel_max_diff"], row["check"]["tolerance"])
        row.update(measured)
        rows.append(row)
        ctx.log.info("%s", _line(row))
    loaded.clear()
    inf.ratio_table(rows, lambda r: r["model"] == "dense")  # against the unpruned model run the same way
    result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "cpu": platform.processor() or platform.machine(), "dtype": dtype_name, "torch": torch.__version__,
              "spec": {k: v for k, v in vars(spec).items()} if spec else None, "lengths_not_measured": skipped_lengths,
              "recipe": recipe, "pruned_stage": ctx.parents["pruned"].name, "dense_stage": ctx.parents["dense"].name,
              "rows": rows}
    atomic_write_json(ctx.dir / "inference.json", result)
    _track(ctx, rows)
    return {"inference": "inference.json"}


def _cannot(backend: str, mode: str, device: torch.device, dtype: torch.dtype):
    if mode == "graph" and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if backend != "dense":
        return inf.semi_structured_support(device, dtype)
    return None


def _line(row) -> str:
    pre = ", ".join(f"{L}: {v['median_s'] * 1e3:.2f} ms" for L, v in row["prefill"].items())
    dec = ", ".join(f"b{b}: {v['tokens_per_s']:.1f} tok/s" if v["tokens_per_s"] else f"b{b}: {v.get('note')}"
                    for b, v in row["decode"].items())
    peak = f", peak {row['peak_bytes'] / 2**30:.2f} GiB" if row.get("peak_bytes") else ""
    return (f"{row['model']}/{row['backend']}/{row['mode']}: prefill {pre}" + (f"; decode {dec}" if dec else "")
            + f"; weights {row['weight_bytes'] / 2**20:.1f} MiB{peak}")


def _track(ctx, rows) -> None:
    flat, table = {}, []
    for r in rows:
        name = f"inference/{r['model']}/{r['backend']}/{r['mode']}"
        if r.get("skipped"):
            table.append([r["model"], r["backend"], r["mode"], None, None, None, None, r["skipped"]])
            continue
        for L, v in r["prefill"].items():
            flat[f"{name}/prefill_{L}_s"] = v["median_s"]
            flat[f"{name}/prefill_{L}_speedup"] = r.get("prefill_speedup", {}).get(L)
        for b, v in r["decode"].items():
            if v["tokens_per_s"]:
                flat[f"{name}/decode_b{b}_tok_s"] = v["tokens_per_s"]
        flat[f"{name}/weight_bytes"] = r["weight_bytes"]
        if r.get("peak_bytes"):
            flat[f"{name}/peak_bytes"] = r["peak_bytes"]
        longest = list(r["prefill"])[-1]
        table.append([r["model"], r["backend"], r["mode"], int(longest), r["prefill"][longest]["median_s"],
                      r.get("prefill_speedup", {}).get(longest), r["weight_bytes"], ""])
    ctx.tracker.summary(flat)
    ctx.tracker.table("inference/rows", ["model", "backend", "mode", "longest_prompt", "prefill_s", "speedup",
                                         "weight_bytes", "skipped"], table)
