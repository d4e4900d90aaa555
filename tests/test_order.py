"""Order-effect estimators on a tiny transformer against real retraining (properties, no magic
numbers beyond the method notes' own claims)."""

import math
import random

import pytest
import torch

from taylorlab.errors import TaylorlabError
from taylorlab.order import AdamHP, FlatModel, estimate, record, retrain, validate_orders

T = 8


def setup(lr, seed=0):
    from taylorlab.models import build_llama

    torch.manual_seed(seed)
    model = build_llama(64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=2, max_position_embeddings=32, seed=seed).double()
    flat = FlatModel(model)
    g = torch.Generator().manual_seed(seed)
    # two "domains": batches of low token ids and batches of high ones, so order matters
    batches = torch.stack([torch.randint(0, 32, (2, 12), generator=g) + (32 if b % 2 else 0) for b in range(T)])
    val = torch.randint(0, 32, (4, 2, 12), generator=g)
    lrs = [lr] * T
    hp = AdamHP()
    traj = record(flat, batches, list(range(T)), lrs, hp)
    return flat, batches, val, lrs, hp, traj


def random_orders(k, seed=1):
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        o = list(range(T))
        rng.shuffle(o)
        out.append(o)
    return out


@pytest.mark.parametrize("name", ["none", "fut", "fut-carry"])
def test_every_estimator_returns_the_reference_run_for_the_reference_order(name):
    flat, batches, _, _, _, traj = setup(3e-3)
    out = estimate(name, flat, traj, batches, [list(range(T))])
    assert torch.equal(out["params"][0], traj.thetas[-1])


def test_batched_retraining_matches_one_at_a_time():
    flat, batches, _, lrs, hp, traj = setup(3e-3)
    orders = random_orders(3)
    a = retrain(flat, traj.thetas[0], batches, orders, lrs, hp, batched=True)
    b = retrain(flat, traj.thetas[0], batches, orders, lrs, hp, batched=False)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    ref = retrain(flat, traj.thetas[0], batches, [list(range(T))], lrs, hp, batched=False)
    assert torch.equal(ref[0], traj.thetas[-1])  # the recorded run is a real run


def errors(lr, k=8):
    flat, batches, val, lrs, hp, traj = setup(lr)
    orders = random_orders(k)
    true = retrain(flat, traj.thetas[0], batches, orders, lrs, hp)
    out = {}
    for name in ("none", "fut-carry"):
        est = estimate(name, flat, traj, batches, orders)["params"]
        disp = torch.linalg.vector_norm(true - traj.thetas[0], dim=1)
        out[name] = float((torch.linalg.vector_norm(est - true, dim=1) / disp).mean())
        out[name + "_loss"] = [flat.eval_loss(p, val) for p in est]
    out["true_loss"] = [flat.eval_loss(p, val) for p in true]
    return out


def test_fut_carry_tracks_retraining_at_a_small_learning_rate():
    from scipy.stats import spearmanr

    e = errors(1e-3)
    assert e["fut-carry"] < 0.5 * e["none"]
    assert spearmanr(e["fut-carry_loss"], e["true_loss"]).statistic > 0.8


def test_fut_carry_error_shrinks_faster_than_no_change_as_lr_goes_to_zero():
    big, small = errors(1e-2), errors(1e-3)
    assert small["fut-carry"] < big["fut-carry"]
    assert small["fut-carry"] / small["none"] < big["fut-carry"] / big["none"]


@pytest.mark.parametrize("bad, words", [([0, 1, 2], "entries"), ([0, 1, 2, 3, 4, 5, 6, 9], "out of range"),
                                        ([0, 0, 2, 3, 4, 5, 6, 7], "not a permutation")])
def test_bad_queries_are_one_line_errors(bad, words):
    with pytest.raises(TaylorlabError) as err:
        validate_orders([bad], T)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_fidelity_table_survives_a_diverged_estimate():
    from taylorlab.order import fidelity_table

    theta0 = torch.zeros(3)
    true = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    rows = fidelity_table([1.0, 2.0, 3.0], {"good": [1.1, 2.1, 2.9], "diverged": [1.0, 900.0, 5000.0]}, true,
                          {"good": true * 1.1, "diverged": true * 1e6}, theta0, {"good": 1.0, "diverged": 1.0}, 1.0)
    good, diverged = rows
    assert good["spearman"] == pytest.approx(1.0) and good["mae_ppl"] < 2
    assert diverged["mae_ppl"] == float("inf") and diverged["rel_param_error"] > 1e5
