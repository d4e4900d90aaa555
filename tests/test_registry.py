"""Plug-in points: a pruning method and an order estimator added by registration alone run
through the real pipeline (Hydra config, validation, stages, the results page); nothing outside
the method libraries spells a method's or an estimator's name; no import cycle in src/."""

import ast
import collections
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from helpers import ROOT
from taylorlab.errors import ConfigError
from taylorlab.order import Estimate, Estimator, registry as order_registry
from taylorlab.pruning import LayerTask, Method, registry as pruning_registry

SRC = ROOT / "src" / "taylorlab"


# ------------------------------------------------------------------ a toy method and a toy estimator

@dataclass
class RandomOptions:
    seed: int = 0


def prune_randomly(task: LayerTask) -> None:
    g = torch.Generator().manual_seed(task.options.seed)
    task.apply_scores(torch.rand(task.weight.shape, generator=g))


@dataclass
class ShrinkOptions:
    factor: float = 0.5


def shrink(rec, orders, opts) -> Estimate:
    """Halfway (``factor``) from theta_0 to the reference run's end, for every order."""
    theta = rec.traj.theta0 + opts.factor * (rec.traj.final - rec.traj.theta0)
    return Estimate(params=theta.expand(len(orders), -1).clone())


@pytest.fixture
def toys():
    method = pruning_registry.register(Method("random", prune_randomly, RandomOptions, needs_calibration=False))
    est = order_registry.register(Estimator("shrink", shrink, ShrinkOptions))
    yield method, est
    pruning_registry.unregister("random")
    order_registry.unregister("shrink")


def _compose(overrides):
    from taylorlab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="pipeline", overrides=overrides)


def test_a_registered_method_and_estimator_run_through_the_pipeline(toys, tmp_path):
    from taylorlab.cli import run_pipeline
    from taylorlab.report import collect_results

    cfg = _compose(["debug=fast", "launcher=inline", f"out_dir={tmp_path}", "run=toys",
                    "stages=[evaluate_pruned,estimate,report]", "prune.method=random", "+prune.options.seed=3",
                    "estimate.estimators=[none,shrink]", "estimate.options.shrink.factor=0.25"])
    assert run_pipeline(cfg)["status"] == "ok"
    run = tmp_path / "toys"
    (prune_dir,) = run.glob("prune-*")
    recipe = json.loads((prune_dir / "recipe.json").read_text())
    assert recipe["method"] == "random" and recipe["options"] == {"seed": 3}
    sparsity = json.loads((prune_dir / "sparsity.json").read_text())["total"]["sparsity"]
    assert sparsity == pytest.approx(0.5, abs=0.01)
    rows = collect_results([run])
    assert [r["method"] for r in rows] == ["random"] and rows[0]["ppl"] > 0
    (est_dir,) = run.glob("estimate-*")
    est = json.loads((est_dir / "estimates.json").read_text())
    assert [r["estimator"] for r in est["fidelity"]] == ["none", "shrink"]
    assert all(o["shrink_loss"] != o["none_loss"] for o in est["orders"])  # its own answer, not the baseline's
    page = next(run.glob("report-*")).joinpath("index.html").read_text()
    assert '"random"' in page and '"shrink"' in page  # the page lists and colours both


def test_a_key_of_another_method_or_estimator_is_refused(toys):
    from taylorlab.config.schema import validate

    with pytest.raises(ConfigError, match="prune.options.alpha does not apply to random"):
        validate(_compose(["prune.method=random", "+prune.options.alpha=1.0"]))
    with pytest.raises(ConfigError, match="estimate.options.shrink.curvature does not apply to shrink"):
        validate(_compose(["estimate.estimators=[shrink]", "+estimate.options.shrink.curvature=hvp"]))
    with pytest.raises(ConfigError, match="factor='big' is not a float"):
        validate(_compose(["estimate.estimators=[shrink]", "estimate.options.shrink.factor=big"]))
    with pytest.raises(ValueError, match="already registered"):
        pruning_registry.register(Method("random", prune_randomly))


def test_options_are_filled_in_so_both_spellings_plan_the_same_stage():
    from taylorlab.config.schema import validate

    a, b = _compose(["prune=sparsegpt"]), _compose(["prune.method=sparsegpt"])
    validate(a)
    validate(b)
    assert a.prune == b.prune and dict(a.prune.options) == {"percdamp": 0.01, "blocksize": 128}


# ------------------------------------------------------------------ architecture

def _modules():
    mods = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = f
    return mods


def test_no_import_cycle_in_src():
    mods = _modules()
    graph = collections.defaultdict(set)
    for name, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("taylorlab"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    # Tarjan's strongly connected components: any with more than one module is a cycle
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(mods):
        if v not in index:
            visit(v)
    assert cycles == []


def _strings(tree):
    """String constants that are not docstrings."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_source_outside_the_method_libraries_spells_a_method_or_estimator_name():
    # "none" ("no change") is also the English word the messages use; the baseline is found by its
    # capability (Estimator.baseline), which the fidelity table and the page read
    names = (set(pruning_registry.names()) | set(order_registry.names())) - {"none"}
    found = []
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC).as_posix()
        if rel.startswith(("pruning/", "order/")):
            continue
        for text in _strings(ast.parse(f.read_text())):
            low = text.lower()
            hits = [n for n in names if re.search(rf"(?<![a-z0-9_]){re.escape(n)}(?![a-z0-9_])", low)]
            found += [f"{rel}: {h!r} in {text[:60]!r}" for h in hits]
    assert found == []
