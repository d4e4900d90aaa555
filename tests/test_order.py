"""Order-effect estimators on a tiny transformer against real retraining (properties, no magic
numbers beyond the method notes' own claims)."""

import random

import helpers
import pytest
import torch

from taylorlab.errors import TaylorlabError
from taylorlab.order import AdamHP, FlatModel, Record, estimate, record, retrain, validate_orders

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
    return helpers.random_orders(k, T, seed)


@pytest.mark.parametrize("name, opts", [("none", {}), ("fut", {}), ("fut2", {}), ("fut-carry", {}),
                                        ("fut-carry", {"curvature": "hvp2"}), ("fut-carry", {"curvature": "secant"}), ("fut-carry", {"curvature": "none"}),
                                        ("fut-carry", {"curvature": "kfac"}), ("additive", {})])
def test_every_estimator_returns_the_reference_run_for_the_reference_order(name, opts):
    flat, batches, val, _, _, traj = setup(3e-3)
    ref_loss = flat.eval_loss(traj.final, val)
    out = estimate(name, Record(flat, traj, batches, val), [list(range(T)), random_orders(1)[0]], opts)
    if out.params is not None:
        assert torch.equal(out.params[0], traj.final)
        assert not torch.equal(out.params[1], traj.final) or name == "none"
    else:
        assert out.loss[0] == ref_loss and out.loss[1] != ref_loss


def test_closed_form_derivatives_of_adams_update_match_autodiff():
    from torch.func import jvp

    from taylorlab.order.estimators.fut import _phi, _phi_derivatives

    flat, batches, _, _, _, traj = setup(3e-3)
    phi = _phi(traj, 3)
    g = flat.grad(traj.theta(3), batches[5])
    ones = torch.ones_like(g)
    val, d1, d2 = _phi_derivatives(traj, 3, g)
    a1 = jvp(phi, (g,), (ones,))[1]
    a2 = jvp(lambda x: jvp(phi, (x,), (ones,))[1], (g,), (ones,))[1]
    torch.testing.assert_close(val, phi(g))
    torch.testing.assert_close(d1, a1, rtol=1e-8, atol=1e-6)
    torch.testing.assert_close(d2, a2, rtol=1e-6, atol=1e-3 * float(a2.abs().max()))


def test_sparse_checkpoints_replay_the_reference_run_bitwise():
    flat, batches, _, lrs, hp, full = setup(3e-3)
    flat.load(full.theta0)
    sparse = record(flat, batches, list(range(T)), lrs, hp, every=3)
    assert sorted(sparse.stored) == [0, 3, 6, T]
    for t in list(range(T + 1)) + [5, 1, 7]:  # forward, then jumping back
        for a, b in zip(sparse.state(t), full.state(t)):
            assert torch.equal(a, b), t


def test_batched_retraining_matches_one_at_a_time():
    flat, batches, _, lrs, hp, traj = setup(3e-3)
    orders = random_orders(3)
    a = retrain(flat, traj.theta0, batches, orders, lrs, hp, batched=True)
    b = retrain(flat, traj.theta0, batches, orders, lrs, hp, batched=False)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    ref = retrain(flat, traj.theta0, batches, [list(range(T))], lrs, hp, batched=False)
    assert torch.equal(ref[0], traj.final)  # the recorded run is a real run


def test_retraining_from_the_shared_prefix_is_the_full_retraining():
    from taylorlab.order import shared_prefix
    from taylorlab.order.memorization import moved_order

    flat, batches, _, lrs, hp, full = setup(3e-3)
    flat.load(full.theta0)
    traj = record(flat, batches, list(range(T)), lrs, hp, every=3)  # the prefix's end is replayed
    orders = [moved_order(T, 6, 4), moved_order(T, 1, 7), list(range(T)), random_orders(1)[0], moved_order(T, 5, 2)]
    assert [shared_prefix(o, traj.order) for o in orders[:3]] == [4, 1, T]
    whole = retrain(flat, traj.theta0, batches, orders, lrs, hp, batched=False)
    alone = retrain(flat, traj.theta0, batches, orders, lrs, hp, batched=False, reference=traj)
    assert torch.equal(alone, whole)  # bitwise, in query order
    for chunk in (2, None):  # copies join the vmapped step when their prefix ends
        together = retrain(flat, traj.theta0, batches, orders, lrs, hp, batched=True, chunk=chunk, reference=traj)
        assert torch.allclose(together, whole, rtol=1e-9, atol=1e-12), chunk
    only_ref = retrain(flat, traj.theta0, batches, [list(range(T))] * 2, lrs, hp, batched=True, reference=traj)
    assert torch.equal(only_ref, traj.final.expand(2, -1))  # nothing to train
    with pytest.raises(TaylorlabError, match="reference run's own initial weights"):  # another run's prefix
        retrain(flat, traj.theta0 * 1.01, batches, orders, lrs, hp, batched=False, reference=traj)
    with pytest.raises(TaylorlabError, match="learning rates"):
        retrain(flat, traj.theta0, batches, orders, [2 * x for x in lrs], hp, batched=False, reference=traj)
    assert not torch.allclose(whole[0], whole[1])  # the orders differ, so order-keeping is tested


def errors(lr, k=8, curvatures=("hvp",)):
    flat, batches, val, lrs, hp, traj = setup(lr)
    orders = random_orders(k)
    true = retrain(flat, traj.theta0, batches, orders, lrs, hp)
    out = {}
    runs = [("none", "none", "hvp")] + [("fut-carry" + ("" if c == "hvp" else "-" + c), "fut-carry", c) for c in curvatures]
    for name, estimator, curvature in runs:
        opts = {"curvature": curvature} if estimator == "fut-carry" else {}
        est = estimate(estimator, Record(flat, traj, batches), orders, opts).params
        disp = torch.linalg.vector_norm(true - traj.theta0, dim=1)
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


