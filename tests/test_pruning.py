"""Properties of the pruning methods (no magic numbers)."""

import copy

import pytest
import torch

from helpers import prune_with

from taylorlab.errors import ConfigError
from taylorlab.pruning import mask_nm, per_sequence_gradient_stats, prune_model, sparsity_report
from taylorlab.pruning.masks import parse_pattern
from taylorlab.pruning.methods.gblm import gradient_term as gblm_gradient_term, score as score_gblm
from taylorlab.pruning.methods.sparsegpt import sparsegpt_prune_
from taylorlab.pruning.methods.wanda import score as score_wanda
from taylorlab.pruning.masks import mask_per_row
from taylorlab.pruning.stats import InputStats
from taylorlab.pruning.structure import block_linears


def windows(n=8, length=16, vocab=97, seed=0):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def grads(model, w):
    return per_sequence_gradient_stats(model, w, batch_size=3)


@pytest.mark.parametrize("method", ["wanda", "gblm", "ria"])
def test_every_row_has_exactly_the_target_sparsity(tiny_llama, method):
    w = windows()
    g = grads(tiny_llama, w) if method == "gblm" else None
    prune_with(tiny_llama, method=method, sparsity=0.5, windows=w, gradients=g, grad_nsamples=8)
    for name, lin in block_linears(tiny_llama).items():
        zeros_per_row = (lin.weight == 0).sum(1)
        assert torch.all(zeros_per_row == int(lin.in_features * 0.5)), name


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "gblm", "ria"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_saved_nm_weights_have_at_most_n_nonzeros_per_group(tiny_llama, method, pattern, tmp_path):
    from transformers import AutoModelForCausalLM

    n, m = parse_pattern(pattern)
    w = windows()
    g = grads(tiny_llama, w) if method == "gblm" else None
    prune_with(tiny_llama, method=method, sparsity=0.5, pattern=pattern, windows=w, gradients=g, grad_nsamples=8,
                blocksize=16)
    tiny_llama.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for name, lin in block_linears(reloaded).items():
        groups = (lin.weight != 0).reshape(lin.out_features, -1, m).sum(-1)
        assert int(groups.max()) <= n, name


def test_magnitude_uses_one_threshold_per_matrix(tiny_llama):
    before = {k: v.weight.detach().clone() for k, v in block_linears(tiny_llama).items()}
    prune_with(tiny_llama, method="magnitude", sparsity=0.3)
    for name, lin in block_linears(tiny_llama).items():
        kept = before[name][lin.weight != 0].abs()
        cut = before[name][lin.weight == 0].abs()
        assert cut.max() <= kept.min()
        assert int((lin.weight == 0).sum()) == int(lin.weight.numel() * 0.3)


def test_gblm_with_alpha_zero_gives_wandas_masks(tiny_llama):
    import copy

    w = windows()
    a, b = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    prune_with(a, method="wanda", sparsity=0.5, windows=w)
    prune_with(b, method="gblm", sparsity=0.5, windows=w, gradients=grads(tiny_llama, w), grad_nsamples=8, alpha=0.0)
    for (na, la), (nb, lb) in zip(block_linears(a).items(), block_linears(b).items()):
        assert torch.equal(la.weight == 0, lb.weight == 0), na


def test_gblm_gradient_term_changes_the_masks(tiny_llama):
    import copy

    w = windows()
    a, b = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    prune_with(a, method="wanda", sparsity=0.5, windows=w)
    prune_with(b, method="gblm", sparsity=0.5, windows=w, gradients=grads(tiny_llama, w), grad_nsamples=8, alpha=1e4)
    assert any(not torch.equal(la.weight == 0, lb.weight == 0)
               for la, lb in zip(block_linears(a).values(), block_linears(b).values()))


def test_gblm_normalisations_agree_at_the_documented_alpha():
    g = torch.rand(6, 8)
    ref = gblm_gradient_term(g, 16, "l2", "reference")
    rms = gblm_gradient_term(g, 16, "l2", "rms")
    assert torch.allclose(ref, rms * 100 * 16 ** 0.5, rtol=1e-5)


