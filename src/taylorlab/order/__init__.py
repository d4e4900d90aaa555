"""Training-order effects without retraining (see ../shared/methods/order-effects.md).

One recorded reference run (``record``), estimators behind one interface (``ESTIMATORS``: ``none``
for "no change", ``fut`` — the paper's first-order recursion with frozen reference moments and a
secant diagonal Hessian — and ``fut-carry`` — gradients linearised with the new batch's exact
Hessian-vector product, Adam's moments and step computed exactly along the new order), real
retraining as ground truth (``retrain``) and the fidelity table (``fidelity``). Needs only torch
(and scipy for rank correlation).
"""

from taylorlab.order.functional import AdamHP, FlatModel, adam_step  # noqa: F401
from taylorlab.order.trajectory import Trajectory, record, retrain, shared_prefix, validate_orders  # noqa: F401
from taylorlab.order.estimators import ESTIMATORS, estimate  # noqa: F401
from taylorlab.order.fidelity import fidelity_table  # noqa: F401
