"""Training-order effects without retraining (see ../shared/methods/order-effects.md).

One recorded reference run (``Record``, from ``record``), estimators registered behind one
interface (``registry``: ``estimate(name, record, orders) -> Estimate``), real retraining as ground
truth (``retrain``), the fidelity table (``fidelity``) and the clients of the interface: the order
study (``study.run_study``), curriculum design and memorization by position. Needs only torch (and
scipy for rank correlation and the linear assignment).
"""

from taylorlab.order.functional import AdamHP, FlatModel, adam_step  # noqa: F401
from taylorlab.order.trajectory import Trajectory, record, retrain, shared_prefix, validate_orders  # noqa: F401
from taylorlab.order.recorded import Record  # noqa: F401
from taylorlab.order.registry import Estimate, Estimator, estimate, register  # noqa: F401
from taylorlab.order import estimators  # noqa: F401  (registers the built-in estimators)
from taylorlab.order.fidelity import fidelity_table  # noqa: F401
