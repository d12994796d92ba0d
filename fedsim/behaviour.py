"""Client behaviour in a scenario: how much work a task is, when a client is online, how fast
it computes, and whether it loses its task. The schema values, parsed and validated here.

Fields of a client group (every one optional; absent, a client is always online, computes at
one speed, never loses a task, and a task is one draw of ``service``)::

    service: {dist: lognormal, mean: 2.0, cv: 1.0, per: step}   # per: task (default) | step
    availability:
      on:  {dist: exponential, mean: 30.0}     # lengths of the on periods (any service law)
      off: {dist: exponential, mean: 10.0}     # lengths of the off periods
      # or: trace: traces/phones.csv, period: 1440   (on-intervals per client, repeating)
      offline: pause                           # pause (default) | drop
    speed_profile: {period: 1440, factors: [1.0, 0.5, 0.8]}
    dropout: 0.05

- ``per: step``: the law is that of one local step, and a task is ``K`` steps, its compute time
  the sum of ``K`` independent draws (:class:`StepSum`). ``K`` is ``local_steps`` of the
  training rule when the scenario trains, else ``service.steps`` (default 1).
- ``availability``: a client alternates on and off periods, i.i.d. draws of ``on`` and ``off``
  (starting at time 0 at the beginning of an on period), or follows the on-intervals of a
  device trace (:mod:`fedsim.traces`). While it is off it computes nothing; ``offline: pause``
  keeps the work of the task in service and resumes it where it stopped, ``offline: drop``
  loses every task at the client (queued or in service) when it goes offline. Tasks sent to an
  offline client wait for it. Availability governs the compute station only (links keep their
  timing).
- ``speed_profile``: the period is cut into ``len(factors)`` equal segments; during segment k
  (times ``[r P + k P/m, r P + (k+1) P/m)``, every client of the group in phase) the client
  computes at ``factors[k]`` times its speed: a draw of the service law is an amount of work
  at speed 1, and a task with work ``w`` left needs ``w / f`` time at factor ``f``.
- ``dropout``: the probability that a task is lost when the client finishes computing it (the
  update never reaches the server).

A lost task is replaced by a new dispatch at once, so C tasks stay in circulation.

This module belongs to the core schema: it depends on :mod:`fedsim.errors`,
:mod:`fedsim.fields`, :mod:`fedsim.distributions` and :mod:`fedsim.traces` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.distributions import ReplayDurations, ServiceDistribution, make_distribution
from fedsim.errors import ScenarioError
from fedsim.fields import check_int, check_mapping, check_number
from fedsim.traces import OnIntervals, read_on_intervals

PER = ("task", "step")
OFFLINE = ("pause", "drop")
AVAILABILITY_FIELDS = ("on", "off", "trace", "period", "offline")
SPEED_FIELDS = ("period", "factors")
YAML_BOOLEAN_KEYS = {True: "on", False: "off"}
BEHAVIOUR_FIELDS = ("availability", "speed_profile", "dropout")
"""The group fields of client behaviour (``per`` and ``steps`` sit inside ``service``)."""
MARKOV_MAX_SWITCHING = 10
"""Most clients with on/off periods for which the C = 1 Markov chain is solved exactly (its
state space has n 2^m states, m the clients that switch)."""


class StepSum(ServiceDistribution):
    """The compute time of a task of ``steps`` local steps: the sum of ``steps`` i.i.d. draws
    of ``step`` (``per: step``).

    E[S] = K E[X], Var[S] = K Var[X], so cv(S) = cv(X) / sqrt(K); with exponential steps S is
    Erlang(K). ``sample`` draws ``size * K`` steps and sums consecutive runs of K, so with
    ``K = 1`` it gives the step law's own draws. The law is exponential (``name``) only when
    ``K = 1`` and the step law is. ``source`` says where K came from: ``service`` (the group's
    ``steps``), ``default`` (1, none given) or ``training`` (``local_steps``); :meth:`to_spec`
    writes ``steps`` only when the group gave it.
    """

    def __init__(self, step: ServiceDistribution, steps: int, source: str = "service") -> None:
        self.step = step
        self.steps = steps
        self.source = source
        self.atomic = step.atomic  # type: ignore[misc]
        self.name = step.name if steps == 1 else "step_sum"  # type: ignore[misc]

    @property
    def mean(self) -> float:
        return self.steps * self.step.mean

    @property
    def variance(self) -> float:
        return self.steps * self.step.variance

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.step.sample(rng, int(size) * self.steps).reshape(int(size), self.steps).sum(axis=1)

    def to_spec(self) -> dict[str, Any]:
        return self.step.to_spec() | {"per": "step"} | ({"steps": self.steps} if self.source == "service" else {})

    def describe(self) -> str:
        return f"{self.steps} x {self.step.describe()}"

    def __repr__(self) -> str:
        return f"StepSum({self.step!r}, steps={self.steps})"

    def _identity(self) -> tuple[Any, ...]:
        return (self.step, self.steps, self.source)


@dataclass(frozen=True)
class OnOff:
    """Alternating on and off periods, i.i.d. draws of ``on`` and ``off``."""

    on: ServiceDistribution
    off: ServiceDistribution

    @property
    def fraction(self) -> float:
        """Long-run fraction of time on, E[on] / (E[on] + E[off]) (renewal-reward theorem)."""
        return self.on.mean / (self.on.mean + self.off.mean)

    @property
    def exponential(self) -> bool:
        return self.on.name == "exponential" and self.off.name == "exponential"


@dataclass(frozen=True)
class Availability:
    """When the clients of a group are online: :class:`OnOff` laws or a trace
    (:class:`~fedsim.traces.OnIntervals`), and what happens to their tasks while offline."""

    schedule: OnOff | OnIntervals
    offline: str = "pause"

    @property
    def drop(self) -> bool:
        return self.offline == "drop"

    def fractions(self, count: int) -> np.ndarray:
        """Long-run fraction of time on of each of the group's ``count`` clients."""
        if isinstance(self.schedule, OnOff):
            return np.full(count, self.schedule.fraction)
        return np.array([self.schedule.fraction(k) for k in range(count)])

    def mean_on(self, count: int) -> np.ndarray:
        """Mean length of an on period of each client."""
        if isinstance(self.schedule, OnOff):
            return np.full(count, self.schedule.on.mean)
        return np.array([self.schedule.mean_on(k) for k in range(count)])

    def to_dict(self) -> dict[str, Any]:
        if isinstance(self.schedule, OnOff):
            out = {"on": self.schedule.on.to_spec(), "off": self.schedule.off.to_spec()}
        else:
            out = {"trace": self.schedule.file, "period": self.schedule.period}
        return out | {"offline": self.offline}


