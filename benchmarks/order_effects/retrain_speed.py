"""Batched retraining (K parameter copies trained together, torch.func.vmap over the gradient)
against one-at-a-time retraining, orders per second, for the project's tiny and small models
(conf/model/tiny.yaml, conf/model/small.yaml), trained from scratch in float32. Two one-at-a-time
baselines: the project's functional step (the same code as the batched path, K = 1) and a plain
training loop a user would write (nn.Module with SDPA attention, torch.optim.AdamW fused on a GPU,
clip_grad_norm_); the speedup is reported against the faster of the two. ``--compile`` compiles the
batched gradient and the plain loop's model alike.

    python benchmarks/order_effects/retrain_speed.py --tokens .bench/order_tokens.pt --out retrain_speed_h200.json

Needs only torch, transformers and pyyaml.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

from setup_order import HP, conf_llama, parser, record_json  # first: sets sys.path
from taylorlab.order import FlatModel, retrain
from taylorlab.order.queries import timed


def plain_loop(model, batches, orders, lrs, hp) -> torch.Tensor:
    """One order after another the way a training script does it; returns [K, d] final weights."""
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fused = next(model.parameters()).is_cuda
    out = []
    for o in orders:
        model.load_state_dict(init)
        opt = torch.optim.AdamW(model.parameters(), lr=lrs[0], betas=hp.betas, eps=hp.eps,
                                weight_decay=hp.weight_decay, fused=fused)
        for t, b in enumerate(o):
            for group in opt.param_groups:
                group["lr"] = lrs[t]
            loss = model(input_ids=batches[b], labels=batches[b], use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    model.load_state_dict(init)
    return torch.stack(out)


def one_model(name: str, tokens, a, device) -> dict:
    B, L, T, K = a.batch, a.seq_len, a.T, a.K
    flat = FlatModel(conf_llama(name, tokens["vocab"], L, device))
    plain = conf_llama(name, tokens["vocab"], L, device).train()  # same seed: the same initial weights
    if a.compile:
        plain.compile()  # nn.Module.compile: the loop below still sees the module's own parameters
    batches = tokens["train"].long()[: T * B * L].view(T, B, L).to(device)
    rng = random.Random(0)
    orders = [rng.sample(range(T), T) for _ in range(K)]
    lrs, hp = [a.lr] * T, HP
    theta0 = flat.flat().to(device)
    warm = {}  # warm-up: kernels, workspaces, and the compilation with --compile
    _, warm["batched"] = timed(lambda: retrain(flat, theta0, batches, [o[:2] for o in orders[: a.chunk or K]], lrs, hp,
                                               batched=True, compile=a.compile))
    retrain(flat, theta0, batches, [orders[0][:2]], lrs, hp, batched=False)
    _, warm["plain_loop"] = timed(lambda: plain_loop(plain, batches, [orders[0][:2]], lrs, hp))
    torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
    together, batched_s = timed(lambda: retrain(flat, theta0, batches, orders, lrs, hp, batched=True, chunk=a.chunk,
                                                       compile=a.compile))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    n_one = a.one_at_a_time
    alone, one_s = timed(lambda: retrain(flat, theta0, batches, orders[:n_one], lrs, hp, batched=False))
    plain_out, plain_s = timed(lambda: plain_loop(plain, batches, orders[:n_one], lrs, hp))

    def rel(x):
        return float((torch.linalg.vector_norm(x - alone, dim=1) / torch.linalg.vector_norm(alone - theta0, dim=1)).max())

    best_one = min(one_s, plain_s)
    return {"model": name, "parameters": flat.dim, "T": T, "K": K, "batch_tokens": B * L, "chunk": a.chunk or K,
            "batched_s": batched_s, "batched_orders_per_s": K / batched_s, "batched_peak_gib": peak,
            "one_at_a_time_orders": n_one, "one_at_a_time_s": one_s, "one_at_a_time_orders_per_s": n_one / one_s,
            "plain_loop_s": plain_s, "plain_loop_orders_per_s": n_one / plain_s,
            "speedup_vs_functional_one_at_a_time": (K / batched_s) / (n_one / one_s),
            "speedup_vs_plain_loop": (K / batched_s) / (n_one / plain_s),
            "speedup": (K / batched_s) / (n_one / best_one),
            "max_rel_difference_batched_vs_alone": rel(together[:n_one]),
            "max_rel_difference_plain_loop_vs_alone": rel(plain_out), "compiled": a.compile,
            "warmup_s_incl_compilation": warm}


def main():
    ap = parser(__doc__)
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--K", type=int, default=32, help="orders trained together")
    ap.add_argument("--chunk", type=int, default=None, help="copies trained together (default: all K)")
    ap.add_argument("--one-at-a-time", type=int, default=4, help="orders timed one after another")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the batched gradient and the plain loop's model (the functional one-at-a-time "
                         "loop stays eager); compilation happens in the warm-up and is reported apart")
    ap.add_argument("--tf32", action="store_true", help="TF32 matmuls for both the batched and the one-at-a-time runs")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    tokens = torch.load(a.tokens, weights_only=True)
    device = torch.device(a.device)
    res = {"config": vars(a), "models": []}
    for name in a.models.split(","):
        torch._dynamo.reset()  # a second model's compilation in one process failed in dynamo's guards (torch 2.11)
        r = one_model(name, tokens, a, device)
        print(r, flush=True)
        res["models"].append(r)
        record_json(Path(a.out), res, command="python benchmarks/order_effects/retrain_speed.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