def test_sparsegpt_reconstructs_better_than_wanda_on_correlated_inputs():
    torch.manual_seed(0)
    d_in, d_out, tokens = 64, 32, 2048
    basis = torch.randn(8, d_in)
    x = torch.randn(tokens, 8) @ basis + 0.05 * torch.randn(tokens, d_in)  # strongly correlated inputs
    lin = torch.nn.Linear(d_in, d_out, bias=False)
    w0 = lin.weight.detach().clone()
    stats = InputStats(lin, hessian=True)
    stats.add(x.unsqueeze(0))
    wanda = w0.clone()
    wanda[mask_per_row(score_wanda(w0, stats.act_norm()), 0.5)] = 0
    sparsegpt_prune_(lin, stats.hessian, 0.5, None, blocksize=16)
    assert float((lin.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    err_sgpt = torch.linalg.norm(x @ w0.T - x @ lin.weight.detach().T)
    err_wanda = torch.linalg.norm(x @ w0.T - x @ wanda.T)
    assert err_sgpt < err_wanda


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_batched_per_sequence_gradient_norms_equal_a_loop(tiny_llama, norm):
    tiny_llama = tiny_llama.double()
    w = windows(n=5)
    batched = per_sequence_gradient_stats(tiny_llama, w, batch_size=3, norm=norm)
    loop = {k: torch.zeros_like(v) for k, v in batched.items()}
    params = dict(tiny_llama.named_parameters())
    for i in range(w.shape[0]):
        tiny_llama.zero_grad()
        ids = w[i : i + 1]
        tiny_llama(input_ids=ids, labels=ids).loss.backward()
        for k in loop:
            g = params[k + ".weight"].grad.float()
            loop[k] += g * g if norm == "l2" else g.abs()
    for k in batched:
        assert torch.allclose(batched[k], loop[k], rtol=1e-4, atol=1e-9), k


def test_pruned_model_reloads_with_the_same_logits(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    w = windows()
    prune_with(tiny_llama, method="sparsegpt", sparsity=0.5, windows=w, blocksize=16)
    tiny_llama.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(tiny_llama(input_ids=w).logits, reloaded(input_ids=w).logits)
    assert sparsity_report(reloaded)["total"]["sparsity"] == pytest.approx(0.5, abs=0.02)


def _tiny(arch):
    from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config)

    common = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64)
    cfg = {
        "llama": lambda: LlamaConfig(intermediate_size=64, num_key_value_heads=2, **common),
        "mistral": lambda: MistralConfig(intermediate_size=64, num_key_value_heads=2, **common),
        "qwen2": lambda: Qwen2Config(intermediate_size=64, num_key_value_heads=2, **common),
        "opt": lambda: OPTConfig(ffn_dim=64, word_embed_proj_dim=32, vocab_size=97, hidden_size=32,
                                 num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64),
    }[arch]()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "opt"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "gblm"])
def test_works_from_the_module_structure_of_several_architectures(arch, method):
    model = _tiny(arch)
    w = windows()
    g = per_sequence_gradient_stats(model, w, batch_size=4) if method == "gblm" else None
    prune_with(model, method=method, sparsity=0.5, windows=w, gradients=g, grad_nsamples=8, blocksize=16)
    rep = sparsity_report(model)
    assert len(rep) - 1 >= 2 * 6  # every linear of both blocks
    assert rep["total"]["sparsity"] == pytest.approx(0.5, abs=0.03)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=w).logits).all()


def test_offload_mode_gives_the_same_result(tiny_llama):
    import copy

    w = windows()
    a, b = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    prune_with(a, method="sparsegpt", sparsity=0.5, windows=w, blocksize=16)
    prune_with(b, method="sparsegpt", sparsity=0.5, windows=w, blocksize=16, offload=True)
    for la, lb in zip(block_linears(a).values(), block_linears(b).values()):
        assert torch.allclose(la.weight, lb.weight)


def test_pruned_outputs_feed_the_next_block(tiny_llama):
    """Block 1's statistics must come from pruned block 0: pruning block 0 alone changes them."""
    import copy

    from taylorlab.pruning.structure import capture_block_calls, find_decoder_layers, find_linears, run_block

    w = windows()
    dense = copy.deepcopy(tiny_llama)
    prune_with(tiny_llama, method="wanda", sparsity=0.5, windows=w)
    # recompute block-1 inputs of the pruned model vs the dense model: they differ
    _, layers_p = find_decoder_layers(tiny_llama)
    _, layers_d = find_decoder_layers(dense)
    hp_in, calls_p = capture_block_calls(tiny_llama, w, 8, torch.device("cpu"))
    hd_in, calls_d = capture_block_calls(dense, w, 8, torch.device("cpu"))
    with torch.no_grad():
        hp = run_block(layers_p[0], hp_in[0], calls_p[0][0])
        hd = run_block(layers_d[0], hd_in[0], calls_d[0][0])
    assert not torch.allclose(hp, hd)
    assert find_linears(layers_p[1])


