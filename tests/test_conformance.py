"""Conformance of the pruning library over the decoder-only families transformers ships, as small
seeded random configs: the invariants hold for every architecture, not a list of special cases.

- replaying the blocks one by one, each with the call the model itself made (all positional and
  keyword arguments: per-layer masks, position embeddings, alibi), reproduces the model's own block
  inputs (sliding-window and full layers mixed: Mistral, Qwen2, Gemma2, Gemma3);
- every method x {unstructured, 2:4} prunes every prunable layer (nn.Linear and GPT-2's Conv1D) to
  its sparsity, N:M holds, nothing outside the pruned weights changes (embeddings, lm_head, norms,
  biases), and save_pretrained/from_pretrained keeps the zeros;
- the statistics do not depend on the calibration batch size (OPT flattens [B, T, d] before fc1).
"""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import prune_with
from torch import nn

from taylorlab.errors import ConfigError
from taylorlab.pruning import check_prunable, per_sequence_gradient_stats, prune_model, sparsity_report
from taylorlab.pruning.driver import calibration_statistics
from taylorlab.pruning.structure import block_linears, capture_block_calls, find_decoder_layers, run_block, weight_matrix

V, L, N = 101, 16, 4  # vocabulary, tokens per window (longer than every sliding window), windows


def _configs():
    import transformers as tf

    c = dict(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=64)
    kv = dict(intermediate_size=64, num_key_value_heads=2)
    return {
        "llama": lambda: tf.LlamaConfig(**c, **kv),
        "mistral": lambda: tf.MistralConfig(**c, **kv, sliding_window=4),
        # sliding attention in the layers from max_window_layers on, full attention below
        "qwen2": lambda: tf.Qwen2Config(**c, **kv, use_sliding_window=True, sliding_window=4, max_window_layers=1),
        "qwen3": lambda: tf.Qwen3Config(**c, **kv, head_dim=8),
        "gemma": lambda: tf.GemmaConfig(**c, **kv, head_dim=8),  # tied embeddings
        "gemma2": lambda: tf.Gemma2Config(**c, **kv, head_dim=8, sliding_window=4),
        # local layers with their own rotary base, every third layer global
        "gemma3": lambda: tf.Gemma3TextConfig(**c, **kv, head_dim=8, sliding_window=4, sliding_window_pattern=3),
        "phi": lambda: tf.PhiConfig(**c, intermediate_size=64, partial_rotary_factor=0.5),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**c, intermediate_size=64, rotary_pct=0.5),
        "opt": lambda: tf.OPTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                    ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64),
        "gpt2": lambda: tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=64, n_inner=64,
                                      bos_token_id=0, eos_token_id=0),
        "falcon": lambda: tf.FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4),
        "bloom": lambda: tf.BloomConfig(vocab_size=V, hidden_size=32, n_layer=3, n_head=4),  # alibi
    }


FAMILIES = list(_configs())


def build(family):
    from transformers import AutoModelForCausalLM

    cfg = _configs()[family]()
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random norms and biases, so no layer is an identity by construction
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def windows(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (N, L), generator=g)


@pytest.fixture(scope="module")
def models():
    return {f: build(f) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_replaying_each_block_with_its_own_call_reproduces_the_models_block_inputs(family, models):
    model = models[family]
    _, layers = find_decoder_layers(model)
    seen = [[] for _ in layers]  # what the model itself fed each block, batch by batch

    def grab(i):
        def hook(mod, args, kwargs):
            seen[i].append((args[0] if args else kwargs["hidden_states"]).clone())
        return hook

    w = windows()
    handles = [b.register_forward_pre_hook(grab(i), with_kwargs=True) for i, b in enumerate(layers)]
    with torch.no_grad():
        for s in range(0, N, 2):
            model(input_ids=w[s : s + 2], use_cache=False)
    for h in handles:
        h.remove()
    hidden, calls = capture_block_calls(model, w, 2, torch.device("cpu"))
    assert len(hidden) == 2 and all(len(c) == 2 for c in calls)
    with torch.no_grad():
        for i, block in enumerate(layers[:-1]):
            hidden = [run_block(block, x, call) for x, call in zip(hidden, calls[i])]
            for got, want in zip(hidden, seen[i + 1]):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5,
                                           msg=f"{family}: replayed input of block {i + 1} differs")


