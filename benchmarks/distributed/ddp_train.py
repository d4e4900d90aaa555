"""Data-parallel training on several GPUs of one host: the train loop of taylorlab (DDP, NCCL, the
process group initialised from torchrun's environment) against one GPU on the same global batches.

    python benchmarks/distributed/ddp_train.py --gpus 2            # driver: runs both, records JSON
    (it calls: torchrun --nproc_per_node N benchmarks/distributed/ddp_train.py --worker ...)

Records per world size: wall time per step (after warm-up), tokens per second, peak memory per GPU,
and the largest difference between the final weights of 1 and N GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
sys.path.insert(0, str(HERE.parent))


def worker(a) -> None:
    import torch

    from taylorlab.models import build_llama
    from taylorlab.training import TrainSettings, distributed, train

    info = distributed.detect()
    distributed.init(info, a.device)
    device = distributed.device_for(info, torch.device(a.device))
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = build_llama(a.vocab, hidden_size=a.hidden, intermediate_size=a.hidden * 8 // 3 // 64 * 64,
                        num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                        num_key_value_heads=a.hidden // 64, max_position_embeddings=a.seq_len, seed=0)
    g = torch.Generator().manual_seed(1)
    batches = torch.randint(0, a.vocab, (a.steps, a.batch, a.seq_len), generator=g)
    order = list(range(a.steps))
    settings = TrainSettings(lr=3e-4, warmup_steps=5, checkpoint_every=10**9, grad_clip=1.0)
    # warm-up run (kernels, NCCL communicators), then the timed run from the same initial weights
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, batches[:3], [0, 1, 2], settings, device=device, dist=info)
    model.load_state_dict(init_state)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if info.enabled:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    result = train(model, batches, order, settings, device=device, dist=info)
    sync()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    peaks = [peak]
    if info.enabled:
        t = torch.tensor([peak], device=device)
        out = [torch.zeros_like(t) for _ in range(info.world_size)]
        torch.distributed.all_gather(out, t)
        peaks = [float(x) for x in out]
    if info.is_main:
        torch.save({k: v.float().cpu() for k, v in model.state_dict().items()}, a.weights)
        Path(a.result).write_text(json.dumps({
            "world_size": info.world_size, "steps": a.steps, "wall_s": wall, "s_per_step": wall / a.steps,
            "tokens_per_s": a.steps * a.batch * a.seq_len / wall, "peak_gib_per_gpu": peaks,
            "final_loss": result["final_loss"], "parameters": sum(p.numel() for p in model.parameters()),
        }))
    distributed.shutdown(info)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16, help="global batch (sequences per step)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="cuda", help="cuda (NCCL) or cpu (gloo, for a dry run)")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--weights", default="")
    p.add_argument("--result", default="")
    p.add_argument("--out", default=str(HERE / "ddp_train_h200x2.json"))
    a = p.parse_args()
    if a.worker:
        return worker(a)
    import torch

    from common import record

    runs = {}
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    shared = ["--hidden", str(a.hidden), "--layers", str(a.layers), "--vocab", str(a.vocab), "--seq-len",
              str(a.seq_len), "--batch", str(a.batch), "--steps", str(a.steps), "--device", a.device]
    for n in sorted({1, a.gpus}):
        w, r = tmp / f"ddp_w{n}.pt", tmp / f"ddp_r{n}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               str(Path(__file__).resolve()), "--worker", "--weights", str(w), "--result", str(r), *shared]
        subprocess.run(cmd, check=True)
        runs[n] = {**json.loads(r.read_text()), "weights": w}
    a1, an = torch.load(runs[1].pop("weights"), weights_only=True), torch.load(runs[a.gpus].pop("weights"), weights_only=True)
    max_abs = max(float((a1[k] - an[k]).abs().max()) for k in a1)
    max_rel = max(float((a1[k] - an[k]).norm() / a1[k].norm().clamp_min(1e-12)) for k in a1)
    results = {
        "config": vars(a) | {"dtype": "float32 weights, AdamW"},
        "runs": {str(k): v for k, v in runs.items()},
        "speedup": runs[1]["wall_s"] / runs[a.gpus]["wall_s"],
        "weights_max_abs_diff": max_abs, "weights_max_rel_diff": max_rel,
    }
    print(json.dumps(results, indent=2))
    record(Path(a.out), results, command="python benchmarks/distributed/ddp_train.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
