"""Colours for the registered pruning methods and order estimators, in registry order, so a newly
registered one gets its own colour on the page and in the figures without an edit here."""

from __future__ import annotations

from typing import Dict

from taylorlab.order import registry as order_registry
from taylorlab.pruning import registry as pruning_registry

# matplotlib's tab10 without its grey (kept for the baselines)
_PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
BASELINE = "#000000"
NO_CHANGE = "#999999"


def method_colors() -> Dict[str, str]:
    """{"dense": black, method: colour} for every registered pruning method."""
    names = pruning_registry.names()
    return {"dense": BASELINE, **{n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}}


def estimator_colors() -> Dict[str, str]:
    """{estimator: colour}; the "no change" baseline (an estimator that changes nothing) in grey."""
    out = {}
    i = 0
    for name in order_registry.names():
        if order_registry.get(name).baseline:
            out[name] = NO_CHANGE
        else:
            out[name] = _PALETTE[i % len(_PALETTE)]
            i += 1
    return out
