"""What the results page says of each estimator, in plain words, and which of its numbers it draws.

An estimate is *absurd* when it is not finite, is a negative loss, or is further than
``ABSURD_NATS`` from the true loss (a perplexity off by more than e^10, four orders of magnitude):
such estimates are counted and flagged in the table and kept off the scatter, so its axes stay
on the scale of the truth. An estimator whose losses are right only up to a shift (``relative_loss``:
it predicts how orders differ, not the loss itself) is drawn relative: shifted so its median meets
the truth's.

Verdicts: ``baseline`` (the "no change" row), ``ranks`` (Spearman against retraining at least
``RANKS_AT``, no absurd estimate, its own self-check within range), ``does not rank`` (with the
reason), ``not checked`` (fewer than 3 retrained random orders, or a constant estimate).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Optional

ABSURD_NATS = 10.0
RANKS_AT = 0.9
SELF_CHECK_WARN = 0.5  # the stages' warning threshold (taylorlab.stages.common.LINEARISATION_WARN)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def judge(E: Dict[str, Any]) -> Dict[str, Any]:
    """``E``: an estimates.json. Returns {"flags", "verdicts", "plot"} to embed beside it."""
    orders = E.get("orders") or []
    kinds = E.get("estimators") or {}
    rand = [o for o in orders if str(o.get("order_name", "")).startswith("random-")]
    sens = [s.get("spearman_true_vs_perturbed") for s in E.get("sensitivity") or []]
    unstable = any(_finite(x) and x < 0.9 for x in sens)
    flags, verdicts, plot = {}, {}, {}
    for row in E.get("fidelity") or []:
        name = row["estimator"]
        kind = kinds.get(name, {})
        # estimates.json written before the flag existed: every loss-only estimator was relative
        relative = bool(kind.get("relative", kind.get("gives_params") is False))
        est = [o.get(f"{name}_loss") for o in orders]
        true = [o.get("true_loss") for o in orders]
        shift = 0.0
        if relative:
            fin = [e for e in est if _finite(e)]
            tru = [t for t in true if _finite(t)]
            shift = statistics.median(tru) - statistics.median(fin) if fin and tru else 0.0
        nonfinite = sum(1 for e in est if not _finite(e))
        negative = sum(1 for e in est if _finite(e) and e < 0 and not relative)
        far = sum(1 for e, t in zip(est, true) if _finite(e) and _finite(t) and abs(e + shift - t) > ABSURD_NATS)
        flags[name] = {"nonfinite": nonfinite, "negative": negative, "far": far,
                       "absurd": nonfinite + negative + far, "relative": relative}
        plot[name] = [None if not (_finite(e) and _finite(t)) or abs(e + shift - t) > ABSURD_NATS
                      or (e < 0 and not relative) else e + shift for e, t in zip(est, true)]
        verdicts[name] = _verdict(name, row, kind, flags[name], E.get("linearisation", {}).get(name), len(rand),
                                  unstable)
    return {"flags": flags, "verdicts": verdicts, "plot": plot}


def _verdict(name, row, kind, flag, selfcheck, k: int, unstable: bool) -> Dict[str, str]:
    if kind.get("baseline"):
        return {"verdict": "baseline", "why": "the reference run's own result for every order"}
    rho = row.get("spearman")
    if k < 3 or not _finite(rho):
        return {"verdict": "not checked",
                "why": "fewer than 3 retrained random orders" if k < 3 else "a constant estimate has no ranking"}
    reasons = []
    if flag["absurd"]:
        reasons.append(f"{flag['absurd']} absurd estimate(s)")
    med = (selfcheck or {}).get("median_first_order", (selfcheck or {}).get("median_residual"))
    if _finite(med) and med > SELF_CHECK_WARN:
        reasons.append(f"its self-check misses {100 * med:.0f}% of the gradient change")
    if rho < RANKS_AT:
        reasons.insert(0, f"Spearman {rho:.2f} < {RANKS_AT}")
    tail = "; the truth itself re-ranks under a tiny nudge here" if unstable else ""
    if reasons:
        return {"verdict": "does not rank", "why": "; ".join(reasons) + tail}
    return {"verdict": "ranks", "why": f"Spearman {rho:.2f} against retraining" + tail}


def summary_lines(E: Dict[str, Any], verdicts: Dict[str, Dict[str, str]]) -> List[str]:
    """One plain line per estimator (for the terminal summary)."""
    return [f"{n}: {v['verdict']} ({v['why']})" for n, v in verdicts.items()]


def pruned_model_kind(model_stage: Optional[str]) -> str:
    """Which model a pruning row pruned, from its model stage's node name."""
    node = (model_stage or "").rpartition("-")[0]
    return {"train": "trained", "base_model": "base"}.get(node, node or "?")
