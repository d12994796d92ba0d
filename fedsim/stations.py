"""The stations of the extended network, and the engine that chains them.

A task routed to client i visits ``downlink_i -> compute_i -> uplink_i -> server`` (the
stations that exist; :data:`~fedsim.engine.STAGES`), and its update is applied when the last
of them finishes it. Each station is an object with one entry point, ``arrive(task, now)``;
when it has served a task it calls ``forward(task, now)``, the next station's ``arrive`` or,
after the last, the engine's ``_apply``. Two disciplines:

- :class:`FifoStation`: one server, first come first served (compute, the server, a FIFO link);
- :class:`DelayStation`: infinite server, every task delayed by its own draw (a link whose
  transfers do not queue).

Every station stamps the start and the end of each service on the task
(:attr:`~fedsim.engine.Task.stamps`), which is all the station statistics need
(:mod:`fedsim.stations_tracking`).

State a later feature can act on: a FIFO station's service in progress is the head of
``queue``, started at ``stamps[start_slot]`` and due at ``end``; its pending SimPy event is
``done``. Pausing a station means emptying that event's callbacks (``done.callbacks = []``,
a fired event with no callback does nothing), giving the station a fresh ``armed_event`` and
keeping the remaining work ``end - now``; resuming schedules the end again; losing tasks is
taking them out of ``queue`` (a delay station's ``pending`` heap, with the same lazy
cancellation). None of that touches the engine: it only sees tasks arrive and leave.

The tie rule
------------
Under a continuous law two events coincide with probability zero. Under a law with atoms
(``atomic``: deterministic, empirical) they coincide often, and in floating point sums of
durations that are equal on paper differ by round-off (0.1 + 0.2 != 0.3), so the order of
"simultaneous" updates would follow the rounding. A station whose law is atomic therefore

1. keeps time on a **decimal grid**: each duration is rounded to a whole number of ticks of
   ``1 / TICKS_PER_UNIT`` time units (at least one tick), and the end of a service is
   ``(round(now * TICKS_PER_UNIT) + ticks) / TICKS_PER_UNIT``: the float nearest to a whole
   number of ticks, computed from integers, so two ends equal on the grid are equal floats.
   This is exact while times stay below :data:`GRID_EXACT_UNTIL` time units (beyond it the
   recovery of ``now`` in ticks may be off by one tick);
2. orders events of one instant **uniformly at random**: its events carry the priority
   ``NORMAL + U``, U uniform on [0, 1) drawn from the station's own ``ties`` stream, and SimPy
   takes events of equal time by increasing priority. i.i.d. keys make every order of k
   simultaneous events equally likely (probability 1/k!).

A continuous station draws no key (priority ``NORMAL``), so a scenario without atomic laws keeps
its sample path (its events coincide with another's with probability zero, and would go first). At an instant the update horizon is reached, the run stops before any further
event of that instant (an URGENT stop event), whatever the order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from heapq import heappop, heappush
from typing import Any

import numpy as np
import simpy

import fedsim.engine as engine_module
from fedsim.distributions import ServiceDistribution
from fedsim.engine import STAGES, Engine, Task, _blocks, draw_blocks, service_times
from fedsim.behaviour import replayed
from fedsim.scenario import LINKS, Station as StationSpec
from fedsim.simkernel import NORMAL, armed_event, trigger_urgent

TICKS_PER_UNIT = 10**6
"""Grid of atomic laws: durations are whole numbers of 1e-6 time units. Coarse enough that a
perturbation of a mean by 1e-7 (round-off in a scenario file, say) is no perturbation at all,
fine enough that a duration of 1e-3 time units is resolved to 0.05%."""
GRID_EXACT_UNTIL = 1e9
"""Simulated time below which grid times are exact: ``round(now * TICKS_PER_UNIT)`` gives back
the ticks of ``now`` while their relative round-off, about 3e-16 of 1e15, stays below half a
tick (2^52 ticks are 4.5e9 time units; a margin is kept)."""
SERVER_BLOCK = 4096
LOSS_CAUSES = ("dropout", "offline")
"""Why a task can be lost (:mod:`fedsim.devices`): at completion, or its client went offline."""
N_STAMPS = 2 * len(STAGES)


def grid_durations(law: ServiceDistribution, rng: np.random.Generator, block: int) -> Callable[[], int]:
    """Durations of an atomic law in whole ticks (at least 1), drawn in blocks from ``rng``."""
    return _blocks(lambda: np.maximum(np.rint(law.sample(rng, block) * TICKS_PER_UNIT), 1).astype(np.int64)).__next__


def tie_keys(rng: np.random.Generator, block: int) -> Callable[[], float]:
    """Event priorities ``NORMAL + U``, U i.i.d. uniform on [0, 1): a random order of ties."""
    return _blocks(lambda: NORMAL + rng.random(block)).__next__


class Station:
    """What every station holds: its stage, its draws, its SimPy event and where tasks go next.

    ``next_service()`` draws a duration (in ticks when ``next_key`` is set: an atomic law on
    the grid, see the module docstring). ``done`` is the station's re-armed SimPy event,
    ``on_done`` its callback list (the station's ``_finish``).
    """

    __slots__ = ("stage", "client", "start_slot", "end_slot", "next_service", "next_key", "forward", "heap", "ids",
                 "done", "on_done")

    def __init__(self, engine: StationEngine, stage: int, client: int, next_service: Callable[[], Any],
                 next_key: Callable[[], float] | None, forward: Callable[[Task, float], None]) -> None:
        self.stage = stage
        self.client = client
        self.start_slot, self.end_slot = 2 * stage, 2 * stage + 1
        self.next_service = next_service
        self.next_key = next_key
        self.forward = forward
        self.heap, self.ids = engine._heap, engine._ids
        self.done = armed_event(engine.env)
        self.on_done = [self._finish]

    def _finish(self, _event: simpy.Event) -> None:
        raise NotImplementedError

    def occupancy(self) -> Iterator[tuple[Task, bool]]:
        """The tasks at the station, each with True when it is in service."""
        raise NotImplementedError


class FifoStation(Station):
    """A single-server FIFO station: the head of ``queue`` is in service until ``end``."""

    __slots__ = ("queue", "end")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.queue: deque[Task] = deque()
        self.end = 0.0

    def arrive(self, task: Task, now: float) -> None:
        """``task`` joins the queue; an idle station starts serving it at once."""
        queue = self.queue
        queue.append(task)
        if len(queue) == 1:
            self._start(task, now)

    def _start(self, task: Task, now: float) -> None:
        task.stamps[self.start_slot] = now
        done = self.done
        done.callbacks = self.on_done
        if self.next_key is None:
            self.end = end = now + self.next_service()
            heappush(self.heap, (end, NORMAL, next(self.ids), done))
        else:
            self.end = end = (round(now * TICKS_PER_UNIT) + self.next_service()) / TICKS_PER_UNIT
            heappush(self.heap, (end, self.next_key(), next(self.ids), done))

    def _finish(self, _event: simpy.Event) -> None:
        """End of the service in progress: the next task starts, the finished one moves on."""
        now = self.end
        queue = self.queue
        task = queue.popleft()
        task.stamps[self.end_slot] = now
        if queue:
            self._start(queue[0], now)
        self.forward(task, now)

    def occupancy(self) -> Iterator[tuple[Task, bool]]:
        for k, task in enumerate(self.queue):
            yield task, k == 0


class DelayStation(Station):
    """An infinite-server station: every arriving task is in service at once, for its own draw.

    ``pending`` is a heap of ``(end, priority, id, task)`` holding the same keys as the
    station's entries on SimPy's heap, so the two pop in the same order: the station's one
    event sits on SimPy's heap once per task in service, and each firing takes the first of
    ``pending``.
    """

    __slots__ = ("pending",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pending: list[tuple[float, float, int, Task]] = []

    def arrive(self, task: Task, now: float) -> None:
        """``task`` starts its own service at once."""
        task.stamps[self.start_slot] = now
        if self.next_key is None:
            end, priority = now + self.next_service(), NORMAL
        else:
            end = (round(now * TICKS_PER_UNIT) + self.next_service()) / TICKS_PER_UNIT
            priority = self.next_key()
        eid = next(self.ids)
        heappush(self.pending, (end, priority, eid, task))
        done = self.done
        done.callbacks = self.on_done
        heappush(self.heap, (end, priority, eid, done))

    def _finish(self, _event: simpy.Event) -> None:
        """The first service to end: its task moves on."""
        now, _, _, task = heappop(self.pending)
        task.stamps[self.end_slot] = now
        if self.pending:  # SimPy detached the callbacks; other entries of the event are pending
            self.done.callbacks = self.on_done
        self.forward(task, now)

    def occupancy(self) -> Iterator[tuple[Task, bool]]:
        for entry in sorted(self.pending):
            yield entry[3], True


class StationEngine(Engine):
    """The extended network: every station of every route, the optional server, routing.

    Same contract as :class:`~fedsim.engine.Engine` (observers, records, ``updates``,
    ``in_flight``); records carry ``stages``, and :meth:`occupancy` says where each task in
    flight is. On a base scenario it reproduces :class:`~fedsim.engine.Engine`'s sample path:
    the compute stations use the same streams and block sizes, and schedule their events in
    the same order.
    """

    def _build(self) -> None:
        s = self.scenario
        n = s.n_clients
        self._chunk = engine_module.RECORD_CHUNK
        self._records = ([], [], [], [], [])
        self._record = tuple(column.append for column in self._records)
        blocks = draw_blocks(s.p)
        self._tie_seeds: dict[int, list[np.random.SeedSequence]] = {}
        stage = {name: k for k, name in enumerate(STAGES)}
        self.server: FifoStation | None = None
        after_uplink = self._apply
        if s.server is not None:
            rng = self.streams.generator("server")
            self.server = self._station(s.server, stage["server"], 0, rng, SERVER_BLOCK, after_uplink)
            after_uplink = self.server.arrive
        compute_rngs = self.streams.per_client("service", n)
        link_seeds = {link: self.streams.seed_sequence(link).spawn(n) for link in LINKS
                      if any(getattr(g, link) is not None for g in s.groups)}
        self._blocks = blocks
        self.lost = {cause: np.zeros(n, dtype=np.int64) for cause in LOSS_CAUSES}
        self._lost_hooks = self._hooks("on_lost")
        self._availability_hooks = self._hooks("on_availability")
        devices = None
        if s.behaves or any(replayed(g.service) for g in s.groups):
            import fedsim.devices as devices
        first = np.concatenate([[0], np.cumsum([g.count for g in s.groups])])
        device_stations = {}
        self.routes: list[list[Station]] = []
        self._entries: list[Callable[[Task, float], None]] = []
        for i, g in enumerate(s.client_group):
            group = s.groups[g]
            block = int(blocks[i])
            route: list[Station] = []
            forward = after_uplink
            if group.uplink is not None:
                rng = np.random.Generator(np.random.PCG64(link_seeds["uplink"][i]))
                route.append(self._station(group.uplink, stage["uplink"], i, rng, block, forward))
                forward = route[-1].arrive
            compute = StationSpec(group.service, "fifo")
            draws = cls = None
            if devices is not None:
                draws = devices.compute_durations(group.service, i - int(first[g]), compute_rngs[i], block)
                cls = devices.DeviceStation if group.behaves else None
            route.append(self._station(compute, stage["compute"], i, compute_rngs[i], block, forward, cls, draws))
            if group.behaves:
                device_stations[i] = route[-1]
            forward = route[-1].arrive
            if group.downlink is not None:
                rng = np.random.Generator(np.random.PCG64(link_seeds["downlink"][i]))
                route.append(self._station(group.downlink, stage["downlink"], i, rng, block, forward))
                forward = route[-1].arrive
            self.routes.append(route[::-1])
            self._entries.append(forward)
        self.speed_schedules = devices.attach(self, device_stations) if device_stations else []

    def _station(self, spec: StationSpec, stage: int, client: int, rng: np.random.Generator, block: int,
                 forward: Callable[[Task, float], None], cls: type[Station] | None = None,
                 draws: Callable[[], Any] | None = None) -> Station:
        """A station of ``spec``'s discipline (or of class ``cls``) drawing from ``rng`` (or
        taking its durations from ``draws``, in ticks for an atomic law); on the grid if its law
        is atomic."""
        cls = cls or (FifoStation if spec.kind == "fifo" else DelayStation)
        if not spec.law.atomic:
            return cls(self, stage, client, draws or service_times(spec.law, rng, block), None, forward)
        seeds = self._tie_seeds.get(stage)
        if seeds is None:
            seeds = self._tie_seeds[stage] = self.streams.seed_sequence("ties").spawn(len(STAGES))[stage].spawn(
                self.scenario.n_clients)
        keys = tie_keys(np.random.Generator(np.random.PCG64(seeds[client])), block)
        return cls(self, stage, client, draws or grid_durations(spec.law, rng, block), keys, forward)

    def block_of(self, client: int) -> int:
        """Block size of ``client``'s streams (:func:`~fedsim.engine.draw_blocks`)."""
        return int(self._blocks[client])

    def lose(self, task: Task, now: float, cause: str) -> None:
        """``task`` is lost (``cause``: ``dropout`` or ``offline``, :mod:`fedsim.devices`): it is
        counted in ``lost[cause]``, observers hear of it (``on_lost``), and a new task is
        dispatched at once in its place, so C tasks stay in circulation. Its update is never
        applied."""
        self.lost[cause][task.client] += 1
        for hook in self._lost_hooks:
            hook(task, now)
        self.dispatch(now)

    def report_availability(self, client: int, online: bool, now: float) -> None:
        """Tell the observers that ``client`` is ``online`` (or not) from ``now`` on."""
        for hook in self._availability_hooks:
            hook(client, online, now)

    def dispatch(self, now: float) -> None:
        """Send a new task, carrying the current model (index ``updates``), to a random client:
        it joins the first station of that client's route. (The task is built as in
        :meth:`Engine.dispatch`, which keeps it inline: the base model's hot path.)"""
        j = self._route()
        task = object.__new__(Task)
        task.client = j
        task.dispatch_update = self.updates
        task.dispatch_time = now
        task.payload = None
        task.stamps = [now] * N_STAMPS
        for hook in self._dispatch_hooks:
            hook(task)
        self._entries[j](task, now)

    def _apply(self, task: Task, now: float) -> None:
        """The last station of the route has finished ``task``: the update is applied (records,
        hooks, counter) and a new task is dispatched, as in :meth:`Engine._complete` (inline
        there, the base model's hot path)."""
        record_client, dispatch_update, dispatch_time, completion_time, stamps = self._record
        record_client(task.client)
        dispatch_update(task.dispatch_update)
        dispatch_time(task.dispatch_time)
        completion_time(now)
        stamps(task.stamps)
        update = self.updates
        for hook in self._complete_hooks:
            hook(task, update, now)
        self.updates = update = update + 1
        if update == self._limit:
            trigger_urgent(self.env, self._stop)
        if len(self._records[0]) == self._chunk:
            self._flush_records()
        self.dispatch(now)

    def stations(self) -> Iterator[Station]:
        """Every station: each route in client order (downlink, compute, uplink), then the server."""
        for route in self.routes:
            yield from route
        if self.server is not None:
            yield self.server

    def occupancy(self) -> Iterator[tuple[int, Task, bool]]:
        """Every task in flight as ``(stage, task, in_service)``, station by station."""
        for station in self.stations():
            for task, in_service in station.occupancy():
                yield station.stage, task, in_service

    def in_flight(self) -> list[Task]:
        """Tasks still in the network (queued or in service at any station)."""
        return [task for _, task, _ in self.occupancy()]
