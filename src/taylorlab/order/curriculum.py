"""Curriculum design: candidate orders scored by an estimator, the best few retrained for real.

Candidates are the named curricula (reverse, easy-to-hard, hard-to-easy by each batch's loss at the
end of the reference run), ``num_random`` random orders, the order each of the ``proposers`` (registered
estimators that propose one, e.g. ``additive``) proposes and, with ``genetic``, the best orders
of the paper's genetic search (order crossover, swap/insert mutation, elite) whose fitness is the
estimator (``genetic_fitness="estimator"``) or real retraining (``"retrain"``: the truth as fitness,
batched on GPUs, where it is cheaper than an exact-HVP estimator sweep; its orders come out already
verified). The ``estimator`` ranks them all;
the ``verify_top`` best by estimate and the reference order are then retrained, so the recommended
curriculum is the best *verified* one and the estimate's ranking can be checked against the truth.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Sequence


from taylorlab.order.queries import final_batch_losses, heuristic_orders, random_orders, timed
from taylorlab.order.recorded import Record
from taylorlab.order.registry import estimate
from taylorlab.order.trajectory import retrain


def candidate_orders(rec: Record, num_random: int, seed: int,
                     heuristics=("reverse", "easy_to_hard", "hard_to_easy")) -> Dict[str, List[int]]:
    heur = heuristic_orders(final_batch_losses(rec.flat, rec.traj, rec.batches))
    out = {"reference": list(range(rec.T)), **{h: heur[h] for h in heuristics}}
    out.update((f"random-{k}", o) for k, o in enumerate(random_orders(rec.T, num_random, seed)))
    return out


def design_curriculum(rec: Record, candidates: Dict[str, List[int]], estimator: str = "fut-carry",
                      options: Any = None, verify_top: int = 3, proposers: Sequence[str] = (),
                      retrain_batched: bool = False, genetic: Optional[Dict] = None,
                      genetic_fitness: str = "estimator", screen: int = 0, screen_keep: int = 3,
                      screen_seed: int = 3) -> Dict:
    """Rank ``candidates`` by ``estimator``'s validation loss; retrain the ``verify_top`` best and the
    reference order; return every candidate's estimate, the verified ones' true loss and the best
    verified order (ties and all: never an unverified claim). ``screen`` random orders are scored in
    the same estimator call (one fit for a fitted estimator such as ``surrogate``) and the
    ``screen_keep`` best of them join the candidates."""
    flat, traj, batches, val = rec.flat, rec.traj, rec.batches, rec.val
    cands = dict(candidates)
    proposal_s = 0.0
    for name in proposers:  # each proposer's own best order joins the candidates
        out, wall = timed(lambda: estimate(name, rec, [list(range(rec.T))], options if name == estimator else None))
        proposal_s += wall
        cands[f"{name}-proposal"] = list(out.proposal["order"])
    search_s, search_scored, already_true = 0.0, 0, {}
    if genetic:  # the estimator (or retraining) as fitness; the best few orders it finds join the candidates
        def score(orders):
            if genetic_fitness == "retrain":
                trained = retrain(flat, traj.theta0, batches, orders, traj.lrs, traj.hp, batched=retrain_batched,
                                  reference=traj)
                return [flat.eval_loss(p, val) for p in trained]
            return estimate(estimator, rec, orders, options).losses(rec)

        g = dict(genetic)
        keep = int(g.pop("keep", 3))
        found, search_s = timed(lambda: genetic_search(score, list(cands.values()), traj.T, **g))
        search_scored = len(found)
        known = {tuple(o) for o in cands.values()}
        for k, (loss, o) in enumerate([f for f in found if tuple(f[1]) not in known][:keep]):
            cands[f"genetic-{k}"] = o
            if genetic_fitness == "retrain":
                already_true[f"genetic-{k}"] = loss
    names = list(cands)
    screened = random_orders(rec.T, screen, screen_seed) if screen else []
    out = estimate(estimator, rec, [cands[n] for n in names] + screened, options)
    est = out.losses(rec)
    if screened:  # only the best few screened orders become candidates (rows)
        scores = est[len(names):]
        top = sorted(range(len(screened)), key=lambda i: (scores[i] != scores[i], scores[i]))[:screen_keep]
        for k, i in enumerate(top):
            cands[f"screen-{k}"] = screened[i]
        names = list(cands)
        est = est[:len(names) - len(top)] + [scores[i] for i in top]
    ranked = sorted(range(len(names)), key=lambda i: (est[i] != est[i], est[i]))  # NaN last
    verify = [i for i in ranked if names[i] != "reference" and names[i] not in already_true][:verify_top]
    verify_names = ["reference"] + [names[i] for i in verify]
    params, retrain_s = timed(lambda: retrain(flat, traj.theta0, batches, [cands[n] for n in verify_names], traj.lrs,
                                              traj.hp, batched=retrain_batched, reference=traj))
    true = {n: flat.eval_loss(p, val) for n, p in zip(verify_names, params)}
    true.update(already_true)  # retrained by the search itself
    rows = [{"name": n, "order": cands[n], "estimated_loss": est[i], "rank_by_estimate": ranked.index(i) + 1,
             "true_loss": true.get(n)} for i, n in enumerate(names)]
    best = min(true, key=true.get)
    return {"estimator": estimator, "candidates": rows, "best": best, "best_order": cands[best],
            "best_true_loss": true[best], "reference_true_loss": true["reference"],
            "gain_vs_reference": true["reference"] - true[best], "estimate_wall_s": out.wall_s,
            "proposal_wall_s": proposal_s, "genetic_search_wall_s": search_s, "genetic_orders_scored": search_scored,
            "genetic_fitness": genetic_fitness if genetic else None, "retrain_wall_s": retrain_s, "verified": len(true),
            "screened": len(screened), "estimator_extra": {k: v for k, v in out.extra.items()
                                                           if isinstance(v, (int, float, str, type(None)))},
            "linearisation": out.linearisation}


def order_crossover(a: List[int], b: List[int], rng: random.Random) -> List[int]:
    """OX1: a slice of parent ``a`` kept in place, the other positions filled with the remaining
    batches in parent ``b``'s order."""
    T = len(a)
    i, j = sorted(rng.sample(range(T + 1), 2))
    kept = set(a[i:j])
    rest = iter(x for x in b if x not in kept)
    return [a[k] if i <= k < j else next(rest) for k in range(T)]


