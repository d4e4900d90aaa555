"""GPU tests of the inference backends: the 2:4 kernels reproduce the dense-masked model, eagerly and
replayed from CUDA graphs, in fewer bytes. Skipped without CUDA (CI has none)."""

import copy

import pytest
import torch

from taylorlab.evaluation import inference as inf

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _pruned_model():
    from taylorlab.models import build_llama
    from taylorlab.pruning import prune_model

    m = build_llama(512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256, seed=0)
    prune_model(m, "magnitude", pattern="2:4")
    return m.to("cuda", torch.bfloat16).eval()


@pytest.mark.parametrize("backend", ["semi_structured", "cslt"])
@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_two_four_backends_reproduce_the_dense_masked_logits(backend, mode):
    dense = _pruned_model()
    if inf.semi_structured_support(torch.device("cuda"), torch.bfloat16):
        pytest.skip(inf.semi_structured_support(torch.device("cuda"), torch.bfloat16))
    ids = inf.prompts(512, 2, 64, torch.device("cuda"))
    ref = inf.last_logits(dense, ids)
    sparse = copy.deepcopy(dense)
    info = inf.apply_backend(sparse, backend)
    assert info["converted"] == info["two_four_linears"] == info["block_linears"] == 14, info
    got = inf.last_logits(sparse, ids, mode)
    cmp = inf.compare(ref, got)
    assert cmp["rel_max_diff"] <= inf.tolerance(torch.bfloat16), cmp
    assert cmp["top1_agreement"] == 1.0, cmp
    # 2:4 holds half the block weights plus metadata: fewer bytes than dense
    assert inf.weight_bytes(sparse) < inf.weight_bytes(dense)


def test_measure_reports_prefill_decode_and_peak_memory_on_gpu():
    m = _pruned_model()
    spec = inf.InferenceSpec(prompt_lengths=[32, 64], decode_batches=[1, 2], decode_prompt=16, decode_tokens=4,
                             min_run_time=0.05)
    for mode in ("eager", "graph"):
        r = inf.measure(m, spec, mode=mode)
        assert set(r["prefill"]) == {"32", "64"} and all(v["median_s"] > 0 for v in r["prefill"].values())
        assert r["peak_bytes"] >= inf.weight_bytes(m)
        if mode == "eager":
            assert set(r["decode"]) == {"1", "2"} and all(v["tokens_per_s"] > 0 for v in r["decode"].values())


def test_graphed_decode_on_gpu_gives_generates_tokens():
    m = _pruned_model()
    ids = inf.prompts(512, 2, 16, torch.device("cuda"))
    ref = inf._generate(m, ids, 6)[:, 16:]
    g = inf.GraphedDecode(m, ids, 6)
    assert torch.equal(g.run(6), ref) and torch.equal(g.run(6), ref)  # replayed twice: the cache rewinds
    assert g.seconds_per_step() > 0
