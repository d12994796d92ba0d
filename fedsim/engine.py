"""The SimPy model of asynchronous FL: the closed network of clients, links and the server.

C tasks circulate in a closed network. A task routed to client i visits ``downlink_i ->
compute_i -> uplink_i -> server``; the update is applied when the server finishes it (the
update counter t goes to t + 1), and the server dispatches a new task, carrying the new model,
to client j with probability p_j (independently of i). At time 0 the C tasks are dispatched
the same way, all with update index 0. The staleness of the update made by a task dispatched
at counter s and applied at counter t (before the increment) is tau = t - s: the number of
other updates applied between its dispatch and its own (Alahyane et al. 2025, §2; Leconte et
al. 2024). Compute and the server are single-server FIFO stations; a link is a FIFO station or
a *delay* station (infinite server: every transfer takes its own draw, none waits). Links and
the server are optional; a station that is not given takes no time.

Two implementations, one model:

- :class:`Engine` runs the **base model** (no link, no server, no power, continuous compute
  laws): clients are the only stations and the server applies an update the instant a client
  finishes. It is the fast path, kept to the fewest Python operations per update.
- :class:`~fedsim.stations.StationEngine` runs every other scenario: each station is an
  object (:mod:`fedsim.stations`) that hands a finished task to the next one. On a base
  scenario it gives the same sample path as :class:`Engine`, event for event (tested), so
  station-level features build on it without touching the fast path.

``Engine(scenario)`` picks the right one (:func:`needs_stations`).

Each station is event-driven: the end of its current service is a SimPy event in the shared
``simpy.Environment``, scheduled after the drawn service time, whose callback moves the task
on. A FIFO station has at most one service in progress, so it owns one event object and
re-arms it for every service instead of allocating a ``Timeout`` each time (the same place in
SimPy's schedule, so the same sample path; the SimPy internals this relies on are confined to
:mod:`fedsim.simkernel`). That is one scheduled event and one callback per station visit,
which keeps the engine within a small factor of a bare event loop (benchmarks/bench_engine.py);
a generator process per client with a ``Store`` queue costs several events and generator
resumes per task, and runs at about a quarter of this design's speed (0.11 against 0.40 of
the bare loop).

Random numbers: one stream per purpose and station (:class:`~fedsim.scenario.Streams`):
``service`` (compute, one child per client), ``routing``, ``downlink`` and ``uplink`` (one
child per client), ``server``, and ``ties`` (one child per station), so adding a link or a
server changes no other station's draws.

Simultaneous events (the tie rule, :mod:`fedsim.stations`): under a law with atoms
(deterministic, empirical) durations are kept on a decimal grid, so that sums of decimal
durations that are equal on paper are equal in the simulation, and events of the same instant
are taken in a uniformly random order drawn from the ``ties`` streams. Under continuous laws
two events coincide with probability zero and nothing is drawn.

The engine only moves tasks. What is observed attaches to it as observers:

- ``on_records(records)``: every ``RECORD_CHUNK`` completions (and at the end), the
  completion records as arrays (:class:`CompletionRecords`); statistics and traces use this,
  so that observing costs a few list appends per update;
- ``on_dispatch(task)`` / ``on_complete(task, update, now)``: per task, for observers that
  must act at the event itself (real training snapshots and applies models there);
- ``on_lost(task, now)`` / ``on_availability(client, online, now)``: client behaviour only
  (:mod:`fedsim.devices`): a task was lost (never applied; a replacement is dispatched at
  once), a client went online or offline;
- ``on_finish(engine)``: the run has ended.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from heapq import heappush
from typing import Any, Protocol

import numpy as np
import simpy

from fedsim.distributions import ServiceDistribution
from fedsim.scenario import Scenario, Streams
from fedsim.simkernel import NORMAL, armed_event, event_queue, trigger_urgent

ROUTING_BLOCK = 1 << 16
RECORD_CHUNK = 1 << 16

STAGES = ("downlink", "compute", "uplink", "server")
"""The stations a task visits, in order (:attr:`CompletionRecords.stages` columns)."""


class Task:
    """A model sent to a client: who serves it, and the update index and time of dispatch.

    ``payload`` is free for observers (for example the model version the task carries).
    ``stamps`` is set in the extended network only (:class:`~fedsim.stations.StationEngine`):
    for each of :data:`STAGES`, the time its service started and ended (a stage not visited
    yet, or not in the network, holds the dispatch time). The engine fills the fields one by
    one on a bare instance (``object.__new__``), which spares a Python ``__init__`` call per
    update.
    """

    __slots__ = ("client", "dispatch_update", "dispatch_time", "payload", "stamps")

    client: int
    dispatch_update: int
    dispatch_time: float
    payload: Any
    stamps: list[float]


@dataclass(frozen=True)
class CompletionRecords:
    """Consecutive completed tasks, in the order their updates were applied.

    Row k is the update with index ``first_update + k``: its client, the update index and
    time at which its task was dispatched, and its completion time (when the server applied
    it). Its staleness is ``apply - dispatch_update``.

    ``stages`` (extended network only, else None) has shape ``(k, 2 * len(STAGES))``: columns
    ``2 s`` and ``2 s + 1`` are the start and end of the task's service at stage ``s`` of
    :data:`STAGES`. The task arrived at stage ``s`` at the end of stage ``s - 1`` (at dispatch
    for the downlink) and waited until the start; a station not in the network starts and ends
    when the task arrives. The end of the server stage is ``completion_time``.
    """

    first_update: int
    client: np.ndarray
    dispatch_update: np.ndarray
    dispatch_time: np.ndarray
    completion_time: np.ndarray
    stages: np.ndarray | None = None

    @property
    def apply(self) -> np.ndarray:
        """Update index of every row."""
        return np.arange(self.first_update, self.first_update + len(self.client), dtype=np.int64)


class Observer(Protocol):
    """What an observer of the engine may implement (every hook is optional)."""

    def on_records(self, records: CompletionRecords) -> None:
        """A chunk of completions, in update order."""

    def on_dispatch(self, task: Task) -> None:
        """A task has just been sent to ``task.client``."""

    def on_complete(self, task: Task, update: int, now: float) -> None:
        """``task`` completed at time ``now``; its update gets index ``update`` (staleness
        ``update - task.dispatch_update``). Called before the server dispatches the next task."""

    def on_lost(self, task: Task, now: float) -> None:
        """``task`` was lost at time ``now`` (client behaviour, :mod:`fedsim.devices`): its
        update is never applied; a replacement is dispatched right after (``on_dispatch``)."""

    def on_availability(self, client: int, online: bool, now: float) -> None:
        """``client`` is online (or offline) from ``now`` on; every client with availability
        reports its state at time 0 when the engine is built, then each switch."""

    def on_finish(self, engine: Engine) -> None:
        """The run has ended; tasks still in the network are ``engine.in_flight()``."""


def _blocks(draw: Callable[[], np.ndarray]) -> Iterator[Any]:
    """Flatten an endless sequence of sampled blocks into one stream of Python numbers."""
    while True:
        yield from draw().tolist()


def service_times(law: ServiceDistribution, rng: np.random.Generator, block: int) -> Callable[[], float]:
    """The service-time stream of one station: ``next()`` draws from its own generator, in blocks."""
    return _blocks(lambda: law.sample(rng, block)).__next__


def routing_draws(p: np.ndarray, rng: np.random.Generator) -> Callable[[], int]:
    """Independent draws of a client index from p, in blocks (inverse CDF of uniforms)."""
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    last = len(p) - 1
    return _blocks(lambda: np.minimum(np.searchsorted(cdf, rng.random(ROUTING_BLOCK), "right"), last)).__next__


def draw_blocks(p: np.ndarray) -> np.ndarray:
    """Block size of every client's streams: its expected share of ``ROUTING_BLOCK`` draws, in
    [16, 4096], so that memory stays O(n + block)."""
    return np.clip(np.rint(p * ROUTING_BLOCK), 16, 4096).astype(int)


def has_stations(scenario: Scenario) -> bool:
    """True when the scenario has links, a server or powers: its runs report every station's
    statistics and the energy, which need the stage times of the extended network."""
    return scenario.extended or scenario.server_power is not None or any(g.power is not None for g in scenario.groups)


def needs_stations(scenario: Scenario) -> bool:
    """True unless the scenario is the base model with continuous compute laws and always-on
    clients: stations (:func:`has_stations`), a compute law with atoms (its ties need the grid
    and the tie rule) or client behaviour (:mod:`fedsim.devices`) take
    :class:`~fedsim.stations.StationEngine`."""
    return has_stations(scenario) or scenario.behaves or any(g.service.atomic for g in scenario.groups)


class Client:
    """A FIFO station of the base model: serves its queue in order, one task at a time.

    The task at the head of the queue is in service until ``end``. ``done`` is the SimPy event
    that fires then, with ``on_done`` as its callback list: ``finish(client, event)``, the
    engine's completion handler, bound to this client. It is re-armed for every service, which
    is safe because a client never has two services in progress and SimPy detaches the list
    before calling it.
    """

    __slots__ = ("index", "queue", "next_service", "end", "done", "on_done")

    def __init__(self, env: simpy.Environment, index: int, next_service: Callable[[], float],
                 finish: Callable[[Client, simpy.Event], None]) -> None:
        self.index = index
        self.queue: deque[Task] = deque()
        self.next_service = next_service
        self.end = 0.0
        self.done = armed_event(env)
        self.on_done = [partial(finish, self)]


class Engine:
    """The closed network of a scenario, ready to run once.

    ``updates`` is the update counter t: the number of updates applied so far. Constructing an
    ``Engine`` for a scenario with links, a server, powers or atomic compute laws gives a
    :class:`~fedsim.stations.StationEngine` (:func:`needs_stations`).
    """

    def __new__(cls, scenario: Scenario, observers: Iterable[object] = ()) -> Engine:
        if cls is Engine and needs_stations(scenario):
            from fedsim.stations import StationEngine

            cls = StationEngine
        return super().__new__(cls)

    def __init__(self, scenario: Scenario, observers: Iterable[object] = ()) -> None:
        self.scenario = scenario
        self.env = simpy.Environment()
        self._heap, self._ids = event_queue(self.env)
        self.updates = 0
        self.observers = list(observers)
        self._record_hooks = self._hooks("on_records")
        self._dispatch_hooks = self._hooks("on_dispatch")
        self._complete_hooks = self._hooks("on_complete")
        self.streams = Streams(scenario.seed)
        self._route = routing_draws(scenario.p, self.streams.generator("routing"))
        self._stop = self.env.event()
        self._limit = scenario.horizon.updates
        # completion records of the current chunk, one list per field
        self._records: tuple[list[Any], ...] = ([], [], [], [])
        self._record = tuple(column.append for column in self._records)
        self._first_update = 0
        self._build()

    def _build(self) -> None:
        """The clients of the base model, each with its own service-time stream."""
        n = self.scenario.n_clients
        blocks = draw_blocks(self.scenario.p)
        rngs = self.streams.per_client("service", n)
        laws = self.scenario.services()
        self.clients = [Client(self.env, i, service_times(laws[i], rngs[i], int(blocks[i])), self._complete)
                        for i in range(n)]

    def _hooks(self, name: str) -> list[Callable[..., None]]:
        return [getattr(o, name) for o in self.observers if hasattr(o, name)]

    def dispatch(self, now: float) -> None:
        """Send a new task, carrying the current model (index ``updates``), to a random client.

        A client that was idle starts serving it at once.
        """
        j = self._route()
        task = object.__new__(Task)
        task.client = j
        task.dispatch_update = self.updates
        task.dispatch_time = now
        task.payload = None
        for hook in self._dispatch_hooks:
            hook(task)
        client = self.clients[j]
        queue = client.queue
        queue.append(task)
        if len(queue) == 1:
            # Start its service: ``env.schedule(done, NORMAL, service time)``, inlined (the
            # same push onto SimPy's event queue) as it runs about once per update.
            done = client.done
            done.callbacks = client.on_done
            client.end = end = now + client.next_service()
            heappush(self._heap, (end, NORMAL, next(self._ids), done))

    def _complete(self, client: Client, _event: simpy.Event) -> None:
        """End of ``client``'s service: it starts its next task, the server applies the update
        of the finished one and dispatches a new task. (The hot path: kept in one function.)"""
        now = client.end
        queue = client.queue
        task = queue.popleft()
        if queue:  # the next task starts its service, as in dispatch()
            done = client.done
            done.callbacks = client.on_done
            client.end = end = now + client.next_service()
            heappush(self._heap, (end, NORMAL, next(self._ids), done))
        record_client, dispatch_update, dispatch_time, completion_time = self._record
        record_client(task.client)
        dispatch_update(task.dispatch_update)
        dispatch_time(task.dispatch_time)
        completion_time(now)
        update = self.updates
        for hook in self._complete_hooks:
            hook(task, update, now)
        self.updates = update = update + 1
        if update == self._limit:
            # Stop before any other completion at this same instant is processed.
            trigger_urgent(self.env, self._stop)
        if len(self._records[0]) == RECORD_CHUNK:
            self._flush_records()
        self.dispatch(now)

    def _flush_records(self) -> None:
        client, dispatch_update, dispatch_time, completion_time, *stamps = self._records
        if not client:
            return
        records = CompletionRecords(
            first_update=self._first_update,
            client=np.array(client, dtype=np.int64),
            dispatch_update=np.array(dispatch_update, dtype=np.int64),
            dispatch_time=np.array(dispatch_time, dtype=float),
            completion_time=np.array(completion_time, dtype=float),
            # a stage not in the network holds the dispatch time: the running maximum along
            # the route (times never decrease along it) sets it to the previous stage's end
            stages=np.maximum.accumulate(np.array(stamps[0], dtype=float), axis=1) if stamps else None,
        )
        self._first_update += len(client)
        for column in self._records:
            column.clear()
        for hook in self._record_hooks:
            hook(records)

    def in_flight(self) -> list[Task]:
        """Tasks still queued or in service, in client order then FIFO order."""
        return [task for client in self.clients for task in client.queue]

    def run(self) -> Engine:
        """Dispatch the C initial tasks and simulate until the horizon."""
        for _ in range(self.scenario.concurrency):
            self.dispatch(0.0)
        horizon = self.scenario.horizon
        self.env.run(until=self._stop if horizon.updates is not None else horizon.time)
        self._flush_records()
        for hook in self._hooks("on_finish"):
            hook(self)
        return self