def mutate(order: List[int], rng: random.Random) -> List[int]:
    """A swap of two batches or a move (insertion) of one, half the time each."""
    o = list(order)
    i, j = rng.sample(range(len(o)), 2)
    if rng.random() < 0.5:
        o[i], o[j] = o[j], o[i]
    else:
        o.insert(j, o.pop(i))
    return o


def genetic_search(score, seeds: List[List[int]], T: int, population: int = 16, generations: int = 4,
                   elite: int = 2, mutation: float = 0.5, seed: int = 0):
    """The paper's genetic algorithm over orders: ``score(orders) -> losses`` (an estimator sweep,
    lower is better), order crossover, swap/insert mutation, tournament selection, ``elite`` kept.
    Starts from ``seeds`` topped up with random orders. Returns [(loss, order)] of every order
    scored, best first (each order once)."""
    rng = random.Random(seed)
    pop = [list(o) for o in seeds][:population]
    while len(pop) < population:
        pop.append(rng.sample(range(T), T))
    seen: Dict[tuple, float] = {}

    def evaluate(orders):
        new = [o for o in {tuple(o): o for o in orders if tuple(o) not in seen}.values()]
        if new:
            for o, loss in zip(new, score(new)):
                seen[tuple(o)] = float(loss) if loss == loss else float("inf")
        return [seen[tuple(o)] for o in orders]

    fit = evaluate(pop)
    for _ in range(generations):
        ranked = [pop[i] for i in sorted(range(len(pop)), key=lambda i: fit[i])]
        children = ranked[:elite]

        def pick():
            a, b = rng.sample(range(len(pop)), 2)
            return pop[a] if fit[a] <= fit[b] else pop[b]

        while len(children) < population:
            child = order_crossover(pick(), pick(), rng)
            if rng.random() < mutation:
                child = mutate(child, rng)
            children.append(child)
        pop = children
        fit = evaluate(pop)
    return sorted(((v, list(k)) for k, v in seen.items()), key=lambda x: x[0])


def memorization_cells(T: int, batch_ids: Optional[List[int]], num_batches: int, num_positions: int):
    """(i, j) cells: the chosen batches (default: ``num_batches`` spread over the run) each moved to
    ``num_positions`` positions spread from first to last."""
    def spread(n):
        n = max(1, min(n, T))
        return sorted({round(k * (T - 1) / max(1, n - 1)) for k in range(n)})

    ids = list(batch_ids) if batch_ids else spread(num_batches)
    return [(i, j) for i in ids for j in spread(num_positions)]
