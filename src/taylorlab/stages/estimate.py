"""estimate: the final validation loss of K held-out random orders plus heuristic curricula, by
each configured estimator and by real retraining (the ground truth), and the fidelity table
(``taylorlab.order.study``). With ``sensitivity`` the random orders are retrained from nudged
initial weights too: how well the truth ranks against itself bounds what any estimator can reach.
An order an estimator proposes is retrained for real and set against the random orders."""

from __future__ import annotations

import json

import torch
from omegaconf import OmegaConf

from taylorlab.io import atomic_save_tensors, atomic_write_json
from taylorlab.models import resolve_device
from taylorlab.order import Record
from taylorlab.order.study import local_retrain, run_study, study_queries
from taylorlab.stages.common import check_linearisation, record_paths


def retrain_job(paths: dict, orders, batched: bool, device: str, chunk=None, compile: bool = False) -> torch.Tensor:
    """One fanned-out retraining sub-job: loads the record itself, returns [k, d] on the CPU."""
    rec = Record.load(paths, resolve_device(device))
    return local_retrain(rec, batched, chunk, compile)(orders).cpu()


def estimate_job(paths: dict, name: str, options, orders, device: str):
    """One fanned-out sub-job of a per-order estimator: loads the record itself, answers its orders
    (parameters back on the CPU)."""
    from taylorlab.order import registry

    out = registry.estimate(name, Record.load(paths, resolve_device(device)), orders, options)
    if out.params is not None:
        out.params = out.params.cpu()
    return out


def _split(orders, n):
    return [orders[i * len(orders) // n:(i + 1) * len(orders) // n] for i in range(n)]


def run(ctx):
    c = ctx.cfg
    device = resolve_device(c.device)
    paths = record_paths(ctx)
    rec = Record.load(paths, device)
    queries = study_queries(rec, c.num_orders, c.seed, list(c.heuristics), [list(o) for o in c.orders])
    batched = device.type == "cuda" if c.retrain_batched is None else bool(c.retrain_batched)
    if c.retrain_compile and not batched:
        ctx.log.warning("estimate.retrain_compile compiles batched retraining only (a GPU, or "
                        "estimate.retrain_batched=true); retraining one order at a time here, not compiled.")
    def fanned_out(orders):
        n = min(c.retrain_jobs, len(orders))
        parts = _split(orders, n)
        ctx.log.info("retraining %d orders in %d sub-jobs", len(orders), n)
        out = ctx.fan_out("retrain_jobs", retrain_job, [paths] * n, parts, [batched] * n, [str(device)] * n,
                          [c.retrain_chunk] * n, [c.retrain_compile] * n)
        return torch.cat(out)

    def fanned_estimate(name, opts, orders):
        from taylorlab.order import registry

        n = min(c.estimate_jobs, len(orders))
        ctx.log.info("%s: %d orders in %d sub-jobs", name, len(orders), n)
        out = ctx.fan_out("estimate_jobs", estimate_job, [paths] * n, [name] * n, [opts] * n, _split(orders, n),
                          [str(device)] * n)
        return registry.merge(out)

    jobs = max(c.retrain_jobs, c.estimate_jobs)
    options = OmegaConf.to_container(c.options, resolve=True)
    res = run_study(rec, queries, {name: options.get(name) for name in c.estimators},
                    retrain_fn=fanned_out if c.retrain_jobs > 1 else None,
                    batched=batched, chunk=c.retrain_chunk, compile=c.retrain_compile, sensitivity=list(c.sensitivity),
                    jobs=c.retrain_jobs, on_estimate=lambda est: check_linearisation(ctx, est.name, est.linearisation),
                    estimate_fn=fanned_estimate if c.estimate_jobs > 1 else None,
                    gpus=_gpus_used(ctx, device, jobs))
    params, names = res.pop("params"), res.pop("names")
    for row in res["fidelity"]:
        ctx.tracker.summary({f"orders/{row['estimator']}/{k}": v for k, v in row.items()
                             if k != "estimator" and v is not None})
    for s in res["sensitivity"]:
        eps = s["relative_perturbation"]
        ctx.tracker.summary({f"orders/sensitivity/{eps:g}/{k}": v for k, v in s.items()
                             if k != "relative_perturbation" and v is not None})
        rho = s["spearman_true_vs_perturbed"]
        if rho == rho and rho < 0.9:
            ctx.log.warning("the truth itself re-ranks the orders under a %g nudge of the initial weights (Spearman "
                            "%.2f): no estimator built from one run can rank them at these settings; retrain.", eps, rho)
    for name, p in res["proposals"].items():
        ctx.tracker.summary({f"orders/{name}/proposal/{k}": v for k, v in p.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
        ctx.log.info("%s proposed an order: retrained, validation loss %.4f (random median %.4f, best %.4f)", name,
                     p["true_loss"], p["random_true_loss_median"], p["random_true_loss_min"])
    table = res["fidelity"]
    ctx.tracker.table("orders/fidelity", list(table[0].keys()), [list(r.values()) for r in table])
    atomic_write_json(ctx.dir / "estimates.json", res)
    files = {"estimates.json": ctx.dir / "estimates.json"}
    if c.save_params:
        files["params.safetensors"] = _save_params(ctx.dir / "params.safetensors", rec, names, params)
    ctx.tracker.artifact(ctx.dir.name, "order-estimates", files,
                         uses=[p.name for p in ctx.parents.values()], metadata=res["speed"])
    ctx.log.info("fidelity over %d random orders: %s", res["speed"]["K"],
                 "; ".join(f"{r['estimator']} spearman {r['spearman']:.3f}" for r in table))
    return {"estimates": "estimates.json", **({"params": "params.safetensors"} if c.save_params else {})}


def _gpus_used(ctx, device, jobs: int) -> int:
    """The GPUs this stage's work ran on: its own, or one per sub-job up to the host's (local) or
    the sub-jobs' own allocations (Slurm)."""
    if device.type != "cuda":
        return 0
    if jobs <= 1 or (ctx.launcher or {}).get("name") == "inline":
        return 1
    if (ctx.launcher or {}).get("name") == "slurm":
        return jobs * max(1, int(ctx.resources.get("gpus", 1)))
    return min(jobs * max(1, int(ctx.resources.get("gpus", 1))), torch.cuda.device_count())


def _save_params(path, rec: Record, names, params):
    """Every query's final weights as flat [K, d] tensors — ``true`` (retrained) and one per estimator
    that produces parameters — with the query names and the flat layout in the metadata, written
    atomically. ``FlatModel(model).load(tensor[k])`` puts order k's weights into a model."""
    meta = {"queries": json.dumps(names),
            "layout": json.dumps([[n, list(s)] for n, s in zip(rec.flat.names, rec.flat.shapes)])}
    atomic_save_tensors(path, params, metadata=meta)
    return path