@pytest.mark.parametrize("bad", ["3:2", "0:4", "2-4", "half"])
def test_bad_patterns_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError) as err:
        parse_pattern(bad)
    assert "\n" not in str(err.value)


def test_nm_mask_keeps_the_highest_scores():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.1, 0.2, 0.3, 0.4]])
    mask = mask_nm(scores, 2, 4)
    assert mask.tolist() == [[False, True, False, True, True, True, False, False]]


def test_gblm_score_formula():
    w = torch.tensor([[1.0, -2.0]])
    s = score_gblm(w, torch.tensor([3.0, 1.0]), torch.tensor([[0.5, 2.0]]), alpha=2.0)
    assert torch.allclose(s, torch.tensor([[1 * 3 + 2 * 1 * 0.5, 2 * 1 + 2 * 2 * 2.0]]))


def test_ties_are_broken_by_the_lower_index_first():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 0.5, 2.0]])
    assert mask_per_row(scores, 0.5).tolist() == [[True, True, True, False, False, False, True, False]]
    assert mask_nm(scores, 2, 4).tolist() == [[True, True, False, False, True, False, True, False]]
    from taylorlab.pruning.masks import mask_per_matrix

    assert mask_per_matrix(scores.reshape(2, 4), 0.25).tolist() == [[True, False, False, False],
                                                                     [False, False, True, False]]


def test_ria_score_formula_and_its_invariance_to_the_matrix_scale():
    """RIA: (|W|/row sum + |W|/column sum) x ||X||^a; relative importance is unchanged when the whole
    matrix is scaled, so the mask is too; a = 0 drops the activations."""
    from taylorlab.pruning.methods.ria import score as score_ria

    w = torch.tensor([[1.0, -3.0], [2.0, 2.0]])
    act = torch.tensor([4.0, 1.0])
    expected = torch.tensor([[1 / 4 + 1 / 3, 3 / 4 + 3 / 5], [2 / 4 + 2 / 3, 2 / 4 + 2 / 5]]) * act.sqrt()
    torch.testing.assert_close(score_ria(w, act, 0.5), expected)
    torch.testing.assert_close(score_ria(7 * w, act, 0.5), expected)
    torch.testing.assert_close(score_ria(w, act, 0.0), expected / act.sqrt())
    g = torch.Generator().manual_seed(0)
    big, a = torch.randn(16, 32, generator=g), torch.rand(32, generator=g)
    assert torch.equal(mask_per_row(score_ria(big, a, 0.5), 0.5), mask_per_row(score_ria(3 * big, a, 0.5), 0.5))
    # not Wanda: the relative importance re-weights columns whose weights are large everywhere
    assert not torch.equal(mask_per_row(score_ria(big, a, 0.5), 0.5), mask_per_row(score_wanda(big, a), 0.5))


def test_ria_per_matrix_prunes_the_lowest_scores_of_the_whole_matrix(tiny_llama):
    """per_row=false (the authors' code's default): one threshold per matrix on the RIA score, so the
    matrix is exactly at the target while its rows are not."""
    from taylorlab.pruning.driver import calibration_statistics
    from taylorlab.pruning.masks import mask_per_matrix
    from taylorlab.pruning.methods.ria import score as score_ria

    w = windows()
    first = copy.deepcopy(tiny_llama)
    prune_with(first, method="ria", sparsity=0.5, windows=w, per_row=False)
    # the first block's linears see the dense model's inputs: their masks follow from dense statistics
    stats = calibration_statistics(copy.deepcopy(tiny_llama), w)
    dense = block_linears(tiny_llama)
    rows_uneven = False
    for name, lin in block_linears(first).items():
        zeros = lin.weight == 0
        assert int(zeros.sum()) == int(lin.weight.numel() * 0.5), name
        rows_uneven |= bool((zeros.sum(1) != zeros.sum(1)[0]).any())
        if ".layers.0." in name:
            expected = mask_per_matrix(score_ria(dense[name].weight, stats[name].act_norm(), 0.5), 0.5)
            assert torch.equal(zeros, expected), name
    assert rows_uneven


