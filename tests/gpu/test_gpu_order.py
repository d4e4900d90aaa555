"""Order estimators on a GPU (vmapped paths) against the CPU's one-at-a-time paths: skipped without
CUDA (CI has none); run on the lent H200."""

import pytest
import torch
from helpers import random_orders

from taylorlab.order import AdamHP, FlatModel, Record, estimate, record, retrain

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
    return random_orders(k, T)


def _close_runs(a, b, theta0=None):
    """[K, d] parameters of two devices agree to 1e-4 of the distance training moved them."""
    if theta0 is None:
        _, _, _, traj = _setup(torch.device("cpu"))
        theta0 = traj.theta0
    rel = torch.linalg.vector_norm(a - b, dim=1) / torch.linalg.vector_norm(b - theta0.cpu(), dim=1)
    assert float(rel.max()) < 1e-4, rel


@pytest.mark.parametrize("name, opts", [("fut-carry", {"curvature": "hvp"}), ("fut-carry", {"curvature": "hvp2"}),
                                        ("fut-carry", {"curvature": "secant"}), ("fut-ckpt", {"every": 3}),
                                        ("fut", {}), ("additive", {})])
def test_estimators_on_gpu_match_cpu(name, opts):
    orders = _orders(5)
    res = {}
    for dev in ("cpu", "cuda"):
        flat, batches, val, traj = _setup(torch.device(dev))
        out = estimate(name, Record(flat, traj, batches, val), orders, opts)
        res[dev] = out.params.cpu() if out.params is not None else torch.tensor(out.loss)
        if name == "fut":  # its secant diagonal divides by parameter changes: rounding is amplified; compare losses
            res[dev] = torch.tensor([flat.eval_loss(p, val) for p in out.params])
    if name == "additive":  # losses
        torch.testing.assert_close(res["cuda"], res["cpu"], rtol=1e-6, atol=0)
    elif name == "fut":  # the paper's secant divides by parameter changes as small as 1e-12: measured 0.5% on the H200
        torch.testing.assert_close(res["cuda"], res["cpu"], rtol=1e-2, atol=0)
    else:  # Adam divides by sqrt(v): rounding in near-zero gradients moves single coordinates; compare norms
        _close_runs(res["cuda"], res["cpu"])


def test_batched_retraining_on_gpu_matches_one_at_a_time_on_cpu():
    orders = _orders(6)
    flat, batches, _, traj = _setup(torch.device("cuda"))
    gpu = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=True, chunk=4).cpu()
    flat, batches, _, traj = _setup(torch.device("cpu"))
    cpu = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=False)
    _close_runs(gpu, cpu, traj.theta0)


def test_batched_retraining_from_the_shared_prefix_on_gpu_matches_cpu():
    from taylorlab.order.memorization import moved_order

    orders = [moved_order(T, 6, 3), moved_order(T, 1, 6), list(range(T)), moved_order(T, 4, 2)] + _orders(2)
    flat, batches, _, traj = _setup(torch.device("cuda"))
    gpu = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=True, reference=traj).cpu()
    flat, batches, _, traj = _setup(torch.device("cpu"))
    cpu = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=False)
    _close_runs(gpu, cpu, traj.theta0)


def test_compiled_batched_retraining_on_gpu_matches_one_at_a_time_on_cpu():
    orders = _orders(4)
    flat, batches, _, traj = _setup(torch.device("cuda"))
    gpu = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=True, compile=True).cpu()
    assert flat._compiled_vgrad is not None  # the compiled path was the one taken
    flat, batches, _, traj = _setup(torch.device("cpu"))
    cpu = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=False)
    _close_runs(gpu, cpu, traj.theta0)


def test_planned_chunks_fit_the_free_memory_and_do_not_change_the_answer():
    """Chunks planned from a probe of one copy: positive per-copy cost, never above the bound, and
    the same answer whatever the chunk (planned, bounded to 1, all at once)."""
    from taylorlab.order.memory import plan_chunk
    from taylorlab.order.trajectory import plan_retrain_chunk

    flat, batches, val, traj = _setup(torch.device("cuda"))
    plan = plan_retrain_chunk(flat, traj.theta0, batches, 64)
    assert plan.per_copy_bytes > 4 * traj.theta0.numel() * 8 and 1 <= plan.chunk <= 64
    assert plan_retrain_chunk(flat, traj.theta0, batches, 64, bound=3).chunk == 3
    orders = _orders(6)
    a = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=True)
    b = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=True, chunk=1)
    _close_runs(a.cpu(), b.cpu(), traj.theta0.cpu())
    rec = Record(flat, traj, batches, val)
    planned = estimate("fut-carry", rec, orders)
    assert planned.extra["memory_plan"]["chunk"] >= 1
    one = estimate("fut-carry", rec, orders, {"chunk": 1})
    _close_runs(planned.params.cpu(), one.params.cpu(), traj.theta0.cpu())
    for name in ("fut-carry", "fut-ckpt"):  # the gradient-table passes planned too (secant)
        opts = {"curvature": "secant"} if name == "fut-carry" else {"every": 3}
        planned = estimate(name, rec, orders, opts)
        one = estimate(name, rec, orders, {**opts, "chunk": 1})
        _close_runs(planned.params.cpu(), one.params.cpu(), traj.theta0.cpu())
    with pytest.raises(Exception, match="free"):  # more than the GPU holds: one line, not an OOM traceback
        plan_chunk("x", 4, torch.device("cuda"), lambda: None, state_bytes=2**50)


def test_micro_batched_gpu_paths_match_the_whole_batch_on_cpu():
    """record.micro_batch on the GPU's vmapped paths (retraining, fut-carry's HVP passes, the secant
    tables): the same runs as whole batches on the CPU, uneven splits (2 sequences in passes of 1)."""
    orders = _orders(4)
    cpu_flat, cpu_batches, cpu_val, cpu_traj = _setup(torch.device("cpu"))
    flat, batches, val, _ = _setup(torch.device("cuda"))
    micro = FlatModel(flat.model, micro_batch=1)
    traj = record(micro, batches, list(range(T)), [1e-3] * T, AdamHP())
    _close_runs(traj.final.cpu().unsqueeze(0), cpu_traj.final.unsqueeze(0), cpu_traj.theta0)
    gpu = retrain(micro, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=True).cpu()
    cpu = retrain(cpu_flat, cpu_traj.theta0, cpu_batches, orders, cpu_traj.lrs, cpu_traj.hp, batched=False)
    _close_runs(gpu, cpu, cpu_traj.theta0)
    for opts in ({"curvature": "hvp"}, {"curvature": "secant"}):
        a = estimate("fut-carry", Record(micro, traj, batches, val), orders, opts).params.cpu()
        b = estimate("fut-carry", Record(cpu_flat, cpu_traj, cpu_batches, cpu_val), orders, opts).params
        _close_runs(a, b, cpu_traj.theta0)
