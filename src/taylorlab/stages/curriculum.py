"""curriculum: design a training order — candidate curricula (named heuristics, random orders, the
best orders of a genetic search whose fitness is the estimator and the orders proposed by the
``proposers``) ranked by an estimator, the best few and the
reference retrained for real; the recommended order is the best verified one (``order.json``)."""

from __future__ import annotations

from omegaconf import OmegaConf

from taylorlab.io import atomic_write_json
from taylorlab.models import resolve_device
from taylorlab.order import Record
from taylorlab.order.curriculum import candidate_orders, design_curriculum
from taylorlab.stages.common import check_linearisation, record_paths


def run(ctx):
    c = ctx.cfg
    device = resolve_device(c.device)
    rec = Record.load(record_paths(ctx), device)
    cands = candidate_orders(rec, c.num_random, c.seed, tuple(c.heuristics))
    genetic = ({"generations": c.genetic_generations, "population": c.genetic_population, "keep": c.genetic_keep,
                "seed": c.seed} if c.genetic_generations else None)
    res = design_curriculum(rec, cands, estimator=c.estimator, options=OmegaConf.to_container(c.options, resolve=True),
                            verify_top=c.verify_top, proposers=list(c.proposers), retrain_batched=device.type == "cuda",
                            genetic=genetic, genetic_fitness=c.genetic_fitness, screen=c.screen,
                            screen_keep=c.screen_keep, screen_seed=c.seed + 1)
    check_linearisation(ctx, c.estimator, res["linearisation"])
    atomic_write_json(ctx.dir / "curriculum.json", res)
    atomic_write_json(ctx.dir / "order.json", {"order": res["best_order"], "name": res["best"],
                                               "true_validation_loss": res["best_true_loss"]})
    ctx.tracker.summary({"curriculum/best_true_loss": res["best_true_loss"],
                         "curriculum/reference_true_loss": res["reference_true_loss"],
                         "curriculum/gain_vs_reference": res["gain_vs_reference"]})
    ctx.tracker.table("curriculum/candidates", ["name", "estimated_loss", "rank_by_estimate", "true_loss"],
                      [[r["name"], r["estimated_loss"], r["rank_by_estimate"], r["true_loss"]] for r in res["candidates"]])
    ctx.log.info("curriculum: %d candidates ranked by %s (%d random orders screened); best verified %s, loss %.4f "
                 "(reference %.4f)", len(res["candidates"]), c.estimator, res["screened"], res["best"],
                 res["best_true_loss"], res["reference_true_loss"])
    return {"curriculum": "curriculum.json", "order": "order.json"}