def test_owl_spreads_the_sparsity_by_outlier_ratio_and_keeps_the_mean():
    from taylorlab.pruning.profiles import owl_sparsities

    s = owl_sparsities([0.01, 0.03, 0.02, 0.05], target=0.7, lmbda=0.08)
    assert sum(s) / len(s) == pytest.approx(0.7)
    assert max(s) - min(s) == pytest.approx(0.16)  # the spread is 2 lambda
    assert s[3] < s[1] < s[2] < s[0]  # more outliers, fewer weights removed
    assert owl_sparsities([0.02, 0.02], 0.5, 0.1) == [0.5, 0.5]


def test_prune_model_with_owl_gives_each_block_its_own_sparsity(tiny_llama):
    from taylorlab.pruning import Profile
    from taylorlab.pruning.structure import find_decoder_layers, find_linears

    from taylorlab.pruning import Calibration, prune_model

    w = windows()
    model = copy.deepcopy(tiny_llama)
    per_block = prune_with(tiny_llama, "wanda", sparsity=0.6, windows=w)
    assert set(per_block.values()) == {0.6}

    per_block = prune_model(model, "wanda", sparsity=0.6, calibration=Calibration(w), profile=Profile("owl", 5.0, 0.1))
    assert len(set(per_block.values())) == len(per_block) > 1 and sum(per_block.values()) / len(per_block) == pytest.approx(0.6)
    _, layers = find_decoder_layers(model)
    for i, block in enumerate(layers):
        for lin in find_linears(block).values():
            rows = (lin.weight == 0).float().mean(dim=1)
            assert torch.all(rows == int(lin.weight.shape[1] * per_block[i]) / lin.weight.shape[1])


@pytest.mark.parametrize("overrides, words", [
    (["prune.profile=owl", "prune.pattern=2:4"], "fixes it; use prune.pattern=unstructured with OWL"),
    (["prune.owl_lambda=0.1"], "apply to prune.profile=owl"),
    (["prune.profile=owl", "prune.sparsity=0.9", "prune.owl_lambda=0.2"], "must lie in"),
    (["prune.profile=layered"], "prune.profile='layered' is not one of uniform, owl"),
])
def test_owl_config_errors(overrides, words):
    from hydra import compose, initialize_config_dir

    from helpers import ROOT
    from taylorlab.config import register_configs
    from taylorlab.config.schema import validate

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="pipeline", overrides=overrides)
    with pytest.raises(ConfigError, match=words):
        validate(cfg)


def test_regional_gradients_equal_a_per_sequence_autograd_loop(tiny_llama):
    """Wanda++'s statistic from one batched block backward equals sum_n (d ||block(x_n)||_2 / dW)^2
    computed sequence by sequence with autograd, whatever the batch."""
    from taylorlab.pruning.gradients import regional_gradient_stats
    from taylorlab.pruning.structure import capture_block_calls, find_decoder_layers, find_linears, run_block

    w = windows(n=6)
    _, layers = find_decoder_layers(tiny_llama)
    block = layers[1]
    linears = find_linears(block)
    hidden, calls = capture_block_calls(tiny_llama, w, 6, torch.device("cpu"))
    outputs = []
    batched = regional_gradient_stats(block, linears, hidden, calls[1], outputs=outputs)
    with torch.no_grad():  # the outputs it hands back (Wanda++'s dense targets) are the block's own
        assert len(outputs) == len(hidden) and all(
            torch.equal(o, run_block(block, x, c)) and not o.requires_grad for o, x, c in zip(outputs, hidden, calls[1]))
    one_hidden, one_calls = capture_block_calls(tiny_llama, w, 1, torch.device("cpu"))
    expected = {n: torch.zeros_like(b) for n, b in batched.items()}
    for x, call in zip(one_hidden, one_calls[1]):
        with torch.enable_grad():
            out = run_block(block, x, call)
            grads = torch.autograd.grad(out.float().norm(), [lin.weight for lin in linears.values()])
        for n, g in zip(linears, grads):
            expected[n] += g.float() ** 2
    for n in batched:
        torch.testing.assert_close(batched[n], expected[n], rtol=1e-4, atol=1e-8)
    assert all(p.grad is None for p in block.parameters())


