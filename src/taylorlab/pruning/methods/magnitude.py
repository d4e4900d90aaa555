"""Magnitude: |W|, the lowest pruned per matrix (per N:M group with a pattern); no calibration."""

from taylorlab.pruning.registry import LayerTask, Method, register


def prune_layer(task: LayerTask) -> None:
    task.apply_scores(task.weight.abs().float(), per_row=False)


METHOD = register(Method("magnitude", prune_layer, needs_calibration=False,
                         rank=10, summary="|W|, lowest pruned per matrix; weights only"))
