"""prune.walk=sequential: one pass per block, each linear pruned once every calibration call has
handed it its input. Checked against the slow definition (one statistics pass of the block as it
stands per linear), against the block walk where the two must agree, and for its failures."""

import copy

import pytest
import torch

from helpers import prune_one_linear_at_a_time, prune_with
from test_pruning import _tiny, windows

from taylorlab.errors import ConfigError
from taylorlab.pruning import per_sequence_gradient_stats, walk_sequential
from taylorlab.pruning.structure import block_linears, find_decoder_layers, find_linears


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "gblm"])
def test_sequential_walk_equals_pruning_one_linear_at_a_time(arch, method):
    model = _tiny(arch).eval()  # OPT's dropout would draw differently in the two walks
    w = windows(n=10)  # batches of 4, 4 and 2: a short last call
    g = per_sequence_gradient_stats(model, w, batch_size=5) if method == "gblm" else None
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    prune_with(a, method, windows=w, gradients=g, grad_nsamples=10, batch_size=4, blocksize=16, walk="sequential")
    prune_one_linear_at_a_time(b, method, w, 4, gradients=g, **({"blocksize": 16} if method == "sparsegpt" else {}))
    for (name, la), lb in zip(block_linears(a).items(), block_linears(b).values()):
        assert torch.equal(la.weight == 0, lb.weight == 0), name
        assert torch.allclose(la.weight, lb.weight, rtol=1e-6, atol=1e-7), name


def test_sequential_walk_agrees_with_the_block_walk_up_to_the_first_pruned_input(tiny_llama):
    """Block 0's q/k/v read the block's input, the same in both walks: same masks. o_proj reads the
    attention of the pruned q/k/v in the sequential walk, of the dense ones in the block walk."""
    w = windows()
    a, b = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    prune_with(a, "wanda", windows=w, walk="sequential")
    prune_with(b, "wanda", windows=w, walk="block")
    la, lb = find_linears(find_decoder_layers(a)[1][0]), find_linears(find_decoder_layers(b)[1][0])
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        assert torch.equal(la[name].weight, lb[name].weight), name
    assert not torch.equal(la["self_attn.o_proj"].weight == 0, lb["self_attn.o_proj"].weight == 0)
    assert not torch.equal(la["mlp.down_proj"].weight == 0, lb["mlp.down_proj"].weight == 0)


def test_a_failure_inside_one_call_ends_the_walk_with_that_error(tiny_llama):
    w = windows(n=12)
    seen = []

    def prune(i, name, lin, stats):
        seen.append(name)
        if len(seen) == 4:
            raise ValueError("the fourth linear")

    with pytest.raises(ValueError, match="the fourth linear"):
        for _ in walk_sequential(tiny_llama, w, prune, batch_size=4):
            pass
    assert len(seen) == 4


def test_methods_that_need_the_whole_block_refuse_the_sequential_walk(tiny_llama):
    with pytest.raises(ConfigError, match="prune.walk=sequential .* prune.method=wanda\\+\\+"):
        prune_with(tiny_llama, "wanda++", windows=windows(), walk="sequential")
    with pytest.raises(ConfigError, match="prune.walk='zigzag' is not one of block, sequential"):
        prune_with(tiny_llama, "wanda", windows=windows(), walk="zigzag")


def test_the_config_check_names_a_bad_walk():
    from hydra import compose, initialize_config_dir

    from helpers import ROOT
    from taylorlab.config import register_configs
    from taylorlab.config.schema import validate

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="pipeline", overrides=["prune=wanda++", "prune.walk=sequential"])
    with pytest.raises(ConfigError, match="use prune.walk=block"):
        validate(cfg)