def _gradients(model, w):
    return per_sequence_gradient_stats(model, w, batch_size=2)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "ria", "sparsegpt", "wanda++", "gblm"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_prunes_every_family(family, method, pattern, models, tmp_path):
    from transformers import AutoModelForCausalLM

    dense = models[family]
    model = copy.deepcopy(dense)
    w = windows()
    grads = _gradients(model, w) if method == "gblm" else None
    prune_with(model, method=method, sparsity=0.5, pattern=pattern, windows=w, gradients=grads,
                grad_nsamples=N, batch_size=2, blocksize=8)
    pruned = {id(m.weight) for m in block_linears(model).values()}
    assert pruned, f"{family}: no prunable layer found"
    for name, lin in block_linears(model).items():
        wm = weight_matrix(lin)
        frac = float((wm == 0).float().mean())
        if pattern == "2:4":
            groups = (wm != 0).reshape(wm.shape[0], -1, 4).sum(-1)
            assert int(groups.max()) <= 2, f"{family} {name}: a group keeps more than 2 of 4"
            # SparseGPT zeroes inputs that are never active (after OPT's ReLU) whole, as the reference does
            assert frac >= 0.5 if method == "sparsegpt" else frac == pytest.approx(0.5, abs=1e-6), \
                f"{family} {name}: 2:4 sparsity {frac}"
        elif method == "sparsegpt":
            # a threshold per column block (ties may prune a few more); inputs that are never active
            # (after OPT's ReLU) are zeroed whole, as in the reference
            dead = (wm == 0).all(0)
            live = float((wm[:, ~dead] == 0).sum()) / wm.numel()
            assert frac >= 0.5 and live <= 0.52, f"{family} {name}: sparsity {frac} ({live} outside dead inputs)"
        else:
            assert frac == pytest.approx(0.5, abs=1e-6), f"{family} {name}: sparsity {frac}"
    # nothing but the pruned weights moved: embeddings, lm_head, norms, biases
    before = dict(dense.named_parameters())
    for name, p in model.named_parameters():
        if id(p) not in pruned:
            assert torch.equal(p, before[name]), f"{family}: {name} changed"
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    for (name, a), b in zip(block_linears(model).items(), block_linears(reloaded).values()):
        assert torch.equal(weight_matrix(a) == 0, weight_matrix(b) == 0), f"{family}: zeros of {name} lost on reload"
    assert sparsity_report(reloaded)["total"]["sparsity"] == pytest.approx(sparsity_report(model)["total"]["sparsity"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=w).logits, model(input_ids=w).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_statistics_do_not_depend_on_the_batch_size(family, models):
    model = models[family]
    w = windows()
    one = calibration_statistics(model, w, batch_size=1, hessian=True)
    four = calibration_statistics(model, w, batch_size=4, hessian=True)
    assert one.keys() == four.keys() and one
    for name in one:
        torch.testing.assert_close(one[name].act_norm(), four[name].act_norm(), rtol=1e-4, atol=1e-6,
                                   msg=f"{family} {name}: activation norm")
        torch.testing.assert_close(one[name].hessian, four[name].hessian, rtol=1e-4, atol=1e-6,
                                   msg=f"{family} {name}: Hessian")
    g1 = per_sequence_gradient_stats(model, w, batch_size=1)
    g4 = per_sequence_gradient_stats(model, w, batch_size=4)
    for name in g1:
        torch.testing.assert_close(g1[name], g4[name], rtol=1e-4, atol=1e-8, msg=f"{family} {name}: gradient")


def test_conv1d_layers_are_pruned_like_transposed_linears(models):
    model = copy.deepcopy(models["gpt2"])
    layers = block_linears(model)
    assert {type(m).__name__ for m in layers.values()} == {"Conv1D"}
    prune_with(model, method="magnitude", sparsity=0.5)
    for name, lin in layers.items():
        wm = weight_matrix(lin)
        assert wm.shape == (lin.weight.shape[1], lin.weight.shape[0])
        assert float((lin.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)


class _NoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.LayerNorm(8) for _ in range(2)])


def test_a_model_with_nothing_prunable_is_an_error():
    with pytest.raises(ConfigError, match="nothing to prune"):
        check_prunable(_NoLinears(), "unstructured")
    with pytest.raises(ConfigError, match="nothing to prune"):
        prune_with(_NoLinears(), method="magnitude", sparsity=0.5)


def test_an_nm_pattern_that_does_not_fit_a_layer_is_refused_before_anything_is_pruned(models):
    model = copy.deepcopy(models["llama"])  # input widths 32 and 64
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="M=3 does not divide"):
        prune_with(model, method="wanda", pattern="2:3", windows=windows())
    with pytest.raises(ConfigError, match="prune.options.blocksize=6 is not a multiple of M=4"):
        prune_with(model, method="sparsegpt", pattern="2:4", windows=windows(), blocksize=6)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", FAMILIES)