def test_second_order_gradient_expansion_tracks_retraining_better_at_larger_learning_rates():
    """hvp2 adds 1/2 D^3 L[delta, delta] to the linearised gradient: where deviations are large (lr 3e-3,
    1e-2 on the test model) it must come closer to the retrained runs than the first-order expansion."""
    for lr in (3e-3, 1e-2):
        e = errors(lr, k=6, curvatures=("hvp", "hvp2"))
        assert e["fut-carry-hvp2"] < e["fut-carry"] < e["none"], (lr, e)


def test_expanded_gradient_matches_the_true_gradient_to_its_order():
    """g(theta + s v) - expansion shrinks as s^2 (first order) and s^3 (second order)."""
    from taylorlab.order.estimators.fut_carry import expanded_grad

    flat, batches, _, _, _, traj = setup(3e-3)
    theta, b = traj.theta(4), batches[3]
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=theta.dtype) * 1e-2
    err = {k: [] for k in (False, True)}
    for s in (1.0, 0.5):
        true = flat.grad(theta + s * v, b)
        for second in (False, True):
            err[second].append(float(torch.linalg.vector_norm(expanded_grad(flat, theta, b, s * v, second) - true)))
    assert 3.0 < err[False][0] / err[False][1] < 5.0  # ~4: error O(s^2)
    assert 6.0 < err[True][0] / err[True][1] < 10.0  # ~8: error O(s^3)
    assert err[True][0] < err[False][0]


def test_linearisation_self_check_grows_with_the_learning_rate_and_warns_where_ranking_fails():
    """fut-carry's check needs no retraining: the share of the gradient's change its linearisation
    misses. It must be small where the estimate ranks orders, large where it does not, and exactly 1
    without curvature (the no-curvature gradient ignores the change by construction)."""
    from scipy.stats import spearmanr

    med, rho = {}, {}
    for lr in (1e-3, 1e-2):
        flat, batches, val, lrs, hp, traj = setup(lr)
        orders = random_orders(8)
        out = estimate("fut-carry", Record(flat, traj, batches), orders)
        lin = out.linearisation
        assert len(lin["checks"]) == 8 and all(0 < c["step"] < T for c in lin["checks"])
        med[lr] = lin["median_residual"]
        true = retrain(flat, traj.theta0, batches, orders, lrs, hp)
        rho[lr] = spearmanr([flat.eval_loss(p, val) for p in out.params],
                            [flat.eval_loss(p, val) for p in true]).statistic
        assert lin["median_first_order"] == lin["median_residual"]  # hvp is the first-order expansion
        none = estimate("fut-carry", Record(flat, traj, batches), orders, {"curvature": "none"}).linearisation
        assert none["median_residual"] == pytest.approx(1.0, abs=1e-9)
        # every curvature also reports the first-order residual at its own estimated states: a property
        # of the regime, close to hvp's whatever the estimator
        for other in (none, estimate("fut-carry", Record(flat, traj, batches), orders, {"curvature": "hvp2"}).linearisation):
            assert other["median_first_order"] == pytest.approx(med[lr], abs=0.1)
    assert med[1e-3] < 0.5 < med[1e-2]  # the stage's warning threshold separates them
    assert rho[1e-3] > 0.9 > rho[1e-2]  # ... as the ranking itself does


def test_secant_curvature_is_the_same_for_an_order_alone_or_among_others():
    """The secant variant reuses the previous step's gradients across orders; what it estimates for
    one order must not depend on which other orders share the sweep."""
    flat, batches, val, lrs, hp, traj = setup(1e-3)
    orders = random_orders(5)
    together = estimate("fut-carry", Record(flat, traj, batches), orders, {"curvature": "secant"}).params
    alone = estimate("fut-carry", Record(flat, traj, batches), orders[2:3], {"curvature": "secant"}).params
    torch.testing.assert_close(together[2], alone[0], rtol=1e-10, atol=1e-12)
    for name, opts in (("fut-carry", {"curvature": "secant"}), ("fut-carry", {"curvature": "none"}),
                       ("fut-carry", {"curvature": "kfac"}), ("fut-ckpt", {"every": 3}),
                       ("fut-ckpt", {"every": 3, "curvature": "kfac"})):
        # the table passes' chunk (here 5) and the order loop's own (at most 4): bit for bit those of chunks of 1
        chunked = estimate(name, Record(flat, traj, batches), orders, {**opts, "chunk": 5}).params
        assert torch.equal(chunked, estimate(name, Record(flat, traj, batches), orders, {**opts, "chunk": 1}).params), name
    true = retrain(flat, traj.theta0, batches, orders, lrs, hp)
    none = traj.final.expand(len(orders), -1)
    err = lambda est: float(torch.linalg.vector_norm(est - true, dim=1).mean())  # noqa: E731
    assert err(together) < err(none)


@pytest.mark.parametrize("name", ["none", "fut", "fut2", "fut-carry"])
def test_per_order_estimators_answer_split_orders_as_they_answer_all(name):
    """What ``per_order`` promises (and the fan-out over sub-jobs or GPUs rests on): the orders
    split in chunks, answered separately and merged, give the answer of one call over all."""
    from taylorlab.order import registry

    assert registry.get(name).per_order
    flat, batches, val, _, _, traj = setup(1e-3)
    rec, orders = Record(flat, traj, batches, val), random_orders(5)
    whole = estimate(name, rec, orders)
    merged = registry.merge([estimate(name, rec, orders[:2]), estimate(name, rec, orders[2:])])
    torch.testing.assert_close(merged.params, whole.params, rtol=1e-10, atol=1e-12)
    if whole.linearisation is not None:  # the self-checks pooled, order indices those of the whole list
        assert {c["order"] for c in merged.linearisation["checks"]} <= set(range(5))
        assert merged.linearisation["median_residual"] is not None
    assert not registry.get("surrogate").per_order and not registry.get("additive").per_order


