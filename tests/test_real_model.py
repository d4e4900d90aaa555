"""The embedded real model, SmolLM2-135M (GGUF inside a PyPI package), through the real entry point
at reduced scale: what the papers predict must show on it, and the order stages must run on it.

Marked ``realmodel``: the slow tier (minutes on 2 cores), run by CI with the rest.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.realmodel]

# debug=fast shrinks the data stage; the windows are long enough for a real model's perplexity
SMALL = ["model=smollm2", "debug=fast", "launcher=inline", "run=real", "calibrate.num_samples=8",
         "calibrate.seq_len=128", "evaluate.seq_len=128", "evaluate.max_windows=16", "evaluate.batch_size=4",
         "prune.batch_size=4"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One outputs tree for the module: the data and base_model stages run once."""
    return tmp_path_factory.mktemp("real")


def _dirs(out, node):
    return sorted(d for d in (Path(out) / "real").glob(f"{node}-*") if (d / "DONE").exists())


def test_smollm2_pruning_pipeline_shows_the_papers_ordering(out):
    from transformers import AutoModelForCausalLM

    from taylorlab.pruning import sparsity_report

    run_cli(SMALL + ["-m", "experiment=smollm2_prune", "prune.method=magnitude,wanda,sparsegpt,gblm"], out,
            check=True, timeout=1500)
    (base,) = _dirs(out, "base_model")
    assert "quantization_config" not in json.loads((base / "model" / "config.json").read_text())
    ppl = {}
    for d in _dirs(out, "evaluate_dense") + _dirs(out, "evaluate_pruned"):
        r = json.loads((d / "result.json").read_text())
        ppl[(r.get("recipe") or {}).get("method", "dense")] = r["ppl"]
    assert set(ppl) == {"dense", "magnitude", "wanda", "sparsegpt", "gblm"}, ppl
    assert all(math.isfinite(v) for v in ppl.values()), ppl
    # each pruned model is worse than the dense one; magnitude far worse than the three others
    assert all(ppl[m] > ppl["dense"] for m in ("magnitude", "wanda", "sparsegpt", "gblm")), ppl
    assert ppl["magnitude"] > 3 * max(ppl["wanda"], ppl["sparsegpt"], ppl["gblm"]), ppl
    for d in _dirs(out, "prune"):
        recipe = json.loads((d / "recipe.json").read_text())
        assert recipe["sparsity"] == 0.5
        assert json.loads((d / "sparsity.json").read_text())["total"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    # the pruned real model round-trips through from_pretrained with its zeros
    d = next(d for d in _dirs(out, "prune") if json.loads((d / "recipe.json").read_text())["method"] == "wanda")
    reloaded = AutoModelForCausalLM.from_pretrained(d / "model", local_files_only=True)
    saved = json.loads((d / "sparsity.json").read_text())
    assert sparsity_report(reloaded)["total"] == saved["total"]
    # and its compact form (kept values + bitmask) gives back the same weights in ~0.63 of the bytes
    from taylorlab.pruning.compact import load_compact

    recipe = json.loads((d / "recipe.json").read_text())
    assert recipe["compact_bytes"] < 0.7 * recipe["dense_bytes"], recipe
    compact = load_compact(d / "model.compact.safetensors").state_dict()
    assert all(torch.equal(compact[k], v) for k, v in reloaded.state_dict().items())


def test_smollm2_record_then_estimate(out):
    """Continued training of the real model at a small learning rate, where the linearisation holds:
    fut-carry must land far closer to the retrained truth than "no change" does."""
    args = SMALL + ["stages=[estimate]", "record.num_batches=3", "record.seq_len=32", "record.batch_size=2",
                    "record.dtype=float32", "record.lr=1e-5", "record.validation_batches=2", "estimate.num_orders=2",
                    "estimate.estimators=[none,fut-carry]", "estimate.sensitivity=[]", "estimate.heuristics=[]"]
    run_cli(args, out, check=True, timeout=1500)
    (est,) = _dirs(out, "estimate")
    estimates = json.loads((est / "estimates.json").read_text())
    fid = {r["estimator"]: r for r in estimates["fidelity"]}
    assert set(fid) == {"none", "fut-carry"}
    losses = [o["true_loss"] for o in estimates["orders"]]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    # a pretrained model continues from a low loss (a random one starts near ln(49152) = 10.8)
    assert all(2.0 < x < 6.0 for x in losses), losses
    assert all(math.isfinite(o["fut-carry_loss"]) for o in estimates["orders"])
    assert fid["fut-carry"]["mae_ratio_to_none"] < 0.5, fid
    assert fid["fut-carry"]["rel_param_error"] < 0.5 * fid["none"]["rel_param_error"], fid


def test_smollm2_gradient_does_not_depend_on_how_the_batch_is_split(out):
    """The order stages' gradient of the real model (FlatModel, float32) over micro-batches of 1 and
    of 2 sequences is the one-pass gradient of the batch of 4, to float32's rounding — the invariant
    record.micro_batch rests on, on the architecture it is for (SmolLM2: tied embeddings, GQA)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from taylorlab.order import FlatModel

    run_cli(SMALL + ["stages=[base_model]"], out, check=True, timeout=900)  # cached when the tests above ran
    (base,) = _dirs(out, "base_model")
    model = AutoModelForCausalLM.from_pretrained(base / "model", local_files_only=True)
    tok = AutoTokenizer.from_pretrained(base / "model", local_files_only=True)
    ids = tok("The quick brown fox jumps over the lazy dog. " * 12, return_tensors="pt")["input_ids"][0]
    batch = ids[: 4 * 24].view(4, 24)
    whole = FlatModel(model)
    theta = whole.flat()
    g = whole.grad(theta, batch)
    for micro in (1, 2):
        acc = FlatModel(model, micro_batch=micro)
        assert float(torch.linalg.vector_norm(acc.grad(theta, batch) - g) / torch.linalg.vector_norm(g)) < 1e-4
        assert abs(float(acc.loss(theta, batch) - whole.loss(theta, batch))) < 1e-5
    # the check can fail: half the batch is not the batch
    assert float(torch.linalg.vector_norm(whole.grad(theta, batch[:2]) - g) / torch.linalg.vector_norm(g)) > 1e-2
