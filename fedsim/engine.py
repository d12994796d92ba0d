"""The SimPy model of asynchronous FL: FIFO clients, an instantaneous server, random routing.

C tasks circulate in a closed network. Each client serves its FIFO queue one task at a time;
a service takes a random time drawn from the client's law. When client i completes a task,
the server applies the update at once (the update counter t goes to t + 1) and dispatches a
new task, carrying the new model, to client j with probability p_j (independently of i). At
time 0 the C tasks are dispatched the same way, all with update index 0. The staleness of the
update made by a task dispatched at counter s and applied at counter t (before the increment)
is tau = t - s: the number of other updates applied between its dispatch and its own
(Alahyane et al. 2025, §2; Leconte et al. 2024).

Each client is an event-driven SimPy station: the end of its current service is a SimPy
event in the shared ``simpy.Environment``, scheduled after the drawn service time, whose
callback applies the update and dispatches the next task. A client has at most one service
in progress, so it owns one event object and re-arms it for every service instead of
allocating a ``Timeout`` each time (same place in SimPy's schedule, so the same sample path).
That is one scheduled event and one callback per update, which keeps the engine within a
small factor of a bare event loop (benchmarks/bench_engine.py); a generator process per
client with a ``Store`` queue costs several events and generator resumes per task, and runs
at about a quarter of this design's speed (0.11 against 0.40 of the bare loop).

The engine only moves tasks. What is observed attaches to it as observers:

- ``on_records(records)``: every ``RECORD_CHUNK`` completions (and at the end), the
  completion records as arrays (:class:`CompletionRecords`); statistics and traces use this,
  so that observing costs a few list appends per update;
- ``on_dispatch(task)`` / ``on_complete(task, update, now)``: per task, for observers that
  must act at the event itself (real training snapshots and applies models there);
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
from simpy.core import NORMAL, URGENT

from fedsim.distributions import ServiceDistribution
from fedsim.scenario import Scenario, Streams

ROUTING_BLOCK = 1 << 16
RECORD_CHUNK = 1 << 16


class Task:
    """A model sent to a client: who serves it, and the update index and time of dispatch.

    ``payload`` is free for observers (for example the model version the task carries).
    The engine fills the fields one by one on a bare instance (``object.__new__``), which
    spares a Python ``__init__`` call per update.
    """

    __slots__ = ("client", "dispatch_update", "dispatch_time", "payload")

    client: int
    dispatch_update: int
    dispatch_time: float
    payload: Any


@dataclass(frozen=True)
class CompletionRecords:
    """Consecutive completed tasks, in the order their updates were applied.

    Row k is the update with index ``first_update + k``: its client, the update index and
    time at which its task was dispatched, and its completion time. Its staleness is
    ``apply - dispatch_update``.
    """

    first_update: int
    client: np.ndarray
    dispatch_update: np.ndarray
    dispatch_time: np.ndarray
    completion_time: np.ndarray

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

    def on_finish(self, engine: Engine) -> None:
        """The run has ended; tasks still at the clients are ``engine.in_flight()``."""


def _blocks(draw: Callable[[], np.ndarray]) -> Iterator[Any]:
    """Flatten an endless sequence of sampled blocks into one stream of Python numbers."""
    while True:
        yield from draw().tolist()


def service_times(law: ServiceDistribution, rng: np.random.Generator, block: int) -> Callable[[], float]:
    """The service-time stream of one client: ``next()`` draws from its own generator, in blocks."""
    return _blocks(lambda: law.sample(rng, block)).__next__


def routing_draws(p: np.ndarray, rng: np.random.Generator) -> Callable[[], int]:
    """Independent draws of a client index from p, in blocks (inverse CDF of uniforms)."""
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    last = len(p) - 1
    return _blocks(lambda: np.minimum(np.searchsorted(cdf, rng.random(ROUTING_BLOCK), "right"), last)).__next__


class Client:
    """A FIFO station: serves its queue in order, one task at a time.

    The task at the head of the queue is in service. ``done`` is the SimPy event that fires
    at the end of that service, with ``on_done`` as its callback list: ``finish(client,
    event)``, the engine's completion handler, bound to this client. It is re-armed for every service, which is safe because a client never has
    two services in progress and SimPy detaches the list before calling it.
    """

    __slots__ = ("index", "queue", "next_service", "done", "on_done")

    def __init__(self, env: simpy.Environment, index: int, next_service: Callable[[], float],
                 finish: Callable[[Client, simpy.Event], None]) -> None:
        self.index = index
        self.queue: deque[Task] = deque()
        self.next_service = next_service
        self.done = simpy.Event(env)
        # A succeeded event with no value: what a Timeout is when it fires.
        self.done._ok = True
        self.done._value = None
        self.on_done = [partial(finish, self)]


class Engine:
    """The closed network of a scenario, ready to run once.

    ``updates`` is the update counter t: the number of updates applied so far.
    """

    def __init__(self, scenario: Scenario, observers: Iterable[object] = ()) -> None:
        self.scenario = scenario
        self.env = simpy.Environment()
        self.updates = 0
        self.observers = list(observers)
        self._record_hooks = self._hooks("on_records")
        self._dispatch_hooks = self._hooks("on_dispatch")
        self._complete_hooks = self._hooks("on_complete")
        streams = Streams(scenario.seed)
        n = scenario.n_clients
        p = scenario.p
        # Blocks sized to each client's expected share of draws, so memory stays O(n + block).
        blocks = np.clip(np.rint(p * ROUTING_BLOCK), 16, 4096).astype(int)
        rngs = streams.per_client("service", n)
        laws = scenario.services()
        self.clients = [Client(self.env, i, service_times(laws[i], rngs[i], int(blocks[i])), self._complete)
                        for i in range(n)]
        self._route = routing_draws(p, streams.generator("routing"))
        self._stop = self.env.event()
        self._limit = scenario.horizon.updates
        # completion records of the current chunk, one list per field
        self._records: tuple[list[Any], ...] = ([], [], [], [])
        self._record = tuple(column.append for column in self._records)
        self._first_update = 0

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
            env = self.env
            done = client.done
            done.callbacks = client.on_done
            heappush(env._queue, (env._now + client.next_service(), NORMAL, next(env._eid), done))

    def _complete(self, client: Client, _event: simpy.Event) -> None:
        """End of ``client``'s service: it starts its next task, the server applies the update
        of the finished one and dispatches a new task. (The hot path: kept in one function.)"""
        env = self.env
        now = env._now
        queue = client.queue
        task = queue.popleft()
        if queue:  # the next task starts its service, as in dispatch()
            done = client.done
            done.callbacks = client.on_done
            heappush(env._queue, (now + client.next_service(), NORMAL, next(env._eid), done))
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
            self._stop._ok = True
            self._stop._value = None
            env.schedule(self._stop, URGENT)
        if len(self._records[0]) == RECORD_CHUNK:
            self._flush_records()
        self.dispatch(now)

    def _flush_records(self) -> None:
        client, dispatch_update, dispatch_time, completion_time = self._records
        if not client:
            return
        records = CompletionRecords(
            first_update=self._first_update,
            client=np.array(client, dtype=np.int64),
            dispatch_update=np.array(dispatch_update, dtype=np.int64),
            dispatch_time=np.array(dispatch_time, dtype=float),
            completion_time=np.array(completion_time, dtype=float),
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
