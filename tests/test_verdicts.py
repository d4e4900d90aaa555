"""The results page stays readable whatever an estimator returns: absurd estimates are counted,
flagged and kept off the scatter; loss-only estimators are drawn relative; every estimator row
carries a plain verdict."""

import json
import math

from taylorlab.engine.rundir import StageDir
from taylorlab.report.dashboard import collect
from taylorlab.report.verdicts import ABSURD_NATS, judge


def _estimates(K=8):
    true = [3.0 + 0.01 * k for k in range(K)]
    orders = []
    for k, t in enumerate(true):
        orders.append({"order_name": f"random-{k}", "order": list(range(4)), "true_loss": t,
                       "none_loss": 3.035, "good_loss": t + 0.001,
                       "wild_loss": (float("nan") if k == 0 else -1457.0 if k == 1 else t + 0.02 * (K - k)),
                       "additive_loss": -50.0 + 0.01 * k})
    fid = [{"estimator": "none", "spearman": float("nan")}, {"estimator": "good", "spearman": 1.0},
           {"estimator": "wild", "spearman": -0.3}, {"estimator": "additive", "spearman": 1.0}]
    kinds = {"none": {"gives_params": True, "baseline": True}, "good": {"gives_params": True, "baseline": False},
             "wild": {"gives_params": True, "baseline": False}, "additive": {"gives_params": False, "baseline": False}}
    return {"orders": orders, "fidelity": fid, "estimators": kinds, "sensitivity": [],
            "linearisation": {"good": {"median_residual": 0.2, "median_first_order": 0.2, "checks": []}}}


def test_absurd_estimates_are_flagged_and_kept_off_the_plot():
    J = judge(_estimates())
    assert J["flags"]["wild"]["nonfinite"] == 1 and J["flags"]["wild"]["negative"] == 1
    assert J["plot"]["wild"][0] is None and J["plot"]["wild"][1] is None and J["plot"]["wild"][2] is not None
    assert J["flags"]["good"]["absurd"] == 0 and None not in J["plot"]["good"]
    # loss-only: drawn relative, its median on the truth's; negative raw losses are not absurd then
    rel = J["plot"]["additive"]
    assert J["flags"]["additive"] == {"nonfinite": 0, "negative": 0, "far": 0, "absurd": 0, "relative": True}
    assert abs(sorted(rel)[len(rel) // 2] - sorted(o["true_loss"] for o in _estimates()["orders"])[4]) < 1e-9
    finite = [x for v in J["plot"].values() for x in v if x is not None]
    assert max(finite) - min(finite) < ABSURD_NATS * 2  # the scatter's axis stays on the truth's scale


def test_every_estimator_gets_a_plain_verdict():
    V = judge(_estimates())["verdicts"]
    assert V["none"]["verdict"] == "baseline"
    assert V["good"]["verdict"] == "ranks"
    assert V["wild"]["verdict"] == "does not rank" and "absurd" in V["wild"]["why"] and "Spearman -0.30" in V["wild"]["why"]
    E = _estimates()
    E["linearisation"]["good"]["median_first_order"] = 0.8
    assert judge(E)["verdicts"]["good"]["verdict"] == "does not rank"  # its self-check out of range
    E["orders"] = E["orders"][:2]
    assert judge(E)["verdicts"]["good"]["verdict"] == "not checked"


def test_the_page_data_carries_the_judgement_and_no_axis_spans_orders_of_magnitude(tmp_path):
    run = tmp_path / "run"
    sd = StageDir.of(run, "estimate", "abc123")
    sd.path.mkdir(parents=True)
    (sd.path / "estimates.json").write_text(json.dumps(_estimates(), allow_nan=True))
    sd.mark_done("abc123", {"stage": "estimate", "artifacts": {"estimates": "estimates.json"}})
    data = collect([run])
    (E,) = data["order_estimates"]
    plotted = [math.exp(x) for v in E["judged"]["plot"].values() for x in v if x is not None]
    assert math.log10(max(plotted) / min(plotted)) < 6
    assert E["judged"]["verdicts"]["wild"]["verdict"] == "does not rank"