@dataclass(frozen=True)
class SpeedProfile:
    """Piecewise-constant speed factors: ``factors[k]`` during ``[r P + k P/m, r P + (k+1) P/m)``."""

    period: float
    factors: tuple[float, ...]

    @property
    def mean_factor(self) -> float:
        """Time-average of the factor over a period, (1/m) sum_k f_k: the long-run work a client
        that always has a task does per unit of time."""
        return float(np.mean(self.factors))

    def changes(self) -> tuple[tuple[float, float], ...]:
        """The segments' ``(start offset in the period, factor)``, consecutive equal factors merged."""
        m = len(self.factors)
        out: list[tuple[float, float]] = []
        for k, f in enumerate(self.factors):
            if not out or out[-1][1] != f:
                out.append((k * self.period / m, f))
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {"period": self.period, "factors": list(self.factors)}


def parse_service(raw: Any, path: str, base_dir: Path | None) -> ServiceDistribution:
    """A group's ``service``: its law, and with ``per: step`` a :class:`StepSum` of ``steps`` draws
    (``steps`` is replaced by the training rule's ``local_steps`` later, see :func:`with_local_steps`)."""
    if not isinstance(raw, Mapping):
        return make_distribution(raw, path, base_dir)  # its error message
    per = raw.get("per", "task")
    if per not in PER:
        raise ScenarioError(f"{path}.per", f"must be one of {', '.join(PER)}, got {per!r}")
    if "steps" in raw and per != "step":
        raise ScenarioError(f"{path}.steps", "only used with per: step (a task is that many local steps)")
    law = make_distribution({k: v for k, v in raw.items() if k not in ("per", "steps")}, path, base_dir)
    if per == "task":
        return law
    if "steps" not in raw:
        return StepSum(law, 1, "default")
    return StepSum(law, check_int(raw["steps"], f"{path}.steps", 1))


def with_local_steps(groups: tuple[Any, ...], local_steps: int) -> tuple[Any, ...]:
    """The groups with every ``per: step`` law taking ``local_steps`` steps (a scenario that
    trains); ``service.steps`` given as well is an error."""
    out = []
    for k, g in enumerate(groups):
        law = g.service
        if isinstance(law, StepSum) and law.source != "training":
            if law.source == "service":
                raise ScenarioError(f"clients[{k}].service.steps", "comes from training.algorithm.local_steps "
                                    "when the scenario trains; remove it")
            g = replace(g, service=StepSum(law.step, local_steps, "training"))
        out.append(g)
    return tuple(out)