@pytest.mark.parametrize("bad, words", [([0, 1, 2], "entries"), ([0, 1, 2, 3, 4, 5, 6, 9], "out of range"),
                                        ([0, 0, 2, 3, 4, 5, 6, 7], "not a permutation")])
def test_bad_queries_are_one_line_errors(bad, words):
    with pytest.raises(TaylorlabError) as err:
        validate_orders([bad], T)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_adjoint_equals_finite_differences_of_the_dynamics():
    """lambda_t . u = d f(x_T) / d x_t along u, with f the validation loss at the end and x_t -> x_T
    the reference steps: central differences of the real (non-linear) dynamics agree with the
    adjoint of the linearised ones as the step shrinks."""
    from taylorlab.order.estimators.additive import _target_grad, adjoint_step

    flat, batches, val, lrs, hp, traj = setup(3e-3)
    t0 = 4
    lam = (_target_grad(flat, traj.final, val), torch.zeros_like(traj.final), torch.zeros_like(traj.final))
    for t in range(T - 1, t0 - 1, -1):
        lam = adjoint_step(flat, traj, t, lam)
    g = torch.Generator().manual_seed(3)
    x = traj.state(t0)
    u = [torch.randn(y.shape, generator=g, dtype=y.dtype) for y in x]
    # theta anywhere; m and v relative to themselves: where no gradient has been seen yet (m = v = 0)
    # a state off zero is one Adam never reaches (m / (sqrt(0) + eps)), and sqrt has a kink at 0
    u = (u[0] * x[0].abs().mean(), u[1] * x[1].abs(), u[2].abs() * x[2])

    def f(eps):
        state = tuple(a + eps * b for a, b in zip(x, u))
        for t in range(t0, T):
            state = traj.step(t, state)
        return flat.eval_loss(state[0], val)

    predicted = float(sum((a * b).sum() for a, b in zip(lam, u)))
    fd = [(f(h) - f(-h)) / (2 * h) for h in (1e-2, 1e-3)]
    assert abs(predicted) > 1e-6
    assert abs(fd[-1] - predicted) < 1e-3 * abs(predicted)
    assert abs(fd[-1] - predicted) < abs(fd[0] - predicted)  # converges as h shrinks


def test_additive_scores_with_random_projection_approach_the_exact_ones():
    from taylorlab.order.estimators.additive import additive_scores, best_order, score_orders
    from taylorlab.order.projection import Projector

    flat, batches, val, lrs, hp, traj = setup(1e-3)
    exact = additive_scores(flat, traj, batches, val)
    errs = {}
    for k in (64, 4096):
        proj = additive_scores(flat, traj, batches, val, projection_dim=k, projection_seed=0)
        errs[k] = float((proj - exact).norm() / exact.norm())
    # inner products through a JL projection err by about |lambda||dx| / sqrt(k): 8x less from k=64 to 4096
    assert errs[4096] < errs[64] / 3
    x = torch.randn(3, 1000, dtype=torch.float64)
    assert torch.equal(Projector(1000, 16, seed=5)(x), Projector(1000, 16, seed=5)(x))
    r = Projector(1000, 4000, seed=1, kind="rademacher")(x)
    assert abs(float(r[0] @ r[1]) - float(x[0] @ x[1])) < 0.2 * float(x[0].norm() * x[1].norm())
    # O(T) scoring of many orders, and the assignment optimum is the surrogate's best
    orders = random_orders(200, seed=4)
    scores = score_orders(exact, orders, 1.0)
    best = best_order(exact)
    assert sorted(best) == list(range(T))
    assert float(score_orders(exact, [best], 1.0)[0]) <= float(scores.min()) + 1e-12


def test_fidelity_table_survives_a_diverged_estimate():
    from taylorlab.order import fidelity_table

    theta0 = torch.zeros(3)
    true = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    rows = fidelity_table([1.0, 2.0, 3.0], {"good": [1.1, 2.1, 2.9], "diverged": [1.0, 900.0, 5000.0]}, true,
                          {"good": true * 1.1, "diverged": true * 1e6}, theta0, {"good": 1.0, "diverged": 1.0}, 1.0)
    good, diverged = rows
    assert good["spearman"] == pytest.approx(1.0) and good["mae_ppl"] < 2
    assert diverged["mae_ppl"] == float("inf") and diverged["rel_param_error"] > 1e5


def test_fidelity_reads_the_rows_it_judges_in_place_with_the_answers_of_copies():
    """``rows``: the parameter error over selected rows of the [K, d] answers, read in place (copies of
    a 135M model's answers ran the host out of memory), equals the table of the copied rows."""
    from taylorlab.order import fidelity_table

    g = torch.Generator().manual_seed(0)
    true, est, theta0 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randn(5, generator=g)
    rows, loss = [4, 0, 2], [1.0, 2.5, 1.7]
    kept = fidelity_table(loss, {"e": [1.1, 2.0, 1.9]}, true, {"e": est}, theta0, {"e": 1.0}, 1.0, rows=rows)
    copied = fidelity_table(loss, {"e": [1.1, 2.0, 1.9]}, true[rows], {"e": est[rows]}, theta0, {"e": 1.0}, 1.0)
    want = float((torch.linalg.vector_norm(est[rows] - true[rows], dim=1)
                  / torch.linalg.vector_norm(true[rows] - theta0, dim=1)).mean())
    assert kept[0]["rel_param_error"] == pytest.approx(want, rel=1e-6) == copied[0]["rel_param_error"]