def test_regional_optimisation_replays_single_sequences_of_every_family(family, models):
    """Wanda++'s regional optimisation calls each block on one sequence at a time (the batch's call
    sliced): it runs on every family, moves only the prunable weights and leaves the exact sparsity."""
    from taylorlab.pruning.structure import capture_block_calls, find_decoder_layers, run_block, slice_call, take_call

    dense = models[family]
    hidden, calls = capture_block_calls(dense, windows(), 2, torch.device("cpu"))
    for block, call in zip(find_decoder_layers(dense)[1], calls):  # one sequence replays as its batch row
        with torch.no_grad():
            whole = run_block(block, hidden[0], call[0])
            for j in range(hidden[0].shape[0]):
                one = run_block(block, hidden[0][j:j + 1], slice_call(call[0], j, j + 1, hidden[0].shape[0]))
                torch.testing.assert_close(one, whole[j:j + 1], rtol=1e-5, atol=1e-6, msg=family)
            rows = list(range(hidden[0].shape[0]))[::-1]  # gathered rows, reordered, replay as theirs too
            some = run_block(block, hidden[0][rows], take_call(call[0], rows, hidden[0].shape[0]))
            torch.testing.assert_close(some, whole[rows], rtol=1e-5, atol=1e-6, msg=family)
    model, plain = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_with(model, method="wanda++", sparsity=0.5, windows=windows(), batch_size=2, ro_iters=1, ro_samples=3,
               ro_lr=1e-4)
    prune_with(plain, method="wanda++", sparsity=0.5, windows=windows(), batch_size=2)
    pruned = {id(m.weight) for m in block_linears(model).values()}
    for name, lin in block_linears(model).items():
        assert float((weight_matrix(lin) == 0).float().mean()) == pytest.approx(0.5, abs=1e-6), f"{family} {name}"
    before = dict(dense.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if id(p) not in pruned), family
    assert any(not torch.equal(weight_matrix(a), weight_matrix(b)) for a, b in
               zip(block_linears(model).values(), block_linears(plain).values())), f"{family}: it changed nothing"


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_sequential_walk_is_its_definition_on_every_family(family, method, models):
    """walk=sequential, one pass with the calls as coroutines, equals one statistics pass of the block
    as it stands per linear (the linears before it pruned), on every family: parallel attention and
    MLP (Falcon, Phi, GPT-NeoX), Conv1D (GPT-2), OPT's flattened fc1/fc2, sliding layers."""
    from helpers import prune_one_linear_at_a_time

    w = windows()
    a, b = copy.deepcopy(models[family]), copy.deepcopy(models[family])
    prune_with(a, method=method, sparsity=0.5, windows=w, batch_size=2, blocksize=8, walk="sequential")
    prune_one_linear_at_a_time(b, method, w, 2, **({"blocksize": 8} if method == "sparsegpt" else {}))
    for (name, la), lb in zip(block_linears(a).items(), block_linears(b).values()):
        assert torch.equal(weight_matrix(la) == 0, weight_matrix(lb) == 0), f"{family} {name}"
        torch.testing.assert_close(weight_matrix(la), weight_matrix(lb), rtol=1e-5, atol=1e-6,
                                   msg=f"{family} {name}")


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_kernels_replace_exactly_the_llama_forms_and_refuse_the_rest(family, models):
    """``prune.kernels=liger`` swaps in fused kernels only where the modules have the Llama forms (their
    RMSNorm casting, a SiLU-gated MLP, the rotate-half rotary); the others are refused, never half-patched.
    On this CPU every request is refused with the key named: the kernels are CUDA's."""
    from taylorlab.pruning.kernels import FAMILIES as FUSED, fused_kernels, fusable

    model = models[family]
    norms, mlps, fams = fusable(model)
    blocks = len(find_decoder_layers(model)[1])
    if family in FUSED:
        per_block = 4 if family == "qwen3" else 2  # Qwen3 also normalises q and k per head
        assert (len(norms), len(mlps), fams) == (per_block * blocks + 1, blocks, [family])
    else:
        assert (norms, mlps, fams) == ([], [], [])
    before = [type(m).forward for m in model.modules()]
    with pytest.raises(ConfigError, match=r"prune\.kernels=liger"):
        with fused_kernels(model, "liger", torch.device("cpu")):
            pass
    with pytest.raises(ConfigError, match=r"calibrate\.kernels=liger"):
        per_sequence_gradient_stats(model, windows(), kernels="liger")
    with fused_kernels(model, "eager", torch.device("cpu")) as n:
        assert n == {"rms_norm": 0, "mlp": 0, "rope": 0}
    assert [type(m).forward for m in model.modules()] == before
    assert not any("forward" in vars(m) for m in model.modules())  # no instance left patched