def parse_availability(raw: Any, path: str, base_dir: Path | None) -> Availability:
    """``availability``: ``{on, off}`` laws or ``{trace, period}``, and ``offline``.

    YAML 1.1 reads the keys ``on`` and ``off`` as the booleans true and false; they are taken
    back as the names."""
    if isinstance(raw, Mapping):
        raw = {YAML_BOOLEAN_KEYS.get(k, k) if isinstance(k, bool) else k: v for k, v in raw.items()}
    spec = check_mapping(raw, path, AVAILABILITY_FIELDS)
    offline = spec.get("offline", "pause")
    if offline not in OFFLINE:
        raise ScenarioError(f"{path}.offline", f"must be one of {', '.join(OFFLINE)}, got {offline!r}")
    if "trace" in spec:
        for key in ("on", "off"):
            if key in spec:
                raise ScenarioError(f"{path}.{key}", "give either on and off laws or a trace, not both")
        period = None
        if "period" in spec:
            period = check_number(spec["period"], f"{path}.period", positive=True)
        return Availability(read_on_intervals(spec["trace"], f"{path}.trace", base_dir, period), offline)
    if "period" in spec:
        raise ScenarioError(f"{path}.period", "only used with trace (the length after which it repeats)")
    for key in ("on", "off"):
        if key not in spec:
            raise ScenarioError(f"{path}.{key}", "missing; give on and off laws (e.g. {dist: exponential, "
                                "mean: 30.0}) or a trace file")
    laws = {key: make_distribution(spec[key], f"{path}.{key}", base_dir) for key in ("on", "off")}
    return Availability(OnOff(**laws), offline)


def parse_speed_profile(raw: Any, path: str) -> SpeedProfile:
    """``speed_profile``: a positive ``period`` and a non-empty list of positive ``factors``."""
    spec = check_mapping(raw, path, SPEED_FIELDS)
    for key in SPEED_FIELDS:
        if key not in spec:
            raise ScenarioError(f"{path}.{key}", "missing; give e.g. {period: 1440, factors: [1.0, 0.5]}")
    period = check_number(spec["period"], f"{path}.period", positive=True)
    factors = spec["factors"]
    if not isinstance(factors, list) or not factors:
        raise ScenarioError(f"{path}.factors", f"must be a non-empty list of positive numbers, got {factors!r}")
    values = tuple(check_number(f, f"{path}.factors[{k}]", positive=True) for k, f in enumerate(factors))
    return SpeedProfile(period=period, factors=values)


def parse_dropout(raw: Any, path: str) -> float:
    """``dropout``: a probability in [0, 1)."""
    value = check_number(raw, path, low=0.0)
    if value >= 1.0:
        raise ScenarioError(path, f"must be a probability in [0, 1) (1 would lose every task), got {value}")
    return value


def replayed(law: ServiceDistribution) -> bool:
    """True when the law replays a trace of compute durations (per step or per task)."""
    return isinstance(law.step if isinstance(law, StepSum) else law, ReplayDurations)


def mean_service_times(law: ServiceDistribution, count: int) -> np.ndarray:
    """E[S] of a task at each of a group's ``count`` clients: the law's mean, or for a replayed
    trace the mean of each client's own sequence (times the steps of a task)."""
    step, steps = (law.step, law.steps) if isinstance(law, StepSum) else (law, 1)
    if isinstance(step, ReplayDurations):
        return steps * step.client_means(count)
    return np.full(count, law.mean)


def exact_case(scenario: Any) -> str | None:
    """The case in which the analysis of a scenario with client behaviour is exact, or None.

    Every case needs the base network (no link, no server, no power) and exponential tasks
    (``per: task``, or ``per: step`` with one step):

    - ``"dropout"``: always-on clients, each with any dropout and no speed profile. A lost task
      is replaced by a dispatch routed by p, exactly what an applied one is followed by, so the
      queues are the product-form network's; losses only thin the updates (independent coins).
    - ``"shared speed profile"``: always-on clients that all share one speed profile (any
      dropout). The network runs on the clock ``u(t) = int_0^t f``: a time change of the
      previous case, which counts staleness in updates and so leaves it unchanged.
    - ``"Markov chain (C = 1)"``: one task, exponential on/off periods (``pause`` or ``drop``)
      for at most :data:`MARKOV_MAX_SWITCHING` clients, no speed profile: the chain of the
      task's position and of every switching client's state, solved numerically.

    Elsewhere the analysis is the product-form approximation with effective rates
    (:mod:`fedsim.behaviour_analytic`).
    """
    groups = scenario.groups
    if scenario.extended or scenario.server_power is not None or any(g.power is not None for g in groups):
        return None
    if not all(g.service.name == "exponential" for g in groups):
        return None
    profiles = {g.speed_profile for g in groups}
    switching = [g for g in groups if g.availability is not None]
    if not switching:
        if profiles == {None}:
            return "dropout"
        return "shared speed profile" if len(profiles) == 1 else None
    if scenario.concurrency != 1 or profiles != {None}:
        return None
    if not all(isinstance(g.availability.schedule, OnOff) and g.availability.schedule.exponential for g in switching):
        return None
    return "Markov chain (C = 1)" if sum(g.count for g in switching) <= MARKOV_MAX_SWITCHING else None