def test_memorization_by_position_estimate_tracks_retraining():
    """M[i, j]: loss on batch i at the end with batch i moved to position j. fut-carry against real
    retraining over the cells of two batches at every position, at a small learning rate."""
    from taylorlab.order.memorization import memorization_matrix, moved_order

    assert moved_order(5, 1, 3) == [0, 2, 3, 1, 4] and moved_order(5, 3, 0) == [3, 0, 1, 2, 4]
    flat, batches, val, _, _, traj = setup(1e-3)
    cells = [(i, j) for i in (0, 5) for j in range(T)]
    m = memorization_matrix(Record(flat, traj, batches, val), cells)
    assert m["mae"] < 0.5 * m["mae_no_change"]
    assert m["spearman"] > 0.8
    g = m["generalization"]  # held-out loss by position: the same orders, the validation batches
    assert g["mae"] < 0.5 * g["mae_no_change"]
    # the reference cells (batch i at its own position) are the reference run itself
    assert m["estimated"][0, 0] == m["no_change"][0, 0] and m["estimated"][5, 5] == m["no_change"][5, 5]


def test_curriculum_design_recommends_the_best_verified_order_and_ranks_like_the_truth():
    from scipy.stats import spearmanr

    from taylorlab.order.curriculum import candidate_orders, design_curriculum

    flat, batches, val, _, _, traj = setup(1e-3)
    ref = flat.eval_loss(traj.final, val)
    rec = Record(flat, traj, batches, val)
    cands = candidate_orders(rec, num_random=8, seed=3)
    res = design_curriculum(rec, cands, verify_top=len(cands))  # verify everything
    rows = res["candidates"]
    assert all(r["true_loss"] is not None for r in rows) and res["verified"] == len(cands)
    assert res["best_true_loss"] == min(r["true_loss"] for r in rows)
    ref_row = next(r for r in rows if r["name"] == "reference")
    assert ref_row["estimated_loss"] == ref and abs(ref_row["true_loss"] - ref) < 1e-12
    assert spearmanr([r["estimated_loss"] for r in rows], [r["true_loss"] for r in rows]).statistic > 0.8
    assert res["linearisation"]["median_residual"] < 0.5  # its own check agrees: in range here
    few = design_curriculum(rec, cands, verify_top=2)
    assert few["verified"] == 3 and sum(r["true_loss"] is not None for r in few["candidates"]) == 3
    by_rank = sorted((r for r in few["candidates"] if r["name"] != "reference"), key=lambda r: r["rank_by_estimate"])
    assert {r["name"] for r in few["candidates"] if r["true_loss"] is not None} == {"reference"} | {
        r["name"] for r in by_rank[:2]}


def test_memorization_cells_spread_over_the_run():
    from taylorlab.order.curriculum import memorization_cells

    cells = memorization_cells(16, None, 3, 4)
    assert sorted({i for i, _ in cells}) == [0, 8, 15] and sorted({j for _, j in cells}) == [0, 5, 10, 15]
    assert memorization_cells(16, [2], 3, 1) == [(2, 0)]


def test_genetic_search_improves_on_its_seeds_under_a_known_fitness():
    """On a fitness with a known optimum (distance of each batch from a target position), the search
    returns permutations only, each once, best first, and ends better than every seed order."""
    from taylorlab.order.curriculum import genetic_search, mutate, order_crossover

    rng = random.Random(0)
    a, b = rng.sample(range(10), 10), rng.sample(range(10), 10)
    assert sorted(order_crossover(a, b, rng)) == list(range(10)) and sorted(mutate(a, rng)) == list(range(10))
    target = list(range(12))[::-1]
    calls = []

    def score(orders):
        calls.append(len(orders))
        return [sum(abs(o.index(x) - target.index(x)) for x in range(12)) for o in orders]

    seeds = [rng.sample(range(12), 12) for _ in range(4)]
    found = genetic_search(score, seeds, 12, population=16, generations=15, seed=1)
    assert all(sorted(o) == list(range(12)) for _, o in found)
    assert len({tuple(o) for _, o in found}) == len(found) == sum(calls)  # every order scored once
    assert [v for v, _ in found] == sorted(v for v, _ in found)
    assert found[0][0] < min(score(seeds))


def test_genetic_search_with_retraining_as_fitness_returns_verified_orders():
    """genetic_fitness="retrain": the search's orders carry their real retrained loss (equal to a fresh
    retraining of the same order), are not retrained again, and the recommendation is the best true loss."""
    from taylorlab.order.curriculum import candidate_orders, design_curriculum

    flat, batches, val, lrs, hp, traj = setup(1e-3)
    rec = Record(flat, traj, batches, val)
    cands = candidate_orders(rec, num_random=2, seed=3)
    res = design_curriculum(rec, cands, verify_top=1, genetic_fitness="retrain",
                            genetic={"generations": 2, "population": 6, "keep": 2, "seed": 0})
    found = [r for r in res["candidates"] if r["name"].startswith("genetic-")]
    assert len(found) == 2 and res["genetic_fitness"] == "retrain"
    fresh = retrain(flat, traj.theta0, batches, [r["order"] for r in found], lrs, hp, batched=False)
    for r, p in zip(found, fresh):
        assert r["true_loss"] == flat.eval_loss(p, val)
    assert res["verified"] == 1 + 1 + len(found)  # reference + verify_top + the search's own
    assert res["best_true_loss"] == min(r["true_loss"] for r in res["candidates"] if r["true_loss"] is not None)


