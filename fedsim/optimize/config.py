"""The ``optimization:`` section of a scenario, and optimal routing resolved at parse time.

::

    routing: optimal-wall-clock        # or optimal-per-update; then no `concurrency` field
    optimization:
      A: 2.3          # bound on f(w_0) - f*
      L: 5.0          # smoothness
      S: 40.0         # second moment of a client's stochastic gradient
      eta: 0.05       # step size (default: the training section's learning rate)
      budget: 500.0   # T, simulated time, for the wall-clock objective
      updates: 20000  # K for the per-update objective
      target: 0.03    # eps, the bound value the time and energy objectives must reach
      weight: 0.5     # rho of the time-energy objective
      concurrency: {min: 1, max: 100}   # range searched for C (default 1..n)

``A``, ``L`` and ``S`` left out are estimated from the model and data of the ``training:``
section (:mod:`fedsim.optimize.constants`). ``budget`` defaults to ``horizon.time``;
``updates`` to ``horizon.updates``; the one the horizon does not give is converted with the
throughput of AsyncSGD's usual setting (uniform routing, ``C = n``). ``target`` defaults to the
bound that AsyncSGD's usual setting reaches at the budget, ``B(uniform, n; lambda T)``: the time
objective then asks how much sooner another setting gets as far, and AsyncSGD's time to the
target is the budget itself. ``weight`` defaults to 0.5.

``routing: optimal-per-update | optimal-wall-clock`` runs the optimiser while the scenario is
parsed. The parsed scenario then has concrete values: ``routing: weights`` with every group's
``routing_weight`` set to its optimal per-client probability, ``concurrency`` set to the optimal
``C``, and ``optimization.objective`` recording which objective chose them (with the
constants, estimated or not). ``Scenario.to_dict()`` therefore writes a file that
``fedsim run`` loads and reproduces without optimising again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.analytic import PowerModel
from fedsim.errors import ScenarioError
from fedsim.fields import check_int, check_mapping, check_number
from fedsim.optimize.objective import (
    OBJECTIVES,
    OPTIMAL_ROUTINGS,
    BoundConstants,
    GroupNetwork,
    Objective,
    bound_terms,
    mva_forward,
)
from fedsim.optimize.solver import Optimum, optimise
from fedsim.scenario import ClientGroup, Horizon, Scenario, ServerPower, Station
from fedsim.sections import ScenarioDraft

__all__ = ["OptimizationSpec", "asyncsgd_bound", "complete_constants", "group_network", "parse_optimization",
           "parse_section", "resolve_optimal_routing", "with_default_target"]

FIELDS = ("A", "L", "S", "eta", "budget", "updates", "target", "weight", "concurrency", "objective")
CONSTANTS = ("A", "L", "S")
DEFAULT_WEIGHT = 0.5


@dataclass(frozen=True)
class OptimizationSpec:
    """The parsed ``optimization:`` section. ``A, L, S, eta`` are None until given or estimated;
    ``target`` is None until given or set to its default (:func:`with_default_target`)."""

    A: float | None
    L: float | None
    S: float | None
    eta: float | None
    budget: float
    updates: float
    c_min: int
    c_max: int
    objective: str | None = None
    target: float | None = None
    weight: float = DEFAULT_WEIGHT

    @property
    def complete(self) -> bool:
        return None not in (self.A, self.L, self.S, self.eta)

    @property
    def constants(self) -> BoundConstants:
        if not self.complete:
            raise ValueError("the bound's constants are not all known; see complete_constants()")
        return BoundConstants(A=self.A, L=self.L, S=self.S, eta=self.eta)

    def objective_named(self, name: str, budget: float | None = None, *, time_scale: float | None = None,
                        energy_scale: float | None = None) -> Objective:
        """The objective ``name`` with this section's ``updates`` (per-update), ``budget``
        (wall-clock; the argument ``budget`` replaces it) or ``target`` and ``weight`` (time,
        energy, time-energy; the last also needs the optima ``time_scale = T*`` and
        ``energy_scale = E*``)."""
        if name == "per-update":
            return Objective.per_update(self.updates)
        if name == "wall-clock":
            return Objective.wall_clock(self.budget if budget is None else budget)
        if self.target is None:
            raise ValueError("the target is not set; see with_default_target()")
        if name == "time-energy":
            return Objective.time_energy(self.target, self.weight, time_scale, energy_scale)
        return Objective(name, target=self.target)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in ("A", "L", "S", "eta") if getattr(self, k) is not None}
        out |= {"budget": self.budget, "updates": self.updates}
        if self.target is not None:
            out["target"] = self.target
        out |= {"weight": self.weight, "concurrency": {"min": self.c_min, "max": self.c_max}}
        if self.objective is not None:
            out["objective"] = self.objective
        return out


def group_network(groups: tuple[ClientGroup, ...], server: Station | None = None,
                  server_power: ServerPower | None = None) -> GroupNetwork:
    """The optimiser's view of the clients, their links and the server: per group, the count,
    the compute rate ``1 / E[S]``, the links' mean times and kinds; the server's mean time; the
    power model when a group or the server gives a positive power (missing values are 0 W)."""
    def link(name: str) -> tuple[np.ndarray, np.ndarray]:
        stations = [getattr(g, name) for g in groups]
        return (np.array([0.0 if s is None else s.law.mean for s in stations]),
                np.array([s is None or s.kind == "delay" for s in stations]))

    down, down_delay = link("downlink")
    up, up_delay = link("uplink")
    power = None
    if server_power is not None or any(g.power is not None for g in groups):
        watts = {k: np.array([0.0 if g.power is None else getattr(g.power, k) for g in groups])
                 for k in ("compute", "uplink", "downlink", "idle")}
        server_watts = server_power or ServerPower()
        if any(w.any() for w in watts.values()) or server_watts.busy or server_watts.idle:
            power = PowerModel(**watts, server_busy=server_watts.busy, server_idle=server_watts.idle)
    return GroupNetwork(counts=np.array([g.count for g in groups]), mu=np.array([g.service.rate for g in groups]),
                        downlink=down, downlink_delay=down_delay, uplink=up, uplink_delay=up_delay,
                        server=0.0 if server is None else server.law.mean, power=power)


def parse_optimization(raw: Any, groups: tuple[ClientGroup, ...], horizon: Horizon, server: Station | None = None,
                       path: str = "optimization") -> OptimizationSpec:
    """Check the section (``raw`` may be None: every field then takes its default)."""
    section: Mapping[str, Any] = check_mapping({} if raw is None else raw, path, FIELDS)
    values = {k: check_number(section[k], f"{path}.{k}", positive=True) if k in section else None
              for k in ("A", "L", "S", "eta")}
    n = sum(g.count for g in groups)
    c_range = check_mapping(section.get("concurrency", {}), f"{path}.concurrency", ("min", "max"))
    c_min = check_int(c_range.get("min", 1), f"{path}.concurrency.min", 1)
    c_max = check_int(c_range.get("max", max(n, c_min)), f"{path}.concurrency.max", c_min)
    objective = section.get("objective")
    if objective is not None and objective not in OBJECTIVES:
        raise ScenarioError(f"{path}.objective", f"must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    budget = check_number(section["budget"], f"{path}.budget", positive=True) if "budget" in section else None
    updates = check_number(section["updates"], f"{path}.updates", positive=True) if "updates" in section else None
    target = check_number(section["target"], f"{path}.target", positive=True) if "target" in section else None
    weight = check_number(section.get("weight", DEFAULT_WEIGHT), f"{path}.weight", low=0.0, high=1.0)
    if budget is None or updates is None:
        network = group_network(groups, server)
        baseline = float(mva_forward(network, network.uniform(), n)[0][-1])  # uniform routing, C = n
        if budget is None and horizon.time is not None:
            budget = horizon.time
        elif budget is None:
            budget = (updates if updates is not None else horizon.updates) / baseline
        if updates is None:
            updates = float(horizon.updates) if horizon.updates is not None else float(max(1, round(budget * baseline)))
    return OptimizationSpec(**values, budget=float(budget), updates=float(updates), c_min=c_min, c_max=c_max,
                            objective=objective, target=target, weight=weight)


def asyncsgd_bound(network: GroupNetwork, spec: OptimizationSpec, budget: float | None = None) -> float:
    """``B(uniform, n; lambda T)``: the bound AsyncSGD's usual setting (uniform routing, one task
    per client) reaches in the budget ``T``, the default target."""
    return bound_terms(network, network.uniform(), network.n, spec.constants,
                       spec.objective_named("wall-clock", budget)).total


def with_default_target(spec: OptimizationSpec, network: GroupNetwork) -> OptimizationSpec:
    """The section with ``target`` set to :func:`asyncsgd_bound` if it was not given."""
    if spec.target is not None:
        return spec
    return dataclasses.replace(spec, target=asyncsgd_bound(network, spec))


def complete_constants(spec: OptimizationSpec, training: Any, groups: tuple[ClientGroup, ...], seed: int,
                       path: str = "optimization") -> tuple[OptimizationSpec, Any]:
    """Fill the missing ``A, L, S`` (estimated from ``training``) and ``eta`` (its learning rate).

    Returns the completed section and the :class:`~fedsim.optimize.constants.ConstantEstimates`
    (None when nothing was estimated).
    """
    if spec.complete:
        return spec, None
    missing = [k for k in (*CONSTANTS, "eta") if getattr(spec, k) is None]
    if training is None:
        raise ScenarioError(f"{path}.{missing[0]}", "missing; give A, L, S and eta, or a training section "
                            "to estimate them from the model and data")
    estimates = None
    fill: dict[str, float] = {}
    if any(getattr(spec, k) is None for k in CONSTANTS):
        from fedsim.optimize.constants import estimate_constants

        # the data, partition and initial model depend only on the training section, the
        # clients and the seed: a scenario with any routing and concurrency builds the same
        start = Scenario(name="estimate", seed=seed, concurrency=1, horizon=Horizon(updates=1, time=None, warmup=0),
                         routing="uniform", groups=groups, sections={"training": training})
        estimates = estimate_constants(start)
        fill |= {k: getattr(estimates, k) for k in CONSTANTS if getattr(spec, k) is None}
    if spec.eta is None:
        fill["eta"] = float(training.algorithm["lr"])
    return dataclasses.replace(spec, **fill), estimates


def resolve_optimal_routing(routing: str, spec: OptimizationSpec, groups: tuple[ClientGroup, ...], training: Any,
                            seed: int, server: Station | None = None
                            ) -> tuple[OptimizationSpec, tuple[ClientGroup, ...], int, Optimum]:
    """Run the optimiser for ``routing: optimal-<objective>``.

    Returns the section (constants filled in, ``objective`` set), the groups with their optimal
    per-client probability as ``routing_weight``, the optimal concurrency, and the optimum.
    """
    name = routing.removeprefix("optimal-")
    if spec.objective not in (None, name):
        raise ScenarioError("optimization.objective", f"is {spec.objective!r} but routing is {routing!r}; "
                            "remove optimization.objective (fedsim records it)")
    spec, _ = complete_constants(spec, training, groups, seed)
    optimum = optimise(group_network(groups, server), spec.constants, spec.objective_named(name),
                       c_min=spec.c_min, c_max=spec.c_max)
    groups = tuple(dataclasses.replace(g, routing_weight=float(q)) for g, q in zip(groups, optimum.q))
    return dataclasses.replace(spec, objective=name), groups, optimum.concurrency, optimum


def parse_section(raw: Any, draft: ScenarioDraft) -> OptimizationSpec:
    """The ``optimization:`` section (see :mod:`fedsim.sections`); for ``routing: optimal-*`` it
    also runs the optimiser and gives the draft its concrete routing weights and concurrency."""
    spec = parse_optimization(raw, draft.groups, draft.horizon, draft.server)
    if draft.routing in OPTIMAL_ROUTINGS:
        spec, draft.groups, draft.concurrency, _ = resolve_optimal_routing(
            draft.routing, spec, draft.groups, draft.sections.get("training"), draft.seed, draft.server)
        draft.routing = "weights"
    return spec
