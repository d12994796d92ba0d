"""Client devices in the simulation: on and off periods, speed changes, lost tasks.

A client whose group has behaviour (:mod:`fedsim.behaviour`) computes at a
:class:`DeviceStation`, the FIFO compute station of :mod:`fedsim.stations` with a service in
progress that can stop, restart and change pace. A task's draw is an amount of **work** (time
at speed 1); the station works at rate ``r = f`` while the client is online at speed factor
``f`` and at ``r = 0`` while it is offline. When the rate changes at time t, the work done
since the last change, ``(t - since) r``, is taken off what is left, the pending end of the
service is cancelled and, if ``r > 0``, scheduled again at ``t + work / r``. So the remaining
work is kept exactly across a pause (``offline: pause``) or a speed change, and a service
interrupted k times ends when its on-time, weighted by the factors, adds up to its work.

Cancelling uses the station contract of :mod:`fedsim.stations`: the station takes a fresh
armed event and the old one, still on SimPy's heap, fires with no callback. A station whose
rate never changes schedules exactly what a :class:`~fedsim.stations.FifoStation` does, in the
same float operations (``now + work / 1.0`` is ``now + work``), so an always-on client with
speed factors of 1 and no dropout keeps the sample path of the base model (tested).

Events. Each client with availability has a switch event; each group with a speed profile a
speed event that updates its clients at every change of factor. Both have priority
:data:`LATE`, after every service end of the same instant (priorities ``NORMAL`` and
``NORMAL + U``, U in [0, 1)): a service that ends when its client goes offline is finished.

Lost tasks. ``offline: drop`` loses every task at the client (queued or in service) when it
goes offline; ``dropout: d`` loses a task with probability d when the client finishes it
(a uniform draw from the client's ``dropout`` stream). The engine's
:meth:`~fedsim.stations.StationEngine.lose` counts the loss, tells the observers
(``on_lost``) and dispatches a replacement at once, so C tasks stay in circulation. Tasks sent
to an offline client wait for it. Observers also hear every switch (``on_availability``).

Atomic laws keep their work in ticks of the grid of :mod:`fedsim.stations`; an interrupted
service ends on the grid point nearest to ``t + work / r``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from heapq import heappush
from itertools import count
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from fedsim.behaviour import Availability, OnOff, SpeedProfile, StepSum
from fedsim.distributions import ReplayDurations
from fedsim.engine import Task, _blocks, service_times
from fedsim.scenario import ClientGroup
from fedsim.simkernel import NORMAL, armed_event
from fedsim.stations import LOSS_CAUSES, TICKS_PER_UNIT, FifoStation
from fedsim.traces import OnIntervals

if TYPE_CHECKING:
    from fedsim.stations import StationEngine

LATE = NORMAL + 1
"""Priority of switches and speed changes: after every service end of the same instant."""
DROPOUT, OFFLINE = LOSS_CAUSES


def compute_durations(law: Any, k: int, rng: np.random.Generator, block: int) -> Callable[[], Any] | None:
    """A task's compute durations at client k of its group when they are not i.i.d. draws of
    ``law``: a replayed trace (``dist: trace``), in order and cyclically, in grid ticks, each
    task summing ``steps`` consecutive durations. None for every other law."""
    step, steps = (law.step, law.steps) if isinstance(law, StepSum) else (law, 1)
    if not isinstance(step, ReplayDurations):
        return None
    ticks = np.maximum(np.rint(step.sequence(k) * TICKS_PER_UNIT), 1).astype(np.int64)
    # K cycles of the sequence cut into runs of K: one cycle of the tasks' sums
    cycle = np.tile(ticks, steps).reshape(-1, steps).sum(axis=1)
    return _blocks(lambda: cycle).__next__


def switches(availability: Availability, k: int, rngs: tuple[np.random.Generator, np.random.Generator],
             block: int) -> tuple[bool, Iterator[tuple[float, bool]]]:
    """Client k's state at time 0 and its switches ``(time, online)``, alternately off and on.

    On/off laws: online at 0 at the start of an on period, then i.i.d. on and off lengths from
    the two generators. A trace: its intervals, repeated every period, touching ones (across
    the period's end) joined.
    """
    schedule = availability.schedule
    if isinstance(schedule, OnOff):
        on, off = service_times(schedule.on, rngs[0], block), service_times(schedule.off, rngs[1], block)

        def periods() -> Iterator[tuple[float, bool]]:
            t = 0.0
            while True:
                t += on()
                yield t, False
                t += off()
                yield t, True

        return True, periods()
    return _trace_switches(schedule, k)


def _trace_switches(trace: OnIntervals, k: int) -> tuple[bool, Iterator[tuple[float, bool]]]:
    starts, ends = trace.intervals(k)
    period = trace.period
    edges = [(float(t), state) for s, e in zip(starts, ends) for t, state in ((s, True), (e, False))]
    online = bool(starts[0] == 0.0)
    if online and ends[-1] == period:  # the off at the period's end and the on at 0 are no switch
        edges = edges[1:-1]
        first = edges
    else:  # the on at 0 of the first period is the state at time 0
        first = edges[1:] if online else edges

    def repeated() -> Iterator[tuple[float, bool]]:
        yield from first
        for r in count(1) if edges else ():
            for t, state in edges:
                yield r * period + t, state

    return online, repeated()


class DeviceStation(FifoStation):
    """A client's compute station with on/off periods, speed factors and dropout (module docstring).

    ``work`` is what is left of the service in progress at time ``since`` (in ticks for an
    atomic law); the station works at rate ``factor`` while ``online``. With dropout,
    ``forward`` is :meth:`_deliver`, which hands a task on to ``next_station`` or loses it.
    """

    __slots__ = ("engine", "online", "factor", "work", "since", "dropout", "coin", "next_station", "drop", "switch",
                 "upcoming", "next_switch")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.engine: StationEngine = args[0]
        self.online = True
        self.factor = 1.0
        self.work = 0.0
        self.since = 0.0
        self.dropout = 0.0
        self.drop = False

    def _start(self, task: Task, now: float) -> None:
        task.stamps[self.start_slot] = now
        self.work = self.next_service()
        if self.online:
            self._schedule(now)

    def _schedule(self, now: float) -> None:
        """The service in progress ends after its remaining work at the current rate."""
        self.since = now
        done = self.done
        done.callbacks = self.on_done
        if self.next_key is None:
            self.end = end = now + self.work / self.factor
            heappush(self.heap, (end, NORMAL, next(self.ids), done))
        else:
            self.end = end = (round(now * TICKS_PER_UNIT) + max(1, round(self.work / self.factor))) / TICKS_PER_UNIT
            heappush(self.heap, (end, self.next_key(), next(self.ids), done))

    def _stop(self, now: float) -> None:
        """Stop the service in progress: its work done since ``since`` is taken off, its
        pending end is cancelled (it fires with no callback) and a fresh event is armed."""
        if self.next_key is None:
            self.work -= (now - self.since) * self.factor
        else:
            self.work -= (round(now * TICKS_PER_UNIT) - round(self.since * TICKS_PER_UNIT)) * self.factor
        self.done.callbacks = []
        self.done = armed_event(self.engine.env)

    def set_rate(self, now: float, online: bool, factor: float) -> None:
        """From ``now`` on the client is ``online`` (or not) at speed ``factor``."""
        serving = bool(self.queue)
        if serving and self.online:
            self._stop(now)
        self.online, self.factor = online, factor
        if serving and online:
            self._schedule(now)

    def _deliver(self, task: Task, now: float) -> None:
        """``forward`` of a client with dropout: the finished task moves on, or is lost with
        probability ``dropout`` (the update never reaches the server)."""
        if self.coin() < self.dropout:
            self.engine.lose(task, now, DROPOUT)
        else:
            self.next_station(task, now)

    # ---------------------------------------------------------------------------------
    # availability

    def start_switching(self, online: bool, upcoming: Iterator[tuple[float, bool]]) -> None:
        """Set the state at time 0 and schedule the first switch."""
        self.online = online
        self.next_switch = upcoming.__next__
        self.switch = armed_event(self.engine.env)
        self._push_switch()

    def _push_switch(self) -> None:
        try:
            self.upcoming = self.next_switch()
        except StopIteration:  # a trace that is always on
            return
        self.switch.callbacks = [self._switch]
        heappush(self.heap, (self.upcoming[0], LATE, next(self.ids), self.switch))

    def _switch(self, _event: simpy.Event) -> None:
        now, online = self.upcoming
        self.set_rate(now, online, self.factor)
        self._push_switch()
        self.engine.report_availability(self.client, online, now)
        if not online and self.drop and self.queue:
            lost = list(self.queue)
            self.queue.clear()
            for task in lost:
                task.stamps[self.end_slot] = now
                self.engine.lose(task, now, OFFLINE)


class SpeedSchedule:
    """The speed factor of a group's clients over time: one event per change of factor."""

    def __init__(self, engine: StationEngine, profile: SpeedProfile, stations: list[DeviceStation]) -> None:
        changes = profile.changes()
        self.stations = stations
        self.heap, self.ids = engine._heap, engine._ids
        factor = changes[0][1]
        for station in stations:
            station.factor = factor

        def upcoming() -> Iterator[tuple[float, float]]:
            last = factor
            for r in count():
                for offset, f in changes:
                    if f != last:
                        yield r * profile.period + offset, f
                        last = f

        self.next_change = upcoming().__next__ if len(changes) > 1 else None
        self.event = armed_event(engine.env)
        self._push()

    def _push(self) -> None:
        if self.next_change is None:
            return
        self.upcoming = self.next_change()
        self.event.callbacks = [self._change]
        heappush(self.heap, (self.upcoming[0], LATE, next(self.ids), self.event))

    def _change(self, _event: simpy.Event) -> None:
        now, factor = self.upcoming
        for station in self.stations:
            station.set_rate(now, station.online, factor)
        self._push()


def attach(engine: StationEngine, stations: dict[int, DeviceStation]) -> list[SpeedSchedule]:
    """Give every client with behaviour its dropout draws and availability, and every group
    with a speed profile its schedule; observers hear each client's state at time 0.

    ``stations`` maps client index to its :class:`DeviceStation`. Returns the speed schedules.
    """
    s = engine.scenario
    n = s.n_clients
    first = np.concatenate([[0], np.cumsum([g.count for g in s.groups])])
    availability_seeds = engine.streams.seed_sequence("availability").spawn(n)
    dropout_seeds = engine.streams.seed_sequence("dropout").spawn(n)
    for i, station in stations.items():
        g = int(s.client_group[i])
        group: ClientGroup = s.groups[g]
        block = max(16, engine.block_of(i))
        if group.dropout > 0:
            rng = np.random.Generator(np.random.PCG64(dropout_seeds[i]))
            station.dropout = group.dropout
            station.coin = _blocks(lambda rng=rng, block=block: rng.random(block)).__next__
            station.next_station, station.forward = station.forward, station._deliver
        if group.availability is not None:
            rngs = tuple(np.random.Generator(np.random.PCG64(c)) for c in availability_seeds[i].spawn(2))
            online, upcoming = switches(group.availability, i - int(first[g]), rngs, block)
            station.drop = group.availability.drop
            station.start_switching(online, upcoming)
            engine.report_availability(i, online, 0.0)
    schedules = []
    for g, group in enumerate(s.groups):
        if group.speed_profile is not None:
            members = [stations[i] for i in range(int(first[g]), int(first[g + 1]))]
            schedules.append(SpeedSchedule(engine, group.speed_profile, members))
    return schedules