def test_wandapp_with_alpha_zero_is_wanda_and_its_regional_term_changes_the_masks(tiny_llama):
    w = windows()
    a, b, c = (copy.deepcopy(tiny_llama) for _ in range(3))
    prune_with(a, "wanda", windows=w)
    prune_with(b, "wanda++", windows=w, alpha=0.0)
    prune_with(c, "wanda++", windows=w, alpha=1e4)
    za = [p == 0 for p in a.parameters()]
    assert all(torch.equal(x, p == 0) for x, p in zip(za, b.parameters()))
    assert not all(torch.equal(x, p == 0) for x, p in zip(za, c.parameters()))


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("pattern, sparsity", [("2:4", None), ("unstructured", 0.7)])
def test_compact_form_reloads_bit_for_bit_and_is_smaller(arch, pattern, sparsity, tmp_path):
    """The compact file (kept values + a bitmask) gives back the pruned model's weights and logits
    exactly, and is the size the arithmetic says: dense weights x (1 - s + 1/32 for the mask) for the
    pruned matrices, the rest as it was."""
    from taylorlab.pruning.compact import load_compact, pack_bits, save_compact, unpack_bits

    bits = torch.rand(1001) > 0.5
    assert torch.equal(unpack_bits(pack_bits(bits), 1001), bits)
    model = _tiny(arch)
    w = windows()
    prune_with(model, method="wanda", windows=w, pattern=pattern, **({"sparsity": sparsity} if sparsity else {}))
    size = save_compact(model, tmp_path / "model.compact.safetensors")
    back = load_compact(tmp_path / "model.compact.safetensors")
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert not back.training
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=w).logits, back(input_ids=w).logits)
    pruned = sum(m.weight.numel() for m in block_linears(model).values())
    total = sum(p.numel() for p in model.parameters())  # tied weights once
    kept = sum(int((m.weight != 0).sum()) for m in block_linears(model).values())
    assert kept <= pruned * (0.5 if pattern == "2:4" else 1 - sparsity + 0.02)
    expected = 4 * (total - pruned) + 4 * kept + pruned / 8  # float32 values, one mask bit per weight
    header = 8 + int.from_bytes((tmp_path / "model.compact.safetensors").read_bytes()[:8], "little")
    assert size - header == pytest.approx(expected, rel=0.01)  # the header holds the config and the layout
    with pytest.raises(ValueError, match="not a"):
        from safetensors.torch import save_file
        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        load_compact(tmp_path / "other.safetensors")


def _sparsegpt_column_loop(W, Hinv, sparsity, nm, blocksize):
    """IST-DASLab's SparseGPT inner loops as published (one column at a time), given the upper Cholesky
    factor of H^-1: the reference the batched solve must reproduce."""
    W = W.clone()
    cols = W.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        if nm is None:
            tmp = W1 ** 2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            mask1 = tmp <= torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity) - 1]
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                tmp = W1[:, i:i + nm[1]] ** 2 / torch.diag(Hinv1)[i:i + nm[1]].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.sort(tmp, dim=1, stable=True).indices[:, :nm[1] - nm[0]], True)
            w, d = W1[:, i], Hinv1[i, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_batched_solve_reproduces_the_column_loop(pattern):
    torch.manual_seed(1)
    d_in, d_out = 96, 40
    x = torch.randn(1024, d_in, dtype=torch.float64) @ (torch.eye(d_in, dtype=torch.float64)
                                                       + 0.3 * torch.randn(d_in, d_in, dtype=torch.float64))
    lin = torch.nn.Linear(d_in, d_out, bias=False).double()
    W0 = lin.weight.detach().clone()
    H = 2 * x.T @ x / 16
    Hd = H + 0.01 * torch.mean(torch.diag(H)) * torch.eye(d_in, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hd)), upper=True)
    nm = parse_pattern(pattern)
    want = _sparsegpt_column_loop(W0, Hinv, 0.5, nm, blocksize=32)
    sparsegpt_prune_(lin, H, 0.5, nm, blocksize=32, row_chunk=16)  # chunks of rows: several solves per block
    got = lin.weight.detach()
    assert torch.equal(got == 0, want == 0)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_layers_that_read_one_input_share_its_statistics(tiny_llama):
    from taylorlab.pruning.stats import attach
    from taylorlab.pruning.structure import find_decoder_layers, find_linears

    block = find_decoder_layers(tiny_llama)[1][0]
    linears = find_linears(block)
    stats, handles = attach(linears, hessian=True)
    own = {name: InputStats(lin, hessian=True) for name, lin in linears.items()}
    solo = [lin.register_forward_hook(lambda m, i, o, s=own[name]: s.add(i[0])) for name, lin in linears.items()]
    try:
        for seed in range(3):
            tiny_llama(windows(n=2, seed=seed))
    finally:
        for h in handles + solo:
            h.remove()
    leaders = {name: s.leader.name if s.leader else None for name, s in stats.items()}
    assert leaders["self_attn.k_proj"] == leaders["self_attn.v_proj"] == "self_attn.q_proj"
    assert leaders["mlp.up_proj"] == "mlp.gate_proj"
    assert leaders["self_attn.o_proj"] is None and leaders["mlp.down_proj"] is None
    for name in linears:
        assert stats[name].nsamples == own[name].nsamples == 6
        torch.testing.assert_close(stats[name].sq_sum, own[name].sq_sum)
        torch.testing.assert_close(stats[name].hessian, own[name].hessian)


