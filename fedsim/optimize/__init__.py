"""Optimal routing ``p`` and concurrency ``C`` for a loss bound of asynchronous SGD.

* :mod:`fedsim.optimize.objective`: the bound (with its derivation), the per-update, wall-clock,
  time, energy and time-energy objectives on the extended network, and their exact gradients
  through mean value analysis;
* :mod:`fedsim.optimize.solver`: L-BFGS over the routing simplex, a warm-started search over
  the integer concurrency;
* :mod:`fedsim.optimize.constants`: ``A, L, S`` estimated at the initial model;
* :mod:`fedsim.optimize.calibrate`: ``A, L, S`` fitted to the loss curves of pilot training runs.

Nothing here imports torch; estimating the constants from a model does, lazily.
"""

from fedsim.optimize.objective import (
    OBJECTIVES,
    TARGET_OBJECTIVES,
    BoundConstants,
    BoundTerms,
    GroupNetwork,
    Objective,
    bound_terms,
    bound_value_and_grad,
    efficiency_and_grad,
    mva_forward,
    objective_profile,
)
from fedsim.optimize.solver import Optimum, RoutingOptimum, max_throughput_routing, optimise, optimise_routing

__all__ = [
    "OBJECTIVES",
    "TARGET_OBJECTIVES",
    "BoundConstants",
    "BoundTerms",
    "GroupNetwork",
    "Objective",
    "Optimum",
    "RoutingOptimum",
    "bound_terms",
    "bound_value_and_grad",
    "efficiency_and_grad",
    "max_throughput_routing",
    "mva_forward",
    "objective_profile",
    "optimise",
    "optimise_routing",
]