def test_surrogate_fitted_to_retrained_orders_ranks_held_out_orders_and_scores_many_cheaply():
    """The datamodel: fitted to R retrained orders (its training orders), judged on held-out ones it
    never saw; anchored at the reference run; its cost is R retrainings whatever the number scored."""
    from scipy.stats import spearmanr

    flat, batches, val, lrs, hp, traj = setup(3e-3)
    rec = Record(flat, traj, batches, val)
    held = random_orders(16, seed=5)
    true = [flat.eval_loss(p, val) for p in retrain(flat, traj.theta0, batches, held, lrs, hp, batched=False)]
    out = estimate("surrogate", rec, [list(range(T))] + held, {"train_orders": 48, "search_orders": 5000})
    assert out.loss[0] == flat.eval_loss(traj.final, val)  # the anchor: the reference order is the recorded run
    assert spearmanr(out.loss[1:], true).statistic > 0.8
    assert out.extra["orders_scored"] == 17 + 5000 and out.extra["retrained_orders"] == 48
    assert not {tuple(o) for o in held} & {tuple(o) for o in helpers.random_orders(48, T, 10_007)}
    # the proposal is the surrogate's exact optimum: no random order scores lower under it
    from taylorlab.order.estimators.additive import score_orders
    S = out.extra["S"]
    many = torch.argsort(torch.rand(2000, T, generator=torch.Generator().manual_seed(0)), dim=1)
    assert out.proposal["predicted_loss"] <= float(score_orders(S, many, out.loss[0]).min()) + 1e-12
    assert 1 <= out.extra["degree"] <= 3 and -1 <= out.extra["cv_spearman"] <= 1  # chosen by cross-validation


def test_surrogate_with_the_adjoint_prior_and_bad_options():
    from taylorlab.errors import ConfigError

    flat, batches, val, lrs, hp, traj = setup(3e-3)
    rec = Record(flat, traj, batches, val)
    out = estimate("surrogate", rec, random_orders(4), {"train_orders": 24, "prior": "additive", "search_orders": 0})
    assert out.extra["prior_s"] > 0 and all(x == x for x in out.loss)
    for bad, word in [({"train_orders": 2}, "train_orders"), ({"prior": "fut"}, "prior"), ({"ridge": []}, "ridge"),
                      ({"folds": 1}, "folds"), ({"degree": 0}, "degree")]:
        with pytest.raises(ConfigError, match=word):
            estimate("surrogate", rec, random_orders(2), bad)


def test_surrogate_shared_by_batch_loss_rebuilds_its_own_fit():
    """prior=batch_loss: the batches' losses at theta_0 scale a shared position profile. The S it
    returns (own parts plus the shared part put back per batch) reproduces its fit on its own
    training orders and ranks held-out orders; the shared weight is one of the offered ones."""
    from scipy.stats import spearmanr
    from taylorlab.errors import ConfigError
    from taylorlab.order.estimators.additive import score_orders

    flat, batches, val, lrs, hp, traj = setup(3e-3)
    rec = Record(flat, traj, batches, val)
    held = random_orders(16, seed=5)
    true = [flat.eval_loss(p, val) for p in retrain(flat, traj.theta0, batches, held, lrs, hp, batched=False)]
    out = estimate("surrogate", rec, [list(range(T))] + held,
                   {"train_orders": 48, "search_orders": 0, "prior": "batch_loss", "share": [0.5, 2.0]})
    x = out.extra
    assert x["share"] in (0.5, 2.0) and x["prior_s"] > 0
    assert out.loss[0] == flat.eval_loss(traj.final, val)
    train = helpers.random_orders(48, T, x["train_seed"])
    fitted = score_orders(x["S"], train, out.loss[0])
    assert spearmanr(fitted, x["train_losses"]).statistic > 0.9
    assert spearmanr(out.loss[1:], true).statistic > 0.8
    with pytest.raises(ConfigError, match="share"):
        estimate("surrogate", rec, random_orders(2), {"prior": "batch_loss", "share": [0.0]})


