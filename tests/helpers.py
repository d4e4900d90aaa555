"""Helpers shared by the test modules (import them from here, not from conftest)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "pipelines" / "run.py"



def run_cli(args, out_dir, env=None, check=False, timeout=900):
    """Run the real entry point in a subprocess, as a user would."""
    e = {**os.environ, "CI": "1", **(env or {})}
    flags = [a for a in args if a.startswith("-")]
    cmd = [sys.executable, str(ENTRY), *flags, f"out_dir={out_dir}", *[a for a in args if not a.startswith("-")]]
    proc = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def random_orders(k, T, seed=1):
    """k seeded random permutations of range(T) (order-effect queries)."""
    from taylorlab.order.queries import random_orders as orders

    return orders(T, k, seed)


def prune_with(model, method, *, windows=None, gradients=None, grad_nsamples=None, grad_norm="l2", sparsity=0.5,
               pattern="unstructured", batch_size=8, device=None, offload=False, progress=False, walk="block",
               **options):
    """``prune_model`` with the calibration spelled out as keywords. Tests parametrized over every
    method share one call, so ``options`` keeps only the keys the method has (``prune_model`` itself
    refuses keys that do not apply)."""
    import dataclasses

    import torch

    from taylorlab.pruning import Calibration, prune_model, registry

    own = {f.name for f in dataclasses.fields(registry.get(method).options)}
    return prune_model(model, method, sparsity=sparsity, pattern=pattern,
                       options={k: v for k, v in options.items() if k in own},
                       calibration=Calibration(windows, gradients, grad_nsamples, grad_norm), batch_size=batch_size,
                       device=device or torch.device("cpu"), offload=offload, progress=progress, walk=walk)
