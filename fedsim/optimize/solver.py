"""Minimise an objective over the routing ``p`` (a simplex) and the concurrency ``C`` (integers).

Routing
    Clients of a group share one probability ``q_g``; the group masses ``pi_g = counts_g q_g``
    live on the simplex, parametrised by a softmax, ``pi = softmax(theta)``. At fixed ``C`` the
    solver minimises ``log B`` (scale-free, same minimiser) with L-BFGS (scipy) and the exact
    gradient of :func:`~fedsim.optimize.objective.bound_value_and_grad`, mapped through the
    softmax: ``d/dtheta = pi * (g - <pi, g>)`` with ``g_h = (dB/dq_h) / (counts_h B)``. The
    bound is infinite where some ``p_i = 0``, so the optimum is interior and the softmax loses
    nothing. Identical groups start identical and stay so: symmetric clients get uniform ``p``.
    The time and energy objectives maximise the efficiency ``R`` instead
    (:func:`~fedsim.optimize.objective.efficiency_and_grad`), finite even where the target is
    out of reach; ``B`` and the objectives below stand for whichever objective is optimised.

Concurrency
    ``phi(C) = min_p B(p, C)`` is explored in three steps, each warm-started from the routing
    found at the nearest concurrency:

    1. a geometric grid of about 24 values of ``C`` in ``[C_min, C_max]``, by increasing ``C``;
    2. the *envelope* ``E(C) = min_j B(p_j, C)`` over every routing ``p_j`` found so far, which
       costs one MVA pass per routing for *all* ``C`` at once and bounds ``phi`` from above:
       the solver re-optimises at the argmin of ``E`` until that argmin has been solved;
    3. integer descent: the routing is optimised precisely at the best ``C*`` and its
       neighbours ``C* +- 1`` (steps 1 and 2 stop earlier, at a gradient of 1e-7) until
       neither neighbour improves.

    For the per-update objective ``phi`` is non-decreasing, and the search ends at ``C_min``.

Cost: one evaluation of the bound and its gradient is two passes of ``O(C G)`` (``G`` groups);
n = 1,000 clients in a few groups with ``C`` up to 1,000 takes seconds (docs/optimization.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from fedsim.optimize.objective import (
    BoundConstants,
    BoundTerms,
    GroupNetwork,
    MvaPass,
    Objective,
    bound_terms,
    bound_value_and_grad,
    efficiency_grad_and_scale,
    objective_profile,
)

__all__ = ["Optimum", "RoutingOptimum", "max_throughput_routing", "optimise", "optimise_routing"]

GRID_POINTS = 24
MAX_ENVELOPE_ROUNDS = 30


@dataclass(frozen=True)
class RoutingOptimum:
    """The best routing at one concurrency: per-client probability ``q`` of each group, the
    objective's ``value`` there (``inf`` if a target is out of reach), the softmax logits
    ``theta`` and the L-BFGS iterations."""

    concurrency: int
    q: np.ndarray
    value: float
    theta: np.ndarray
    iterations: int


@dataclass(frozen=True)
class Optimum:
    """The optimum of an objective over ``p`` and ``C``, and how the search got there.

    ``solved`` maps every concurrency where the routing was optimised to its
    :class:`RoutingOptimum`; ``envelope[C - C_min]`` is ``min_j B(p_j, C)`` over those routings
    (an upper bound of ``min_p B(p, C)``, equal to it at solved points).
    """

    objective: Objective
    constants: BoundConstants
    network: GroupNetwork
    c_min: int
    c_max: int
    concurrency: int
    q: np.ndarray
    terms: BoundTerms
    solved: dict[int, RoutingOptimum]
    envelope: np.ndarray

    @property
    def p(self) -> np.ndarray:
        """Routing probability of every client."""
        return self.network.per_client(self.q)


def optimise_routing(network: GroupNetwork, C: int, constants: BoundConstants, objective: Objective,
                     theta0: np.ndarray | None = None, *, precise: bool = True) -> RoutingOptimum:
    """Minimise the objective over the routing at fixed ``C`` (L-BFGS on softmax logits).

    ``theta0`` are starting logits of the group masses (default: uniform ``p``). ``precise``
    stops at a gradient of 1e-11 (else ``1e-7``, enough to compare concurrencies). The bound
    objectives minimise ``log B``; the target objectives maximise the efficiency
    ``R = A / (eta J)`` (:func:`~fedsim.optimize.objective.efficiency_and_grad`), scaled by its
    upper bound at the start, which stays finite where the target is out of reach; the value is
    then ``inf`` if the best ``R`` is not positive.
    """
    counts = network.counts
    theta0 = np.log(counts) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    if network.groups == 1:
        q = network.uniform()
        return RoutingOptimum(C, q, bound_terms(network, q, C, constants, objective).value, theta0, 0)
    if objective.targets:
        scale = efficiency_grad_and_scale(network, _softmax(theta0) / counts, C, constants, objective)[2]

        def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
            pi = _softmax(theta)
            R, grad_q, _ = efficiency_grad_and_scale(network, pi / counts, C, constants, objective)
            g = -grad_q / (counts * scale)
            return -R / scale, pi * (g - pi @ g)
    else:
        def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
            pi = _softmax(theta)
            value, grad_q = bound_value_and_grad(network, pi / counts, C, constants, objective)
            g = grad_q / (counts * value)
            return float(np.log(value)), pi * (g - pi @ g)

    res = _minimise(f, theta0, precise)
    theta = res.x - res.x.max()
    q = _softmax(theta) / counts
    if objective.targets:
        R = -float(res.fun) * scale
        value = constants.A / (constants.eta * R) if R > 0 else np.inf
    else:
        value = float(np.exp(res.fun))
    return RoutingOptimum(C, q, value, theta, int(res.nit))


def max_throughput_routing(network: GroupNetwork, C: int, theta0: np.ndarray | None = None) -> RoutingOptimum:
    """The routing that maximises the throughput ``lambda(p, C)`` (L-BFGS on ``-log lambda``,
    exact gradient by the adjoint pass). ``value`` is the throughput reached."""
    counts = network.counts
    theta0 = np.log(counts) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    zeros = np.zeros(network.groups)

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        pi = _softmax(theta)
        run = MvaPass(network, pi / counts, C)
        lam = float(run.lam[C])
        g = -run.gradient(C, zeros, 1.0) / (counts * lam)
        return -float(np.log(lam)), pi * (g - pi @ g)

    if network.groups == 1:
        return RoutingOptimum(C, network.uniform(), float(MvaPass(network, network.uniform(), C).lam[C]), theta0, 0)
    res = _minimise(f, theta0, precise=True)
    theta = res.x - res.x.max()
    return RoutingOptimum(C, _softmax(theta) / counts, float(np.exp(-res.fun)), theta, int(res.nit))


def _minimise(f, theta0: np.ndarray, precise: bool) -> optimize.OptimizeResult:
    tolerance = {"ftol": 1e-15, "gtol": 1e-11} if precise else {"ftol": 1e-11, "gtol": 1e-7}
    return optimize.minimize(f, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 2000, **tolerance})


def optimise(network: GroupNetwork, constants: BoundConstants, objective: Objective, *, c_min: int = 1,
             c_max: int | None = None) -> Optimum:
    """Minimise the bound jointly over the routing and the concurrency ``C`` in ``[c_min, c_max]``.

    ``c_max`` defaults to ``n`` (one task per client, AsyncSGD's usual setting).
    """
    c_max = network.n if c_max is None else int(c_max)
    c_min = int(c_min)
    if not 1 <= c_min <= c_max:
        raise ValueError(f"need 1 <= c_min <= c_max, got {c_min}, {c_max}")
    solved: dict[int, RoutingOptimum] = {}
    profiles: dict[int, np.ndarray] = {}
    precise: set[int] = set()

    def solve_at(C: int, polish: bool = False) -> RoutingOptimum:
        if C not in solved or (polish and C not in precise):
            start = C if C in solved else (min(solved, key=lambda c: abs(c - C)) if solved else None)
            solved[C] = optimise_routing(network, C, constants, objective,
                                         None if start is None else solved[start].theta, precise=polish)
            profiles[C] = objective_profile(network, solved[C].q, constants, objective, c_max)[c_min - 1:]
            if polish:
                precise.add(C)
        return solved[C]

    for C in np.unique(np.rint(np.geomspace(c_min, c_max, GRID_POINTS)).astype(int)):
        solve_at(int(C))
    if not any(np.isfinite(profile).any() for profile in profiles.values()):
        raise ValueError(f"no routing found reaches the target {objective.target:.6g} for any C in "
                         f"[{c_min}, {c_max}]: the variance and drift terms of the bound stay above it")
    for _ in range(MAX_ENVELOPE_ROUNDS):
        stacked = np.vstack([profiles[c] for c in solved])
        C_env = c_min + int(np.argmin(stacked.min(axis=0)))
        if C_env in solved:
            break
        solve_at(C_env)
    best = min(solved, key=lambda c: solved[c].value)
    while True:
        for C in (best - 1, best, best + 1):
            if c_min <= C <= c_max:
                solve_at(C, polish=True)
        new = min(solved, key=lambda c: solved[c].value)
        if new == best:
            break
        best = new
    envelope = np.vstack([profiles[c] for c in solved]).min(axis=0)
    opt = solved[best]
    return Optimum(objective=objective, constants=constants, network=network, c_min=c_min, c_max=c_max,
                   concurrency=best, q=opt.q, terms=bound_terms(network, opt.q, best, constants, objective),
                   solved=dict(sorted(solved.items())), envelope=envelope)


def _softmax(theta: np.ndarray) -> np.ndarray:
    e = np.exp(theta - theta.max())
    return e / e.sum()
