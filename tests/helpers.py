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


def prune_one_linear_at_a_time(model, method, w, batch_size, gradients=None, **options):
    """The definition, spelled out slowly: for each linear in the order a call runs them, a full pass
    of every calibration call through the block as it now stands gathers that linear's statistics,
    then the linear is pruned; the pruned block's outputs feed the next block."""
    import torch

    from taylorlab.pruning import Calibration, LayerTask, registry
    from taylorlab.pruning.stats import InputStats
    from taylorlab.pruning.structure import capture_block_calls, find_decoder_layers, find_linears, run_block

    with torch.no_grad():  # as prune_model
        m = registry.get(method)
        opts = m.make_options(options)
        cal = Calibration(w, gradients, w.shape[0] if gradients is not None else None)
        prefix, layers = find_decoder_layers(model)
        hidden, calls = capture_block_calls(model, w, batch_size, torch.device("cpu"))
        for i, block in enumerate(layers):
            lins = find_linears(block)
            ran = []
            hs = [lin.register_forward_pre_hook(lambda mod, inp, n=n: ran.append(n)) for n, lin in lins.items()]
            run_block(block, hidden[0], calls[i][0])
            for h in hs:
                h.remove()
            for name in ran:
                st = InputStats(lins[name], m.needs_hessian, name)
                for x, call in zip(hidden, calls[i]):
                    h = lins[name].register_forward_pre_hook(lambda mod, inp, st=st, b=x.shape[0]: st.add(inp[0], b))
                    run_block(block, x, call)
                    h.remove()
                m.prune_layer(LayerTask(f"{prefix}.{i}.{name}", lins[name], st, cal, 0.5, None, opts))
            hidden = [run_block(block, x, call) for x, call in zip(hidden, calls[i])]
