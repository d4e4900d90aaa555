"""The built-in order estimators, one module each, registered on import (a new estimator is a new
module here, found by name). x_t = (theta_t, m_t, v_t) is the reference run's optimiser state,
delta_t = gamma_t - theta_t the deviation of the queried order's run.

* ``none`` — "no change" (the baseline every table shows).
* ``fut`` / ``fut2`` — the paper's first- and second-order recursions.
* ``fut-carry`` — linearised gradients with Adam's moments and step exact along the new order.
* ``additive`` — the adjoint search surrogate: any order in O(T), its optimum proposed.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