@pytest.mark.parametrize("pattern,precision", [("unstructured", "float32"), ("2:4", "float32"), ("2:4", "bfloat16")])
def test_wandapp_regional_optimisation_brings_the_first_block_closer_to_the_dense_one(tiny_llama, pattern, precision):
    """With regional optimisation the pruned first block reproduces the dense first block's outputs on
    the calibration sequences better than the score alone, and the pattern still holds exactly — also
    with the optimisation's products in bf16 (autocast; the model and its master weights stay fp32)."""
    from taylorlab.pruning.structure import capture_block_calls, find_decoder_layers, run_block

    w = windows(n=8, length=32)
    dense_block = copy.deepcopy(find_decoder_layers(tiny_llama)[1][0])
    hidden, calls = capture_block_calls(tiny_llama, w, 4, torch.device("cpu"))
    plain, refined = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    prune_with(plain, "wanda++", windows=w, pattern=pattern, batch_size=4)
    prune_with(refined, "wanda++", windows=w, pattern=pattern, batch_size=4, ro_iters=3, ro_samples=4, ro_lr=1e-4,
               ro_precision=precision)

    def error(model):
        block = find_decoder_layers(model)[1][0]
        with torch.no_grad():
            return sum(float((run_block(block, x, c) - run_block(dense_block, x, c)).pow(2).sum())
                       for x, c in zip(hidden, calls[0]))

    assert error(refined) < 0.9 * error(plain)
    nm = parse_pattern(pattern)
    for name, lin in block_linears(refined).items():
        zeros = lin.weight == 0
        if nm is None:
            assert torch.all(zeros.sum(1) == lin.in_features // 2), name
        else:
            assert torch.all(zeros.reshape(lin.out_features, -1, 4).sum(-1) == 2), name


def test_wandapp_regional_optimisation_options_are_checked():
    from taylorlab.pruning import registry

    with pytest.raises(ConfigError, match="ro_lr"):
        registry.get("wanda++").make_options({"ro_iters": 2, "ro_lr": 0.0})
    with pytest.raises(ConfigError, match="ro_iters"):
        registry.get("wanda++").make_options({"ro_iters": -1})
    with pytest.raises(ConfigError, match="ro_precision"):
        registry.get("wanda++").make_options({"ro_iters": 2, "ro_precision": "fp16"})


def test_rmsprop_falls_back_to_torchs_where_the_fused_kernel_cannot_run():
    """On the CPU (no CUDA, no Triton here) Wanda++'s optimiser is torch.optim.RMSprop itself, and
    insisting on the fused kernel says why it cannot run. The kernel is tested on the GPU
    (tests/gpu/test_gpu_pruning.py)."""
    from taylorlab.pruning.optim import rmsprop

    w = [torch.zeros(4, 4, requires_grad=True)]
    assert type(rmsprop(w, 1e-3)) is torch.optim.RMSprop
    assert type(rmsprop(w, 1e-3, fused=False)) is torch.optim.RMSprop
    with pytest.raises(RuntimeError, match="CUDA"):
        rmsprop(w, 1e-3, fused=True)
