"""The inference stage and its library on the CPU: what it measures, what it refuses, and the
invariant a captured decode rests on (the static-cache step reproduces generate()'s tokens).
The 2:4 kernels themselves need a GPU: tests/gpu/test_gpu_inference.py."""

import json
from pathlib import Path

import pytest
import torch

from helpers import run_cli

from taylorlab.evaluation import inference as inf


def _model(pattern=None):
    from taylorlab.models import build_llama
    from taylorlab.pruning import prune_model

    m = build_llama(512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2, max_position_embeddings=128, seed=0)
    if pattern:
        prune_model(m, "magnitude", pattern=pattern)
    return m.eval()


def test_two_four_is_found_exactly():
    w = torch.randn(8, 16)
    assert not inf.is_two_four(w)
    g = w.reshape(8, 4, 4).clone()
    g[..., :2] = 0
    assert inf.is_two_four(g.reshape(8, 16))
    g[0, 0, 0] = 1.0  # one group with three non-zeros
    assert not inf.is_two_four(g.reshape(8, 16))
    info = inf.apply_backend(_model("2:4"), "dense")
    assert info == {"block_linears": 14, "two_four_linears": 14, "converted": 0}
    assert inf.apply_backend(_model("4:8"), "dense")["two_four_linears"] == 0  # 4:8 is not 2:4
    assert inf.apply_backend(_model(), "dense")["two_four_linears"] == 0


def test_the_two_four_kernels_say_why_they_cannot_run_on_the_cpu():
    why = inf.semi_structured_support(torch.device("cpu"), torch.bfloat16)
    assert why and "CUDA" in why


def test_static_cache_decode_reproduces_generate():
    """The step a CUDA graph captures (static KV cache, positions on the device), run eagerly: the
    same greedy tokens as transformers' generate(), and again after a rewind."""
    m = _model("2:4")
    ids = inf.prompts(512, 3, 10, torch.device("cpu"))
    ref = inf._generate(m, ids, 7)[:, 10:]
    step = inf.GraphedDecode(m, ids, 7, capture=False)
    assert torch.equal(step.run(7), ref) and torch.equal(step.run(7), ref)
    with pytest.raises(ValueError, match="cache built for 7"):
        step.run(8)


def test_measure_on_cpu_reports_every_length_and_batch():
    m = _model("2:4")
    spec = inf.InferenceSpec(prompt_lengths=[8, 32], decode_batches=[1, 3], decode_prompt=8, decode_tokens=8,
                             min_run_time=0.01)
    r = inf.measure(m, spec)
    assert set(r["prefill"]) == {"8", "32"} and set(r["decode"]) == {"1", "3"}
    assert all(v["median_s"] > 0 and v["tokens_per_s"] > 0 for v in r["prefill"].values())
    assert all(v["tokens_per_s"] > 0 and v["ms_per_step"] > 0 for v in r["decode"].values())
    tensors = {t.data_ptr(): t for t in [*m.parameters(), *m.buffers()]}  # tied weights count once
    assert r["weight_bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert r["peak_bytes"] is None  # no device allocator to ask on the CPU
    with pytest.raises(ValueError, match="mode='compiled'"):
        inf.measure(m, spec, mode="compiled")


def test_inference_stage_measures_dense_and_pruned_and_names_what_it_skipped(tmp_path):
    run_cli(["debug=fast", "launcher=inline", "run=inf", "stages=[inference]", "prune.pattern=2:4",
             "inference.prompt_lengths=[16,32,4096]"], tmp_path, check=True)
    (d,) = [p for p in (Path(tmp_path) / "inf").glob("inference-*") if (p / "DONE").exists()]
    res = json.loads((d / "inference.json").read_text())
    assert res["device"] == "cpu" and res["dtype"] == "float32" and res["lengths_not_measured"] == [4096]
    rows = {(r["model"], r["backend"], r["mode"]): r for r in res["rows"]}
    assert len(rows) == 2 * 1 + 2 * 3  # dense x {eager, graph}, pruned x 3 backends x 2 modes
    measured = [k for k, r in rows.items() if not r.get("skipped")]
    assert measured == [("dense", "dense", "eager"), ("pruned", "dense", "eager")]
    for k, r in rows.items():
        if k not in measured:
            assert "CUDA" in r["skipped"], r  # why, in words
    base, pruned = rows[("dense", "dense", "eager")], rows[("pruned", "dense", "eager")]
    assert set(pruned["prefill"]) == {"16", "32"} and set(pruned["decode"]) == {"1", "2"}
    assert base["prefill_speedup"] == {"16": 1.0, "32": 1.0}
    assert pruned["prefill_speedup"]["32"] == pytest.approx(base["prefill"]["32"]["median_s"]
                                                            / pruned["prefill"]["32"]["median_s"])
    assert pruned["check"]["rel_max_diff"] == 0.0 and pruned["check"]["equal_within_tolerance"]
    assert pruned["layers"]["two_four_linears"] == pruned["layers"]["block_linears"] > 0
    assert res["recipe"]["pattern"] == "2:4"


def test_inference_stage_refuses_prompts_no_length_of_which_fits(tmp_path):
    proc = run_cli(["debug=fast", "launcher=inline", "run=inf", "stages=[inference]",
                    "inference.prompt_lengths=[100000]"], tmp_path)
    assert proc.returncode != 0
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "exceeds the model's context" in err[0], proc.stderr[-2000:]