def test_chunks_are_balanced_and_the_surrogate_plans_each_chunk_again(monkeypatch):
    """A chunk that no longer fits is split evenly, never into a full chunk and a lone copy; the
    surrogate's training retrainings follow the free memory chunk by chunk. The GPU's memory
    shrinking between chunks is faked (``fake_plan``: there is no GPU here)."""
    from taylorlab.order.estimators import surrogate
    from taylorlab.order.memory import ChunkPlan
    from taylorlab.order.trajectory import balanced_chunk

    assert [balanced_chunk(15, f) for f in (15, 14, 8, 7, 1, 99)] == [15, 8, 8, 5, 1, 15]
    assert balanced_chunk(35, 15) == 12 and balanced_chunk(1, 4) == 1 and balanced_chunk(0, 4) == 1
    for n in range(1, 40):
        for fit in range(1, 20):
            c = balanced_chunk(n, fit)
            chunks = -(-n // c)
            assert c <= fit and chunks == -(-n // min(n, fit)) and n - (chunks - 1) * c >= c - chunks

    flat, batches, val, lrs, hp, traj = setup(3e-3)
    rec = Record(flat, traj, batches, val)
    fits, sizes = iter([5, 4, 4, 4, 4, 4, 4]), []

    def fake_plan(flat_, theta0, batches_, K, bound=None):  # the free memory drops after the first chunk
        return ChunkPlan("batched retraining", min(K, next(fits)), K, bound)

    real = surrogate.retrain
    monkeypatch.setattr(surrogate, "plan_retrain_chunk", fake_plan)
    monkeypatch.setattr(surrogate, "retrain", lambda *a, **k: sizes.append(len(a[3])) or real(*a, **k))
    orders = random_orders(13, seed=3)
    losses = surrogate.retrained_losses(rec, orders, True, None)
    assert sizes == [5, 4, 4] and len(losses) == 13
    one = [flat.eval_loss(p, val) for p in retrain(flat, traj.theta0, batches, orders, lrs, hp, batched=False)]
    assert max(abs(a - b) for a, b in zip(losses, one)) < 1e-9


def test_the_advisor_predicts_retraining_as_the_study_measures_it_without_its_evaluations():
    """The study times retraining alone (its evaluations come after), so the prediction beside it
    must not count them: a costlier evaluation leaves the retraining predictions as they are and
    raises only what the surrogate, which evaluates its own training orders, is predicted to cost."""
    from dataclasses import replace

    from taylorlab.order import costs

    flat, batches, val, _, _, traj = setup(3e-3)
    rec = Record(flat, traj, batches, val)
    units = costs.probe_units(rec, 6)
    cheap, dear = (costs.predict(rec, 6, {"surrogate": {"train_orders": 12}}, replace(units, eval_s=e))
                   for e in (units.eval_s, units.eval_s + 100.0))
    for key in ("retrain_batched_s", "retrain_one_at_a_time_s"):
        assert dear[key] == cheap[key] > 0
    assert dear["estimators"]["surrogate"] == pytest.approx(cheap["estimators"]["surrogate"] + 12 * 100.0)


def test_the_study_predicts_costs_first_and_reports_cost_against_batched_retraining():
    """The cost advisor's prediction beside the measurement: every requested estimator with a cost
    model has a positive prediction, batched retraining is measured in the same run, and the
    surrogate's cost is spread over every order it scored."""
    from taylorlab.order.study import run_study, study_queries

    flat, batches, val, _, _, traj = setup(3e-3)
    rec = Record(flat, traj, batches, val)
    res = run_study(rec, study_queries(rec, 6, 1), {"none": None, "fut-carry": None,
                                                   "surrogate": {"train_orders": 12, "search_orders": 3000}})
    pred = res["cost_prediction"]
    assert pred["retrain_batched_s"] > 0 and pred["estimators"]["fut-carry"] > 0
    assert pred["estimators"]["none"] == 0 and pred["estimators"]["surrogate"] > 0
    rows = {r["estimator"]: r for r in res["fidelity"]}
    per_order = res["speed"]["batched_retrain_s_per_order"]
    assert per_order > 0
    fc = rows["fut-carry"]
    assert fc["orders_scored"] == 6 and fc["cost_vs_batched_retrain"] == pytest.approx(fc["wall_s"] / (6 * per_order))
    assert rows["surrogate"]["orders_scored"] == 3006 and rows["surrogate"]["predicted_s"] == pred["estimators"]["surrogate"]
    # fut-carry's prediction within an order of magnitude of what it measured (same device, same passes)
    assert 0.1 < fc["predicted_s"] / fc["wall_s"] < 10
    # the surrogate's training set is kept: its orders from the seed, each loss that order's true loss
    from taylorlab.order.queries import random_orders as drawn

    fit = res["fitted"]["surrogate"]
    train = drawn(T, 12, fit["train_seed"])
    assert len(fit["train_losses"]) == 12 and not {tuple(o) for o in train} & {tuple(o["order"]) for o in res["orders"]}
    again = retrain(flat, traj.theta0, batches, train[-1:], traj.lrs, traj.hp, batched=False, reference=traj)[0]
    assert fit["train_losses"][-1] == flat.eval_loss(again, val)


def test_curriculum_screens_many_orders_with_one_fit_and_verifies_the_best():
    from taylorlab.order.curriculum import candidate_orders, design_curriculum

    flat, batches, val, _, _, traj = setup(3e-3)
    rec = Record(flat, traj, batches, val)
    res = design_curriculum(rec, candidate_orders(rec, 2, 2), estimator="surrogate",
                            options={"train_orders": 24, "search_orders": 0}, verify_top=2, screen=4000, screen_keep=2)
    names = [r["name"] for r in res["candidates"]]
    assert res["screened"] == 4000 and {"screen-0", "screen-1"} <= set(names)
    assert res["estimator_extra"]["orders_scored"] == 4000 + len(names) - 2 and res["estimator_extra"]["retrained_orders"] == 24
    screened = [r for r in res["candidates"] if r["name"].startswith("screen-")]
    others = [r for r in res["candidates"] if not r["name"].startswith("screen-")]
    assert min(r["estimated_loss"] for r in screened) <= min(r["estimated_loss"] for r in others)
    assert res["best_true_loss"] == min(r["true_loss"] for r in res["candidates"] if r["true_loss"] is not None)


def test_memory_plans_bound_chunks_and_checkpoints(tmp_path):
    from taylorlab.order.memory import plan_checkpoints, plan_chunk

    cpu = torch.device("cpu")
    assert plan_chunk("x", 32, cpu, lambda: None).chunk == 32  # the CPU is not probed
    assert plan_chunk("x", 32, cpu, lambda: None, bound=5).chunk == 5
    p = plan_checkpoints(10, 1000, cpu, tmp_path, 0)  # planned: every step on the CPU
    assert p["checkpoint_every"] == 1 and p["stored_states"] == 11 and p["disk_bytes"] == 11000
    assert plan_checkpoints(10, 1000, cpu, tmp_path, 4)["stored_states"] == 4  # 0, 4, 8 and the last
    with pytest.raises(TaylorlabError, match="on disk"):
        plan_checkpoints(10, 2**62, cpu, tmp_path, 1)


@pytest.mark.parametrize("curvature", ["secant", "kfac", "none"])
def test_fut_ckpt_refreshed_every_step_is_fut_carry_itself(curvature):
    flat, batches, val, lrs, hp, traj = setup(1e-3)
    orders = random_orders(4)
    rec = Record(flat, traj, batches)
    ckpt = estimate("fut-ckpt", rec, orders, {"every": 1, "curvature": curvature}).params
    carry = estimate("fut-carry", rec, orders, {"curvature": curvature}).params
    assert torch.equal(ckpt, carry)


def test_fut_ckpt_between_checkpoints_beats_no_change_and_answers_each_order_alone():
    """Gradients only at every 4th state (the record's own checkpoints): the estimate is still nearer
    the truth than "no change", and an order's answer does not depend on the others asked with it."""
    flat, batches, val, lrs, hp, full = setup(1e-3)
    flat.load(full.theta0)
    traj = record(flat, batches, list(range(T)), lrs, hp, every=4)
    orders = random_orders(5)
    rec = Record(flat, traj, batches)
    together = estimate("fut-ckpt", rec, orders, {})
    assert together.extra["every"] == 4
    alone = estimate("fut-ckpt", rec, orders[2:3], {}).params
    torch.testing.assert_close(together.params[2], alone[0], rtol=1e-10, atol=1e-12)
    true = retrain(flat, traj.theta0, batches, orders, lrs, hp)
    err = lambda est: float(torch.linalg.vector_norm(est - true, dim=1).mean())  # noqa: E731
    assert err(together.params) < err(traj.final.expand(len(orders), -1))
    every_step = estimate("fut-carry", rec, orders, {"curvature": "secant"}).params
    assert not torch.equal(together.params, every_step)  # the table really was kept between checkpoints


@pytest.mark.parametrize("opts, words", [({"curvature": "hvp"}, "curvature='hvp' is not one of secant, kfac, none"),
                                         ({"every": -1}, "every"),
                                         ({"kfac_labels": "true"}, "kfac_labels='true' is not one of sampled, data")])
def test_fut_ckpt_refuses_bad_options(opts, words):
    from taylorlab.errors import ConfigError

    flat, batches, _, _, _, traj = setup(1e-3)
    with pytest.raises(ConfigError, match=words):
        estimate("fut-ckpt", Record(flat, traj, batches), random_orders(1), opts)


@pytest.mark.parametrize("name, opts", [("fut-ckpt", {"every": 4}), ("fut-carry", {"curvature": "secant"})])
def test_gradient_tables_that_cannot_fit_get_one_clear_line(monkeypatch, name, opts):
    """The gradient tables (fut-ckpt's, and fut-carry's secant / none) are checked against the memory
    before they are taken, beside the orders' state: one line naming them and a fix, not the kernel's
    OOM killer. The fake: the machine has room for the state, then for nothing more."""
    from taylorlab.order import memory

    flat, batches, _, _, _, traj = setup(1e-3)
    left = iter([2**40, 1])
    monkeypatch.setattr(memory, "host_available_bytes", lambda: next(left))
    with pytest.raises(TaylorlabError, match=r"gradient tables \(\d+ batches\) beside its state needs .* GiB"):
        estimate(name, Record(flat, traj, batches), random_orders(3), opts)


@pytest.mark.parametrize("micro", [1, 2, 3])
def test_micro_batched_loss_gradient_and_hvp_are_the_whole_batch_s(micro):
    """FlatModel(micro_batch=m): loss, gradient, HVP and the vmapped gradient over micro-batches of
    m sequences (3 of a batch of 4: uneven, weighted by their sequences) equal the one-pass values —
    to float32's precision, not float64's: transformers computes RMSNorm in float32 whatever the
    weights' dtype, and its reductions over a batch of 3 sequences round differently from 1, 2 or 4."""
    flat, batches, _, _, _, traj = setup(1e-3)
    acc = FlatModel(flat.model, micro_batch=micro)
    four = torch.stack([torch.cat([batches[i], batches[i + 1]]) for i in (0, 2)])  # batches of 4 sequences
    theta, b = traj.final, four[0]
    assert b.shape[0] > micro
    vec = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=theta.dtype)

    def rel(x, y):
        return float(torch.linalg.vector_norm(x - y) / torch.linalg.vector_norm(y))

    assert rel(acc.loss(theta, b), flat.loss(theta, b)) < 1e-12
    assert rel(acc.grad(theta, b), flat.grad(theta, b)) < 1e-6
    assert rel(acc.hvp(theta, b, vec), flat.hvp(theta, b, vec)) < 1e-6
    many = torch.stack([theta, traj.theta0])
    assert rel(acc.batched_grad()(many, four), flat.batched_grad()(many, four)) < 1e-6
    assert rel(acc.grad(theta, b), flat.grad(theta, b[:1])) > 1e-3  # the check can fail: one sequence is not four


@pytest.mark.parametrize("name, opts", [("fut-ckpt", {"every": 4}), ("fut-carry", {"curvature": "secant"}),
                                        ("fut-carry", {"curvature": "hvp"}), ("fut-carry", {"curvature": "kfac"}),
                                        ("fut-ckpt", {"every": 4, "curvature": "kfac"})])
def test_state_carrying_cost_models_count_each_order_s_step_and_the_self_check(name, opts):
    """fut-ckpt's count once held only its gradient tables and was 6x under on SmolLM2: the K x T
    carried Adam steps over d numbers, and the self-check's exact passes, are in every count now."""
    from dataclasses import replace

    from taylorlab.order import registry
    from taylorlab.order.costs import Units

    est = registry.get(name)
    o = est.make_options(opts)
    u = Units("cpu", grad_s=0.5, batched_grad_s=0.25, hvp_s=1.0, batched_hvp_s=0.75, eval_s=0.1, copies=2)
    K, T = 35, 16
    base = est.cost(u, K, T, o)
    assert est.cost(replace(u, carry_step_s=0.01), K, T, o) == pytest.approx(base + K * T * 0.01)
    checks = o.check_steps * o.check_orders
    first_order = 0.0 if opts.get("curvature") == "hvp" else 1.0  # hvp: its estimate is the first-order pass
    quiet = est.make_options({**opts, "check_steps": 0})
    assert base - est.cost(u, K, T, quiet) == pytest.approx(checks * (0.5 + first_order))


def test_kfac_factors_are_the_layer_moments_and_apply_is_their_kronecker_product():
    """taylorlab.order.kfac: A is the mean of x xᵀ over a layer's input positions and G = N Σ g gᵀ of
    its output gradients, whether the batch goes in one pass or in micro-batches; ``apply`` is
    (A ⊗ G) vec(ΔW) on each covered weight and zero elsewhere; a tied LM head is left to its embedding."""
    from taylorlab.models import build_llama
    from taylorlab.order import kfac

    flat, batches, _, _, _, traj = setup(3e-3)
    covered = kfac.blocks(flat)
    # the 64-token head (64 x 16) would need a 64² output factor, 4.25 times its weight: left out
    assert {b.name.rsplit(".", 2)[-2] for b in covered} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"}
    assert kfac.factor_numel(covered) <= 4 * sum(b.out * b.inp for b in covered)
    theta, batch = traj.theta(3), batches[2]
    fac = kfac.factors(flat, theta, batch, covered, "data")
    # independently: the down projection's input and output gradient, captured by plain autograd
    model = flat.load(theta)
    seen = {}
    down = model.model.layers[0].mlp.down_proj
    def capture(_mod, inputs, output):
        output.retain_grad()
        seen.update(x=inputs[0].detach(), y=output)

    hook = down.register_forward_hook(capture)
    try:
        logits = model(input_ids=batch, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)).backward()
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    x, g = seen["x"].reshape(-1, down.in_features), seen["y"].grad.reshape(-1, down.out_features)
    k = [b.name for b in covered].index("model.layers.0.mlp.down_proj.weight")
    n = x.shape[0]
    torch.testing.assert_close(fac[k][0], x.T @ x / n, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fac[k][1], n * g.T @ g, rtol=1e-10, atol=1e-12)
    micro = kfac.factors(FlatModel(flat.model, micro_batch=1), theta, batch, covered, "data")
    for (a, gg), (ma, mg) in zip(fac, micro):
        torch.testing.assert_close(ma, a, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(mg, gg, rtol=1e-9, atol=1e-12)
    vec = torch.randn(flat.dim, dtype=theta.dtype, generator=torch.Generator().manual_seed(0))
    out = kfac.apply(fac, covered, vec)
    inside = torch.zeros(flat.dim, dtype=torch.bool)
    for (a, gg), b in zip(fac, covered):
        sl = slice(b.offset, b.offset + b.out * b.inp)
        inside[sl] = True
        w = vec[sl].view(b.out, b.inp)
        # vec() stacks columns: vec(G W A) = (Aᵀ ⊗ G) vec(W), and A is symmetric
        torch.testing.assert_close(out[sl].view(b.out, b.inp).T.reshape(-1), torch.kron(a, gg) @ w.T.reshape(-1),
                                   rtol=1e-9, atol=1e-12)
    assert torch.equal(out[~inside], torch.zeros_like(out[~inside]))
    # the Fisher (labels drawn from the model, seeded): the same inputs' moment, other output gradients
    drawn = kfac.factors(flat, theta, batch, covered)
    assert torch.equal(drawn[k][0], fac[k][0]) and not torch.allclose(drawn[k][1], fac[k][1])
    assert all(torch.equal(g, h) for (_, g), (_, h) in zip(drawn, kfac.factors(flat, theta, batch, covered)))
    tied = FlatModel(build_llama(64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True).double())
    assert "lm_head.weight" not in {b.name for b in kfac.blocks(tied)} and len(kfac.blocks(tied)) == 7


def test_kfac_cost_counts_its_factors_and_products_and_the_advisor_probes_them():
    """curvature=kfac: every table's batches cost a factor pass beside their gradient, every order's
    step a product with the factors; the advisor times both only where kfac was asked for."""
    from dataclasses import replace

    from taylorlab.order import costs, registry
    from taylorlab.order.costs import Units

    u = Units("cpu", grad_s=0.5, batched_grad_s=0.25, hvp_s=1.0, batched_hvp_s=0.75, eval_s=0.1, copies=2)
    K, T = 35, 16
    for name, opts, tables in (("fut-carry", {"curvature": "kfac"}, T * min(K, T)),
                               ("fut-ckpt", {"every": 4, "curvature": "kfac"}, 4 * min(4 * K, T))):
        est = registry.get(name)
        o = est.make_options(opts)
        base = est.cost(u, K, T, o)
        assert est.cost(replace(u, kfac_apply_s=0.01), K, T, o) == pytest.approx(base + K * T * 0.01)
        assert est.cost(replace(u, kfac_factor_s=0.02), K, T, o) == pytest.approx(base + tables * 0.02)
    flat, batches, val, _, _, traj = setup(3e-3)
    rec = Record(flat, traj, batches, val)
    asked = costs.predict(rec, 4, {"fut-carry": {"curvature": "kfac"}})
    assert asked["units"]["kfac_factor_s"] > 0 and asked["units"]["kfac_apply_s"] > 0
    assert costs.predict(rec, 4, {"fut-carry": None})["units"]["kfac_apply_s"] == 0.0


def test_the_benchmarks_emulated_tf32_rounds_every_product_operand_to_ten_mantissa_bits():
    """benchmarks/order_effects/precision_nudge.py's CPU stand-in for the GPU's TF32 (named so there):
    nearest-even at bit 13, and inside the mode a product (and its backward) uses the rounded operands."""
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parents[1] / "benchmarks" / "order_effects"
    sys.path.insert(0, str(here))
    try:
        spec = importlib.util.spec_from_file_location("precision_nudge", here / "precision_nudge.py")
        pn = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(pn)
    finally:
        sys.path.remove(str(here))
    x = torch.tensor([1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -11 + 2 ** -20, -1 - 2 ** -10])
    assert pn.tf32_round(x).tolist() == [1.0, 1 + 2 ** -9, 1 + 2 ** -10, -1 - 2 ** -10]
    a = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(16, 4)
    with pn.EmulatedTF32():
        y = a @ b
        y.sum().backward()
    assert torch.equal(y, pn.tf32_round(a.detach()) @ pn.tf32_round(b))
    assert not torch.equal(y, a.detach() @ b)
    assert torch.equal(a.grad, pn.tf32_round(torch.ones(8, 4)) @ pn.tf32_round(b).t())
