"""Stages and the graph, declared as data."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Tuple

from taylorlab.errors import ConfigError


@dataclass(frozen=True)
class StageSpec:
    """A kind of stage: its name and the function that runs it (``"module:function"``).

    The function takes a ``StageContext`` and returns a dict of artifact names to paths relative to
    the stage directory; the engine records them in manifest.json.
    """

    name: str
    function: str
    description: str = ""
    distributed: bool = False  # runs on every task of a multi-task job (data parallel); else rank 0 alone

    def load(self) -> Callable:
        module, _, attr = self.function.partition(":")
        return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Node:
    """One stage instance in the graph.

    ``parents`` maps a role (what the stage calls the artifact, e.g. ``model``) to candidate nodes:
    the first candidate that is part of the run is used, so ``evaluate`` scores the trained model
    when ``train`` runs and the base model when it does not. ``config`` names the config section
    (several nodes of one spec share one, e.g. ``evaluate_dense`` and ``evaluate_pruned``).
    """

    name: str
    spec: StageSpec
    parents: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    config: str = ""
    optional_parents: Tuple[str, ...] = ()  # roles that may be absent (e.g. report's inputs)

    @property
    def config_key(self) -> str:
        return self.config or self.spec.name


class Graph:
    def __init__(self, nodes: Iterable[Node]):
        self.nodes: Dict[str, Node] = {}
        for n in nodes:
            if n.name in self.nodes:
                raise ValueError(f"duplicate node {n.name}")
            self.nodes[n.name] = n
        for n in self.nodes.values():
            for role, cands in n.parents.items():
                for c in cands:
                    if c not in self.nodes:
                        raise ValueError(f"node {n.name}: parent {c} ({role}) is not in the graph")

    def resolve(self, selected: List[str]) -> Dict[str, Dict[str, str]]:
        """The nodes to run, in topological order, each with its resolved parents {role: node}.

        Selected nodes pull in the parents they need. A role with several candidates binds to the
        first candidate that is selected (or already pulled in); failing that, the last candidate.
        """
        unknown = [s for s in selected if s not in self.nodes]
        if unknown:
            raise ConfigError(
                f"unknown stage(s) {', '.join(unknown)} in stages=; known: {', '.join(self.nodes)}."
            )
        chosen = set(selected)
        # close over required parents, preferring candidates that are already chosen
        changed = True
        while changed:
            changed = False
            for name in list(chosen):
                for role, cands in self.nodes[name].parents.items():
                    if any(c in chosen for c in cands):
                        continue
                    if role in self.nodes[name].optional_parents:
                        continue
                    chosen.add(cands[-1])
                    changed = True
        bound: Dict[str, Dict[str, str]] = {}
        for name in chosen:
            roles = {}
            for role, cands in self.nodes[name].parents.items():
                hit = [c for c in cands if c in chosen]
                if hit:
                    roles[role] = hit[0]
            bound[name] = roles
        # topological order, stable in declaration order
        order: List[str] = []
        seen: set = set()

        def visit(n: str, stack: Tuple[str, ...] = ()) -> None:
            if n in seen:
                return
            if n in stack:
                raise ValueError(f"cycle through {n}")
            for p in bound[n].values():
                visit(p, stack + (n,))
            seen.add(n)
            order.append(n)

        for n in self.nodes:
            if n in chosen:
                visit(n)
        return {n: bound[n] for n in order}

    def descendants(self, bound: Dict[str, Dict[str, str]], names: Iterable[str]) -> set:
        out = set(names)
        changed = True
        while changed:
            changed = False
            for n, parents in bound.items():
                if n not in out and any(p in out for p in parents.values()):
                    out.add(n)
                    changed = True
        return out
