"""What client behaviour did in a run: time online, lost tasks, and a timeline of the network.

An engine observer of ``on_availability``, ``on_lost``, ``on_records`` and ``on_finish``
(:mod:`fedsim.devices`). Over the statistics window ``[t_w, T]`` (the rule of
:mod:`fedsim.tracking`: after the warm-up, by update index or by time), per client:

- ``availability``: the fraction of the window the client was online (1 without availability);
- ``lost``: the tasks it lost in the window (offline or dropout), and ``lost_presence``, the
  time they had spent at it within the window (the queue statistics of
  :class:`~fedsim.tracking.Tracker` count applied tasks and those in flight at the end; adding
  ``lost_presence / (T - t_w)`` gives every task present).

The **timeline** covers the whole run in at most :data:`TIMELINE_BINS` bins of equal width
(the width doubles, merging neighbours, whenever the run outgrows them, so memory stays
fixed): per group, the time-average number of clients online and of tasks in flight
(dispatched, not yet applied or lost, wherever they are), and the updates applied and the
tasks lost in each bin. It is what the figure of :func:`fedsim.behaviour_report.timeline_figure`
draws.

Memory does not grow with the run: the switches and losses before the window opens are kept
until its start is known (at most the warm-up and one chunk of records), then folded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedsim.engine import CompletionRecords, Task
from fedsim.scenario import Scenario
from fedsim.tracking import fixed_warmup

if TYPE_CHECKING:
    from fedsim.stations import StationEngine

TIMELINE_BINS = 512
FIRST_BIN_WIDTH = 2.0**-10


@dataclass(frozen=True)
class Timeline:
    """The run in ``len(applied)`` bins of width ``width`` from time 0 (the last one may end
    after the run): per group (rows) the mean clients online and tasks in flight, and per bin
    the updates applied and the tasks lost."""

    width: float
    end: float
    online: np.ndarray  # groups x bins
    in_flight: np.ndarray  # groups x bins
    applied: np.ndarray
    lost: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        return self.width * np.arange(len(self.applied))


@dataclass(frozen=True)
class BehaviourStatistics:
    """What client behaviour did over the statistics window (module docstring)."""

    availability: np.ndarray
    lost: np.ndarray
    lost_presence: np.ndarray
    window_start: float
    timeline: Timeline
    lost_total: dict[str, int]  # whole run, by cause (dropout, offline)
    applied_total: int  # updates applied in the whole run
    in_flight_total: int  # tasks in the network at the end

    @property
    def dispatched_total(self) -> int:
        """Tasks dispatched in the whole run: applied + lost + in flight at the end."""
        return self.applied_total + sum(self.lost_total.values()) + self.in_flight_total


class Bins:
    """Sums over time bins of one width from 0; the width doubles when an event lies beyond."""

    def __init__(self, rows: int, bins: int = TIMELINE_BINS, width: float = FIRST_BIN_WIDTH) -> None:
        self.bins = bins
        self.width = width
        self.area = np.zeros((rows, bins))  # integral of a count over each bin
        self.count = np.zeros((2, bins))  # events per bin: applied, lost

    def _cover(self, t: float) -> None:
        while t >= self.bins * self.width:
            half = self.bins // 2
            for name in ("area", "count"):
                a = getattr(self, name)
                merged = np.zeros_like(a)
                merged[:, :half] = a[:, 0::2] + a[:, 1::2]
                setattr(self, name, merged)
            self.width *= 2

    def add_intervals(self, row: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
        """Add the length of ``[start, end]`` falling in each bin to ``area[row]``."""
        if len(row) == 0:
            return
        self._cover(float(end.max()))
        w, nb = self.width, self.bins
        b0 = np.minimum((start / w).astype(np.int64), nb - 1)
        b1 = np.minimum((end / w).astype(np.int64), nb - 1)
        rows = self.area.shape[0]
        same = b0 == b1
        flat = np.zeros(rows * nb)
        flat += np.bincount(row[same] * nb + b0[same], weights=end[same] - start[same], minlength=rows * nb)
        cut = ~same
        r, s, e, c0, c1 = row[cut], start[cut], end[cut], b0[cut], b1[cut]
        flat += np.bincount(r * nb + c0, weights=(c0 + 1) * w - s, minlength=rows * nb)
        flat += np.bincount(r * nb + c1, weights=e - c1 * w, minlength=rows * nb)
        # whole bins in between: +1 from c0 + 1, -1 from c1, accumulated along each row
        full = np.bincount(r * (nb + 1) + c0 + 1, minlength=rows * (nb + 1))
        full -= np.bincount(r * (nb + 1) + c1, minlength=rows * (nb + 1))
        flat += (np.cumsum(full.reshape(rows, nb + 1), axis=1)[:, :nb] * w).ravel()
        self.area += flat.reshape(rows, nb)

    def add_events(self, kind: int, times: np.ndarray) -> None:
        if len(times) == 0:
            return
        self._cover(float(times.max()))
        b = np.minimum((times / self.width).astype(np.int64), self.bins - 1)
        self.count[kind] += np.bincount(b, minlength=self.bins)


class BehaviourTracker:
    """Engine observer folding switches, losses and records into :class:`BehaviourStatistics`."""

    def __init__(self, scenario: Scenario) -> None:
        n = scenario.n_clients
        self.n = n
        self.group = scenario.client_group
        self.n_groups = len(scenario.groups)
        self.horizon = fixed_warmup(scenario.horizon)  # the detected window is not followed yet
        self.window_start: float | None = None
        if self.horizon.warmup == 0:
            self.window_start = 0.0
        elif self.horizon.updates is None:
            self.window_start = float(self.horizon.warmup)
        self.switching = np.zeros(n, bool)
        self.online = np.ones(n, bool)
        self.since = np.zeros(n)
        self.on_total = np.zeros(n)  # time online in [0, since]
        self.on_before: np.ndarray | None = np.zeros(n) if self.window_start == 0.0 else None
        self.log: list[tuple[int, bool, float]] = []  # switches until the window start is passed
        self.lost = np.zeros(n, dtype=np.int64)
        self.lost_presence = np.zeros(n)
        self.pending: list[tuple[int, float, float]] = []  # losses not folded yet
        self.early: list[np.ndarray] = []  # losses folded into the timeline before the window start was known
        self.bins = Bins(2 * self.n_groups)  # rows: online per group, then in flight per group
        self.online_spans: list[tuple[int, float, float]] = []
        self.end_time = 0.0
        self.totals: tuple[dict[str, int], int, int] = ({}, 0, 0)

    def on_availability(self, client: int, online: bool, now: float) -> None:
        if not self.switching[client]:  # the state at time 0
            self.switching[client] = True
        elif not online:
            self.on_total[client] += now - self.since[client]
            self.online_spans.append((client, self.since[client], now))
        self.online[client] = online
        self.since[client] = now
        if self.on_before is None:
            self.log.append((client, online, now))

    def on_lost(self, task: Task, now: float) -> None:
        self.pending.append((task.client, task.dispatch_time, now))

    def on_records(self, r: CompletionRecords) -> None:
        if self.window_start is None and self.horizon.updates is not None:
            k = int(self.horizon.warmup) - 1 - r.first_update
            if 0 <= k < len(r.client):
                self.window_start = float(r.completion_time[k])
        self._open(float(r.completion_time[-1]))
        self._fold_pending()
        self.bins.add_events(0, r.completion_time)
        self.bins.add_intervals(self.n_groups + self.group[r.client], r.dispatch_time, r.completion_time)
        self._fold_spans()

    def _open(self, now: float) -> None:
        """Once the window start is known and passed: the time each client was online before it."""
        if self.on_before is not None or self.window_start is None or now < self.window_start:
            return
        tw = self.window_start
        before = np.zeros(self.n)
        online = np.ones(self.n, bool)
        since = np.zeros(self.n)
        for client, state, t in self.log:
            if t > tw:
                break
            if not state:
                before[client] += t - since[client]
            online[client], since[client] = state, t
        self.on_before = before + online * (tw - since)
        self.log = []

    def _fold_pending(self) -> None:
        """Losses into the timeline, and into the window's counts once its start is known."""
        if self.pending:
            lost = np.array(self.pending).T
            self.pending = []
            client = lost[0].astype(np.int64)
            self.bins.add_events(1, lost[2])
            self.bins.add_intervals(self.n_groups + self.group[client], lost[1], lost[2])
            self.early.append(lost)
        if self.window_start is None or not self.early:
            return
        client, dispatch, when = np.concatenate(self.early, axis=1)
        self.early = []
        client = client.astype(np.int64)
        w = when >= self.window_start
        self.lost += np.bincount(client[w], minlength=self.n)
        self.lost_presence += np.bincount(client[w], weights=when[w] - np.maximum(dispatch[w], self.window_start),
                                          minlength=self.n)

    def _fold_spans(self) -> None:
        if self.online_spans:
            client, start, end = (np.array(x) for x in zip(*self.online_spans))
            self.bins.add_intervals(self.group[client.astype(np.int64)], start, end)
            self.online_spans = []

    def on_finish(self, engine: StationEngine) -> None:
        end = self.end_time = engine.env.now
        if self.window_start is None:  # the run ended inside the warm-up
            self.window_start = end
        self._open(end)
        self._fold_pending()
        for client in np.flatnonzero(self.online):
            self.online_spans.append((int(client), float(self.since[client]), end))
        self._fold_spans()
        tasks = engine.in_flight()
        lost = {cause: int(count.sum()) for cause, count in engine.lost.items()}
        self.totals = (lost, engine.updates, len(tasks))
        if tasks:
            client = np.array([t.client for t in tasks], dtype=np.int64)
            self.bins.add_intervals(self.n_groups + self.group[client],
                                    np.array([t.dispatch_time for t in tasks]), np.full(len(tasks), end))
        self.on_total += self.online * (end - self.since)

    def result(self) -> BehaviourStatistics:
        duration = self.end_time - self.window_start
        with np.errstate(invalid="ignore", divide="ignore"):
            availability = np.where(self.switching, (self.on_total - self.on_before) / duration, 1.0)
        b = self.bins
        used = max(1, int(np.ceil(self.end_time / b.width)))
        timeline = Timeline(width=b.width, end=self.end_time, online=b.area[: self.n_groups, :used] / b.width,
                            in_flight=b.area[self.n_groups:, :used] / b.width, applied=b.count[0, :used].copy(),
                            lost=b.count[1, :used].copy())
        return BehaviourStatistics(availability=availability, lost=self.lost.copy(),
                                   lost_presence=self.lost_presence.copy(), window_start=float(self.window_start),
                                   timeline=timeline, lost_total=self.totals[0], applied_total=self.totals[1],
                                   in_flight_total=self.totals[2])
