"""Order estimators on a GPU (vmapped paths) against the CPU's one-at-a-time paths: skipped without
CUDA (CI has none); run on the lent H200."""

import random

import pytest
import torch

from taylorlab.order import AdamHP, FlatModel, estimate, record, retrain

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

T = 8


def _setup(device):
    from taylorlab.models import build_llama

    model = build_llama(64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=2, max_position_embeddings=32, seed=0).double().to(device)
    flat = FlatModel(model)
    g = torch.Generator().manual_seed(0)
    batches = torch.stack([torch.randint(0, 32, (2, 12), generator=g) + (32 if b % 2 else 0) for b in range(T)]).to(device)
    val = torch.randint(0, 64, (3, 2, 12), generator=g).to(device)
    traj = record(flat, batches, list(range(T)), [1e-3] * T, AdamHP())
    return flat, batches, val, traj


def _orders(k):
    rng = random.Random(1)
    out = []
    for _ in range(k):
        o = list(range(T))
        rng.shuffle(o)
        out.append(o)
    return out


@pytest.mark.parametrize("name, opts", [("fut-carry", {"curvature": "hvp"}), ("fut-carry", {"curvature": "secant"}),
                                        ("fut", {}), ("additive", {})])
def test_estimators_on_gpu_match_cpu(name, opts):
    orders = _orders(5)
    res = {}
    for dev in ("cpu", "cuda"):
        flat, batches, val, traj = _setup(torch.device(dev))
        ref = flat.eval_loss(traj.final, val)
        out = estimate(name, flat, traj, batches, orders, val=val, reference_loss=ref, **opts)
        res[dev] = out["params"].cpu() if out["params"] is not None else torch.tensor(out["loss"])
    torch.testing.assert_close(res["cuda"], res["cpu"], rtol=1e-7, atol=1e-9)


def test_batched_retraining_on_gpu_matches_one_at_a_time_on_cpu():
    orders = _orders(6)
    flat, batches, _, traj = _setup(torch.device("cuda"))
    gpu = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=True, chunk=4).cpu()
    flat, batches, _, traj = _setup(torch.device("cpu"))
    cpu = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=False)
    torch.testing.assert_close(gpu, cpu, rtol=1e-7, atol=1e-9)
