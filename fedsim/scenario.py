"""The scenario: one YAML file that fixes a whole experiment, parsed and validated in one place.

A :class:`Scenario` is immutable and fully checked; nothing downstream re-validates input.
Every problem raises :class:`~fedsim.errors.ScenarioError` naming the field path
(``clients[1].service.rate``) and what is allowed. The schema is documented field by field
in README.md; in short::

    name: two-speeds
    plugins: [mylaws]                              # optional: modules next to the file (fedsim.plugins)
    seed: 7
    concurrency: 10
    horizon: {updates: 200000}                     # or {time: 5000.0}; warmup: auto (default) or fixed
    routing: uniform                               # uniform | proportional | weights
    statistics: {batches: 20, confidence: 0.95}    # optional
    server: {service: {dist: exponential, rate: 40.0}}        # optional; absent = instantaneous
    server_power: {busy: 150.0, idle: 60.0}                   # optional, watts
    clients:
      - {group: fast, count: 5, service: {dist: exponential, rate: 4.0}}
      - group: slow
        count: 20
        service: {dist: lognormal, mean: 2.0, cv: 1.5}
        downlink: {dist: exponential, mean: 0.4, station: delay}   # optional; station: fifo | delay
        uplink: {dist: lognormal, mean: 1.2, cv: 0.8, station: fifo}
        power: {compute: 3.0, uplink: 1.5, downlink: 0.8, idle: 0.2}   # optional, watts
      - group: phones
        count: 40
        service: {dist: lognormal, mean: 0.4, cv: 1.0, per: step, steps: 5}   # per: task | step
        availability: {on: {dist: exponential, mean: 30.0}, off: {dist: exponential, mean: 10.0},
                       offline: pause}            # or {trace: traces/phones.csv, offline: drop}
        speed_profile: {period: 1440, factors: [1.0, 0.5, 0.8]}
        dropout: 0.05

The network: a task routed to client i visits ``downlink_i -> compute_i -> uplink_i ->
server``; links and the server are optional (absent: no delay), so a scenario with none of
them is the base model of asynchronous SGD. The core fields are parsed here; the larger
optional sections (``training:``, ``optimization:``) by their own modules, through the
registry of :mod:`fedsim.sections`. Field checks come from :mod:`fedsim.fields`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.behaviour import (
    BEHAVIOUR_FIELDS,
    Availability,
    SpeedProfile,
    exact_case,
    mean_service_times,
    parse_availability,
    parse_dropout,
    parse_service,
    parse_speed_profile,
    replayed,
    with_local_steps,
)
from fedsim.distributions import ServiceDistribution, make_distribution
from fedsim.errors import ScenarioError
from fedsim.fields import check_int, check_mapping, check_number, check_str
from fedsim.inputs import INT64_MAX, load_yaml_file
from fedsim.paths import apply_overrides
from fedsim.plugins import load_plugins
from fedsim.routing import ROUTING_POLICIES, routing_probabilities
from fedsim.sections import SECTIONS, ScenarioDraft, provided_routings

CORE_FIELDS = ("name", "seed", "concurrency", "horizon", "routing", "statistics", "clients", "server",
               "server_power", "plugins")
GROUP_FIELDS = ("group", "count", "service", "routing_weight", "downlink", "uplink", "power") + BEHAVIOUR_FIELDS
LINKS = ("downlink", "uplink")
STATION_KINDS = ("fifo", "delay")
DEFAULT_LINK_KIND = "delay"
WARMUP_AUTO = "auto"
MAX_SEED = INT64_MAX
MAX_CLIENTS = 10_000_000
"""Most clients in a scenario (per-client arrays are built while it is parsed)."""
"""Largest scenario seed: seeds are stored as 64-bit integers (results tables, Parquet)."""


@dataclass(frozen=True)
class Station:
    """A station of the network that tasks visit: its service law and its discipline.

    ``kind`` is ``fifo`` (one server, first come first served: tasks queue) or ``delay`` (an
    infinite-server station: every task is delayed independently by a draw of ``law``, as a
    link whose transfers do not queue).
    """

    law: ServiceDistribution
    kind: str = "fifo"

    def to_spec(self) -> dict[str, Any]:
        """The station in the YAML schema (the law's fields and ``station``)."""
        return self.law.to_spec() | {"station": self.kind}


@dataclass(frozen=True)
class ClientPower:
    """Power (watts) a client draws: while computing, per uplink or downlink transfer in
    progress, and while not computing (``idle``)."""

    compute: float = 0.0
    uplink: float = 0.0
    downlink: float = 0.0
    idle: float = 0.0


@dataclass(frozen=True)
class ServerPower:
    """Power (watts) the server draws while applying an update (``busy``) and otherwise."""

    busy: float = 0.0
    idle: float = 0.0


@dataclass(frozen=True)
class ClientGroup:
    """``count`` identical clients sharing a compute law, routing weight, links, power and
    behaviour (:mod:`fedsim.behaviour`).

    ``service`` is the law of a task's compute time (with ``per: step``, a
    :class:`~fedsim.behaviour.StepSum` of the step law). ``dropout`` is 0 when not given.
    """

    name: str
    count: int
    service: ServiceDistribution
    routing_weight: float | None = None
    downlink: Station | None = None
    uplink: Station | None = None
    power: ClientPower | None = None
    availability: Availability | None = None
    speed_profile: SpeedProfile | None = None
    dropout: float = 0.0

    @property
    def behaves(self) -> bool:
        """True when the clients go offline, change speed or drop tasks."""
        return self.availability is not None or self.speed_profile is not None or self.dropout > 0

    def to_dict(self) -> dict[str, Any]:
        """The group in the YAML schema."""
        out: dict[str, Any] = {"group": self.name, "count": self.count, "service": self.service.to_spec()}
        if self.routing_weight is not None:
            out["routing_weight"] = self.routing_weight
        for link in LINKS:
            station = getattr(self, link)
            if station is not None:
                out[link] = station.to_spec()
        if self.power is not None:
            out["power"] = vars(self.power).copy()
        if self.availability is not None:
            out["availability"] = self.availability.to_dict()
        if self.speed_profile is not None:
            out["speed_profile"] = self.speed_profile.to_dict()
        if self.dropout > 0:
            out["dropout"] = self.dropout
        return out


@dataclass(frozen=True)
class Horizon:
    """When the run stops and how much of its start is discarded.

    Exactly one of ``updates`` (stop after that many applied updates) and ``time`` (stop at
    that simulated time) is set. ``warmup`` is in the same unit: updates whose index is below
    it, or that complete before that time, are left out of every statistic. ``None`` (the
    default, ``warmup: auto``) lets the tracker choose the warm-up from the run itself
    (MSER-5, :mod:`fedsim.outputanalysis`).
    """

    updates: int | None
    time: float | None
    warmup: float | None


@dataclass(frozen=True)
class Statistics:
    """Batch-means settings: at least ``batches`` batches (at most twice as many) and the CI level."""

    batches: int = 20
    confidence: float = 0.95


@dataclass(frozen=True)
class Scenario:
    """A validated experiment: the network (clients, links, server, routing, concurrency), its
    horizon and seed, and its optional sections (``training``, ``optimization``, ...)."""

    name: str
    seed: int
    concurrency: int
    horizon: Horizon
    routing: str
    groups: tuple[ClientGroup, ...]
    statistics: Statistics = Statistics()
    server: Station | None = None
    server_power: ServerPower | None = None
    sections: Mapping[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()  # modules imported before the scenario was parsed (fedsim.plugins)
    source: Path | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def training(self) -> Any:
        """The ``training:`` section (a :class:`~fedsim.training.config.TrainingConfig`) or None."""
        return self.sections.get("training")

    @property
    def optimization(self) -> Any:
        """The ``optimization:`` section (an :class:`~fedsim.optimize.config.OptimizationSpec`) or None."""
        return self.sections.get("optimization")

    @cached_property
    def n_clients(self) -> int:
        return sum(g.count for g in self.groups)

    @cached_property
    def client_group(self) -> np.ndarray:
        """Group index of every client (clients are numbered group after group)."""
        return np.repeat(np.arange(len(self.groups)), [g.count for g in self.groups])

    @cached_property
    def p(self) -> np.ndarray:
        """Routing probabilities p_i of the scenario's policy (sum to one)."""
        return routing_probabilities(self.routing, self.groups)

    @cached_property
    def mean_service(self) -> np.ndarray:
        """E[S_i] for every client (of a whole task; a replayed trace's own mean per client)."""
        return np.concatenate([mean_service_times(g.service, g.count) for g in self.groups])

    @cached_property
    def mu(self) -> np.ndarray:
        """Service rates mu_i = 1 / E[S_i]."""
        return 1.0 / self.mean_service

    @property
    def extended(self) -> bool:
        """True when a link or the server takes time: the extended network, not the base model."""
        return self.server is not None or any(getattr(g, link) is not None for g in self.groups for link in LINKS)

    @property
    def behaves(self) -> bool:
        """True when some clients go offline, change speed or drop tasks (:mod:`fedsim.behaviour`)."""
        return any(g.behaves for g in self.groups)

    @property
    def exact(self) -> bool:
        """True when the product-form analysis is exact: every FIFO station (compute, FIFO links,
        the server) is exponential; delay stations may have any law (insensitivity). With client
        behaviour, only in the cases of :func:`~fedsim.behaviour.exact_case`."""
        if self.behaves:
            return exact_case(self) is not None
        fifo = [g.service for g in self.groups]
        fifo += [s.law for g in self.groups for s in (g.downlink, g.uplink) if s is not None and s.kind == "fifo"]
        fifo += [self.server.law] if self.server is not None else []
        return all(law.name == "exponential" for law in fifo)

    def services(self) -> list[ServiceDistribution]:
        """The compute law of every client."""
        return [self.groups[g].service for g in self.client_group]

    def to_dict(self) -> dict[str, Any]:
        """The scenario as parsed, defaults filled in, in the YAML schema (for summary.json)."""
        horizon: dict[str, Any]
        h = self.horizon
        warmup = WARMUP_AUTO if h.warmup is None else int(h.warmup) if h.updates is not None else h.warmup
        horizon = {"updates": h.updates} if h.updates is not None else {"time": h.time}
        horizon["warmup"] = warmup
        out: dict[str, Any] = {"plugins": list(self.plugins)} if self.plugins else {}
        out |= {
            "name": self.name,
            "seed": self.seed,
            "concurrency": self.concurrency,
            "horizon": horizon,
            "routing": self.routing,
            "statistics": {"batches": self.statistics.batches, "confidence": self.statistics.confidence},
        }
        if self.server is not None:
            out["server"] = {"service": self.server.law.to_spec()}
        if self.server_power is not None:
            out["server_power"] = vars(self.server_power).copy()
        out["clients"] = [g.to_dict() for g in self.groups]
        return out | {name: value.to_dict() for name, value in self.sections.items()}


def _parse_horizon(raw: Any) -> Horizon:
    h = check_mapping(raw, "horizon", ("updates", "time", "warmup"))
    if ("updates" in h) == ("time" in h):
        raise ScenarioError("horizon", "give exactly one of updates (an integer) or time (a number)")
    raw_warmup = h.get("warmup", WARMUP_AUTO)
    if isinstance(raw_warmup, str) and raw_warmup != WARMUP_AUTO:
        raise ScenarioError("horizon.warmup", f"must be {WARMUP_AUTO} or a number below the horizon, got {raw_warmup!r}")
    auto = raw_warmup == WARMUP_AUTO
    if "updates" in h:
        updates = check_int(h["updates"], "horizon.updates", 1)
        warmup = None if auto else check_int(raw_warmup, "horizon.warmup", 0)
        if warmup is not None and warmup >= updates:
            raise ScenarioError("horizon.warmup", f"must be below horizon.updates ({updates}), got {warmup}")
        return Horizon(updates=updates, time=None, warmup=warmup)
    time = check_number(h["time"], "horizon.time", positive=True)
    warmup_t = None if auto else check_number(raw_warmup, "horizon.warmup", low=0.0)
    if warmup_t is not None and warmup_t >= time:
        raise ScenarioError("horizon.warmup", f"must be below horizon.time ({time}), got {warmup_t}")
    return Horizon(updates=None, time=time, warmup=warmup_t)


def _parse_station(raw: Any, path: str, base_dir: Path | None) -> Station:
    """A link: a service-law mapping with an optional ``station: fifo | delay`` (default delay)."""
    if not isinstance(raw, Mapping):
        raise ScenarioError(path, f"must be a mapping such as {{dist: exponential, mean: 0.5, station: delay}}, "
                            f"got {raw!r}")
    kind = raw.get("station", DEFAULT_LINK_KIND)
    if kind not in STATION_KINDS:
        raise ScenarioError(f"{path}.station", f"must be one of {', '.join(STATION_KINDS)}, got {kind!r}")
    law = make_distribution({k: v for k, v in raw.items() if k != "station"}, path, base_dir)
    return Station(law=law, kind=kind)


def _parse_power(raw: Any, path: str, cls: type) -> Any:
    """A power mapping (watts, each >= 0, missing ones 0) into ``cls``."""
    names = tuple(cls.__dataclass_fields__)
    spec = check_mapping(raw, path, names)
    return cls(**{k: check_number(v, f"{path}.{k}", low=0.0) for k, v in spec.items()})


def _parse_server(raw: Any, base_dir: Path | None) -> Station:
    spec = check_mapping(raw, "server", ("service",))
    if "service" not in spec:
        raise ScenarioError("server.service", "missing; give e.g. {dist: exponential, rate: 40.0}")
    return Station(law=make_distribution(spec["service"], "server.service", base_dir), kind="fifo")


def _parse_groups(raw: Any, base_dir: Path | None) -> tuple[ClientGroup, ...]:
    if not isinstance(raw, list) or not raw:
        raise ScenarioError("clients", "must be a non-empty list of client groups")
    groups = []
    names: set[str] = set()
    for k, item in enumerate(raw):
        path = f"clients[{k}]"
        g = check_mapping(item, path, GROUP_FIELDS)
        name = check_str(g.get("group", f"group{k}"), f"{path}.group")
        if name in names:
            raise ScenarioError(f"{path}.group", f"duplicate group name {name!r}; group names must be unique")
        names.add(name)
        count = check_int(g.get("count", 1), f"{path}.count", 1)
        if "service" not in g:
            raise ScenarioError(f"{path}.service", "missing; give e.g. {dist: exponential, rate: 1.0}")
        service = parse_service(g["service"], f"{path}.service", base_dir)
        weight = None
        if "routing_weight" in g:
            weight = check_number(g["routing_weight"], f"{path}.routing_weight", low=0.0)
        links = {link: _parse_station(g[link], f"{path}.{link}", base_dir) for link in LINKS if link in g}
        power = _parse_power(g["power"], f"{path}.power", ClientPower) if "power" in g else None
        behaviour: dict[str, Any] = {}
        if g.get("availability") is not None:
            behaviour["availability"] = parse_availability(g["availability"], f"{path}.availability", base_dir)
        if g.get("speed_profile") is not None:
            behaviour["speed_profile"] = parse_speed_profile(g["speed_profile"], f"{path}.speed_profile")
        if "dropout" in g:
            behaviour["dropout"] = parse_dropout(g["dropout"], f"{path}.dropout")
        groups.append(ClientGroup(name=name, count=count, service=service, routing_weight=weight, power=power,
                                  **links, **behaviour))
    total = sum(g.count for g in groups)
    if total > MAX_CLIENTS:
        raise ScenarioError("clients", f"{total:,} clients in all, above the limit of {MAX_CLIENTS:,}")
    return tuple(groups)


def _check_training_behaviour(groups: tuple[ClientGroup, ...], training: Any) -> None:
    """Client behaviour needs the asynchronous engine: a round-based rule (FedAvg) refuses it."""
    if not getattr(training, "synchronous", False):
        return
    for k, g in enumerate(groups):
        given = {"availability": g.availability is not None, "speed_profile": g.speed_profile is not None,
                 "dropout": g.dropout > 0}
        for name in BEHAVIOUR_FIELDS:
            if given[name]:
                raise ScenarioError(f"clients[{k}].{name}", "not supported with a round-based rule (fedavg runs "
                                    "rounds outside the asynchronous engine); remove it or use an asynchronous rule")
        if replayed(g.service):
            raise ScenarioError(f"clients[{k}].service.dist", "trace replays durations in the asynchronous engine; "
                                "fedavg takes a law (empirical resamples measured durations)")


def parse_scenario(raw: Any, base_dir: Path | None = None, source: Path | None = None) -> Scenario:
    """Validate a scenario given as a mapping (the YAML document) and build the Scenario.

    ``base_dir`` resolves relative file paths (empirical service times, datasets) and is where
    the modules of ``plugins:`` are looked up first; they are imported before anything else is
    parsed, so that what they register (laws, routings, sections, ...) is known.
    """
    plugins = load_plugins(raw.get("plugins") if isinstance(raw, Mapping) else None, base_dir)
    doc = check_mapping(raw, "", CORE_FIELDS + tuple(SECTIONS))
    provider = provided_routings().get(doc.get("routing"))  # a section then chooses the concurrency
    for required in ("name", "horizon", "clients") + (() if provider else ("concurrency",)):
        if required not in doc:
            raise ScenarioError(required, "missing required field")
    name = check_str(doc["name"], "name")
    seed = check_int(doc.get("seed", 0), "seed", 0, MAX_SEED)
    if provider and "concurrency" in doc:
        raise ScenarioError("concurrency", f"chosen by routing {doc['routing']}; remove it "
                            f"({provider}.concurrency: {{min, max}} bounds the search)")
    concurrency = None if provider else check_int(doc["concurrency"], "concurrency", 1)
    horizon = _parse_horizon(doc["horizon"])
    groups = _parse_groups(doc["clients"], base_dir)
    has_weights = any(g.routing_weight is not None for g in groups)
    routing = check_str(doc.get("routing", "weights" if has_weights else "uniform"), "routing")
    if routing not in ROUTING_POLICIES and not provider:
        allowed = ", ".join(sorted(ROUTING_POLICIES) + list(provided_routings()))
        raise ScenarioError("routing", f"unknown routing {routing!r}; allowed: {allowed}")
    if has_weights and routing != "weights":
        k = next(k for k, g in enumerate(groups) if g.routing_weight is not None)
        raise ScenarioError(f"clients[{k}].routing_weight", f"only used with routing: weights (routing is {routing!r})")
    stats_raw = check_mapping(doc.get("statistics", {}), "statistics", ("batches", "confidence"))
    statistics = Statistics(
        batches=check_int(stats_raw.get("batches", Statistics.batches), "statistics.batches", 2),
        confidence=check_number(stats_raw.get("confidence", Statistics.confidence), "statistics.confidence",
                                low=0.5, high=0.9999),
    )
    server = _parse_server(doc["server"], base_dir) if doc.get("server") is not None else None
    server_power = None
    if doc.get("server_power") is not None:
        if server is None:
            raise ScenarioError("server_power", "needs a server: give server: {service: ...} too")
        server_power = _parse_power(doc["server_power"], "server_power", ServerPower)
    draft = ScenarioDraft(name=name, seed=seed, concurrency=concurrency, horizon=horizon, routing=routing,
                          groups=groups, server=server, base_dir=base_dir)
    for section in SECTIONS.values():
        if doc.get(section.name) is not None or routing in section.routings:
            value = section.parser()(doc.get(section.name), draft)
            if value is not None:
                draft.sections[section.name] = value
            if section.name == "training" and value is not None:
                _check_training_behaviour(draft.groups, value)
                draft.groups = with_local_steps(draft.groups, value.algorithm.kwargs.get("local_steps", 1))
    scenario = Scenario(name=name, seed=seed, concurrency=draft.concurrency, horizon=horizon, routing=draft.routing,
                        groups=draft.groups, statistics=statistics, server=server, server_power=server_power,
                        sections=draft.sections, plugins=plugins, source=source, raw=dict(doc))
    scenario.p  # noqa: B018 -- resolve the routing now so that all-zero weights fail at parse time
    return scenario


def load_scenario(path: str | Path, overrides: Mapping[str, Any] | None = None, where: str = "") -> Scenario:
    """Read and validate a scenario YAML file, with ``overrides`` (field path -> value) set on
    its mapping first (errors on them name ``where`` + the path, e.g. ``--set concurrency``).

    The file is read within the limits of :mod:`fedsim.inputs` (a regular UTF-8 file of at
    most 4 MiB, safe YAML with bounded nesting and alias expansion).
    """
    path = Path(path)
    raw = load_yaml_file(path, "scenario file")
    if not overrides:
        return parse_scenario(raw, base_dir=path.parent, source=path)
    raw = apply_overrides(raw, overrides, where)
    try:
        return parse_scenario(raw, base_dir=path.parent, source=path)
    except ScenarioError as err:  # a value an override set: name it as the override
        if where and any(err.path == p or err.path.startswith((f"{p}.", f"{p}[")) for p in overrides):
            raise ScenarioError(f"{where}{err.path}", err.message) from None
        raise


class Streams:
    """One independent random stream per purpose, all spawned from the scenario seed.

    Stream k is ``Generator(PCG64(SeedSequence(seed, spawn_key=(k,))))``: adding a purpose
    never changes the others, so the queueing sample path (``service``, ``routing``) is the
    same with and without training. The extended network's stations draw from ``downlink``
    and ``uplink`` (one child per client), ``server``, and ``ties`` (one child per station
    with an atomic law), appended last so that the earlier streams are unchanged; client
    behaviour draws from ``availability`` (on and off periods, one child per client, each with
    a child per law) and ``dropout`` (one child per client), appended after them.
    """

    PURPOSES = ("service", "routing", "training", "downlink", "uplink", "server", "ties", "availability", "dropout")

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def seed_sequence(self, purpose: str) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.seed, spawn_key=(self.PURPOSES.index(purpose),))

    def generator(self, purpose: str) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(self.seed_sequence(purpose)))

    def per_client(self, purpose: str, n: int) -> list[np.random.Generator]:
        """n independent generators, one per client, for ``purpose``."""
        return [np.random.Generator(np.random.PCG64(s)) for s in self.seed_sequence(purpose).spawn(n)]
