"""Streaming statistics of a run: staleness, sojourn, queue lengths and throughput.

The tracker is an engine observer of completion records: every chunk of completions
(:class:`~fedsim.engine.CompletionRecords`) is folded, vectorised, into sums, then dropped.
Its memory grows with the number of clients n, not with the number of updates, and its work
per chunk is O(chunk log chunk) whatever n (docs/statistics.md has the details and the
references).

What it keeps:

- **slots**: the updates since the window's origin, cut into between ``slots / 2`` and
  ``slots`` consecutive slots of b updates (b doubles, merging adjacent slots, when they
  run out), and for every (slot, client) pair that occurs: the client's number of updates,
  staleness sum and maximum, sojourn sum, and the time its tasks spent at it within the
  slot's time span (sparse: a slot of b updates touches at most b clients; at most
  ``slots`` x n pairs). Any window that starts on a slot boundary has exact per-client sums,
  and batches are groups of consecutive slots.
- **quantile sketches**: per client, counts of staleness in logarithmic buckets
  (:mod:`fedsim.sketch`: exact below 128, within a relative 1.08% above), one sketch per
  segment: 32 equal segments of the first half of the horizon (in updates, or in time), one
  for the second half; segments merge pairwise past a memory budget.
- **fine series** (when the warm-up is detected): the staleness sum and the completion time
  of the last update of every batch of 5 updates (MSER-5), at most 16,384 of them (beyond,
  adjacent batches merge: 10, 20, ... updates).

The statistics window. With ``horizon.warmup`` fixed, the updates whose index is below it
(or that complete before that time) are discarded and the window opens at the completion of
the last warm-up update (or at the warm-up time). Otherwise (``warmup: auto``) the warm-up
is chosen after the run by MSER-5 (:func:`~fedsim.outputanalysis.mser_truncation`) on the
update-indexed staleness and on the time per update, the later of the two truncation
points, rounded up to a slot boundary. When a truncation point falls in the second half of
the run, the run is flagged as not stationary (and its window starts half-way).

Confidence intervals come from batch means of ratio estimators R = sum_b Y_b / sum_b X_b
(:func:`~fedsim.outputanalysis.ratio_ci`). The batch size is chosen by testing: batches of
1, 2, 4, ... slots are tried in turn while at least ``statistics.batches`` of them fit in
the window, until the batch means pass von Neumann's test of independence (one-sided, family
level 10%, Bonferroni over the throughput series and the staleness series of every client
with at least one update per batch on average). The intervals then use the coarsest
batching that keeps between ``batches`` and ``2 * batches - 1`` full batches, or the batch
size that passed when it is larger. When no batch size passes, the run is flagged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import stdtrit  # the t quantile without importing scipy.stats (slow to import)

from fedsim.engine import CompletionRecords, Engine
from fedsim.outputanalysis import (MSER_MIN_TAIL, VARIANCE_BATCHES, mser_truncation, ratio_ci, stationary_start,
                                   von_neumann_critical, von_neumann_z)
from fedsim.scenario import Horizon, Scenario
from fedsim.sketch import BUCKETS, bucket_of, sketch_quantiles

FINE_BATCH = 5  # updates per batch mean of MSER-5
FINE_CAP = 1 << 14  # batch means kept for MSER; beyond, adjacent ones merge
MAX_SLOTS, MIN_SLOTS = 512, 128  # slots per run: the most, and the fewest the memory budget may leave ...
SLOT_ENTRY_BUDGET = 1 << 21  # (slot, client) rows before the number of slots halves
TEST_BATCHES = 4  # the independence test needs at least this many times statistics.batches batches


FALLBACK_WARMUP = 0.1  # fraction of the horizon other trackers leave out under warmup: auto


def fixed_warmup(horizon: Horizon) -> Horizon:
    """``horizon`` with a fixed warm-up: itself, or under ``warmup: auto`` FALLBACK_WARMUP of
    the horizon, for the trackers (stations, behaviour) that do not follow the detected window."""
    if horizon.warmup is not None:
        return horizon
    if horizon.updates is not None:
        return replace(horizon, warmup=int(FALLBACK_WARMUP * horizon.updates))
    return replace(horizon, warmup=FALLBACK_WARMUP * horizon.time)


def slot_bounds(batches: int) -> tuple[int, int]:
    """(most, fewest) slots of a run: MAX_SLOTS and MIN_SLOTS, raised (to powers of two) so that
    a window of a quarter of the slots holds TEST_BATCHES * ``batches`` of them."""
    fit = 1 << (4 * TEST_BATCHES * batches - 1).bit_length()
    return max(MAX_SLOTS, fit), max(MIN_SLOTS, fit // 4)
SKETCH_SEGMENTS = 32  # quantile sketches per client: 32 segments of the horizon's first half, one for the rest ...
SKETCH_ENTRY_BUDGET = 1 << 21  # ... fewer, longer segments past this many (segment, client, bucket) counts
TEST_LEVEL = 0.10  # family level of the independence test of the batch means
STATIONARITY_LEVEL = 0.05  # family level of the stationarity test of the two series after truncation
QUANTILES = (0.5, 0.9, 0.99)
_PRESENCE = 3  # column of the time-at-client sums in the slot table


DENSE_KEYS = 1 << 12  # key ranges up to this (or twice the rows) are grouped by counting, not sorting


def grouping(keys: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``keys`` (integers in [0, size)), increasing, and the group
    number of every row: by counting in O(rows + size) when the range is small, by sorting
    otherwise."""
    if size <= max(DENSE_KEYS, 2 * len(keys)):
        present = np.bincount(keys, minlength=size) > 0
        return np.flatnonzero(present), (np.cumsum(present) - 1)[keys]
    return np.unique(keys, return_inverse=True)


def group_sums(group: np.ndarray, groups: int, values: np.ndarray) -> np.ndarray:
    """Sum of every row of ``values`` (columns: the rows being grouped) within each group."""
    return np.vstack([np.bincount(group, weights=v, minlength=groups) for v in values]) if len(values) \
        else np.zeros((0, groups))


def group_maxima(group: np.ndarray, groups: int, values: np.ndarray) -> np.ndarray:
    """Maximum of every row of ``values`` within each group (-inf for an empty one)."""
    out = np.full((len(values), groups), -np.inf)
    for row, v in zip(out, values):
        np.maximum.at(row, group, v)
    return out


class KeyedSums:
    """Sums (and maxima) of value columns keyed by non-negative integers, folded in chunks.

    Rows are appended as they come and compacted (sorted by key, one row per key) whenever the
    pending rows outnumber the compacted ones, so memory stays within about twice the number
    of distinct keys and each row is re-sorted O(log) times. Values are stored by column:
    ``sums`` has shape (columns, rows).
    """

    MIN_PENDING = 1 << 18

    def __init__(self, sums: int, maxima: int = 0) -> None:
        self.keys = np.zeros(0, dtype=np.int64)
        self.sums = np.zeros((sums, 0))
        self.maxima = np.zeros((maxima, 0))
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0

    def add(self, keys: np.ndarray, sums: np.ndarray, maxima: np.ndarray | None = None) -> None:
        """Add rows: ``keys`` (need not be sorted nor distinct), ``sums`` and ``maxima`` of shape
        (columns, rows)."""
        self._pending.append((keys, sums, np.zeros((0, len(keys))) if maxima is None else maxima))
        self._pending_rows += len(keys)
        if self._pending_rows > max(self.MIN_PENDING, len(self.keys)):
            self.compact()

    def compact(self) -> None:
        """Merge the pending rows into the sorted table."""
        if not self._pending:
            return
        keys = np.concatenate([self.keys] + [p[0] for p in self._pending])
        sums = np.concatenate([self.sums] + [p[1] for p in self._pending], axis=1)
        maxima = np.concatenate([self.maxima] + [p[2] for p in self._pending], axis=1)
        self._pending, self._pending_rows = [], 0
        if len(keys) == 0:
            return
        self.keys, group = grouping(keys, int(keys.max()) + 1)
        self.sums = group_sums(group, len(self.keys), sums)
        self.maxima = group_maxima(group, len(self.keys), maxima)

    def exceeds(self, rows: int) -> bool:
        """True when the table holds more than ``rows`` distinct keys (compacting to find out)."""
        if len(self.keys) + self._pending_rows <= rows:
            return False
        self.compact()
        return len(self.keys) > rows

    def rekey(self, f: Callable[[np.ndarray], np.ndarray]) -> None:
        """Replace every key k by f(k) (rows whose new keys coincide are combined)."""
        self.compact()
        keys, sums, maxima = f(self.keys), self.sums, self.maxima
        self.keys, self.sums, self.maxima = keys[:0], sums[:, :0], maxima[:, :0]
        self.add(keys, sums, maxima)
        self.compact()

    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, sums, maxima), sorted by key, one row per key; values by column."""
        self.compact()
        return self.keys, self.sums, self.maxima


class SegmentSketches:
    """Staleness bucket counts per client, one table per segment of the run (a
    :class:`KeyedSums` keyed by client * BUCKETS + bucket): ``count`` segments of equal length
    over the first half of the horizon, then one for the second half. ``first[g]`` is the
    first update index seen in segment g (-1: none yet)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.segments = [KeyedSums(1) for _ in range(count + 1)]
        self.first = np.full(count + 1, -1, dtype=np.int64)

    def add(self, segment: int, keys: np.ndarray, counts: np.ndarray, first: int) -> None:
        """Add counts to ``segment`` (segments are filled in order; a finished one is compacted)."""
        if self.first[segment] < 0:
            for finished in self.segments[:segment]:
                finished.compact()
            self.first[segment] = first
        self.segments[segment].add(keys, counts[None, :])

    def rows(self) -> int:
        """Rows held (compacted and pending)."""
        return sum(len(t.keys) + t._pending_rows for t in self.segments)

    def halve(self) -> None:
        """Half as many segments in the first half: segment k is segments 2k and 2k + 1 of the old."""
        merged = []
        for pair in range(0, self.count, 2):
            table = KeyedSums(1)
            for part in self.segments[pair: pair + 2]:
                keys, counts, _ = part.table()
                table.add(keys, counts)
            table.compact()
            merged.append(table)
        firsts = self.first[: self.count].reshape(-1, 2)
        self.first = np.r_[np.where(firsts[:, 0] >= 0, firsts[:, 0], firsts[:, 1]), self.first[-1]]
        self.segments = merged + self.segments[-1:]
        self.count //= 2

    def counts(self, first: int) -> tuple[np.ndarray, np.ndarray]:
        """(client * BUCKETS + bucket, count) over the segments from ``first`` on, sorted by key."""
        table = KeyedSums(1)
        for part in self.segments[first:]:
            keys, counts, _ = part.table()
            table.add(keys, counts)
        keys, counts, _ = table.table()
        return keys, counts[0] if len(counts) else np.zeros(0)


@dataclass(frozen=True)
class ClientStatistics:
    """Per-client figures over the statistics window (arrays of length n)."""

    completions: np.ndarray
    staleness_mean: np.ndarray
    staleness_ci: np.ndarray  # half-width of the confidence interval (nan when not estimable)
    staleness_p50: np.ndarray  # quantiles: exact below 128, within 1.08% above (fedsim.sketch)
    staleness_p90: np.ndarray
    staleness_p99: np.ndarray
    staleness_max: np.ndarray
    sojourn_mean: np.ndarray
    sojourn_ci: np.ndarray
    queue_mean: np.ndarray  # time-average number of tasks at the client (queued or in service)
    queue_ci: np.ndarray


@dataclass(frozen=True)
class GroupStatistics:
    """Per-group, update-weighted figures (arrays of length number-of-groups)."""

    completions: np.ndarray
    staleness_mean: np.ndarray
    staleness_ci: np.ndarray


@dataclass(frozen=True)
class Warmup:
    """How the start of the statistics window was chosen.

    ``method`` is ``mser-5`` (detected; ``fine_batch`` is the size of the batch means MSER
    saw, 5 or more for long runs) or ``fixed`` (``horizon.warmup``; then ``stationary`` is
    None, not assessed, unless the window's mean staleness misses C - 1: False). ``staleness_point`` and ``throughput_point`` are the MSER truncation
    points (update indices) of the two series; ``updates`` the update index where the window
    starts, a multiple of ``resolution`` (the slot size) past the window's origin.
    """

    method: str
    updates: int
    resolution: int
    stationary: bool | None = None
    reason: str | None = None
    staleness_point: int | None = None
    throughput_point: int | None = None
    fine_batch: int | None = None


@dataclass(frozen=True)
class BatchTest:
    """Von Neumann's test of independence of the batch means, at the batch size that passed
    (``passed``) or at the last one tried. ``statistic`` is the largest standardised statistic
    over the ``series`` tested, ``critical`` its one-sided Bonferroni critical value at family
    level ``level``."""

    level: float
    passed: bool
    batch_size: int | None
    batches: int
    statistic: float
    critical: float
    series: int
    reason: str | None = None


@dataclass(frozen=True)
class RunStatistics:
    """What a run measured: totals, the window, the per-client figures and the throughput."""

    updates: int  # updates applied in the whole run
    window_updates: int  # updates inside the statistics window
    sim_time: float  # simulated time at the end of the run
    window_start: float
    throughput: float  # window updates / window duration
    throughput_ci: float
    mean_staleness: float  # update-weighted mean staleness over the window
    mean_staleness_ci: float
    batches: int  # full batches used for the intervals
    batch_size: int
    clients: ClientStatistics
    groups: GroupStatistics
    warmup: Warmup
    batch_test: BatchTest
    window_first_update: int  # update index where the window starts
    quantile_first_update: int  # ... and where the quantiles' window starts (a segment boundary)

    @property
    def stationary(self) -> bool | None:
        """False when the warm-up detection says the run is shorter than its transient."""
        return self.warmup.stationary

    @property
    def warning(self) -> str | None:
        """Why the intervals are not to be trusted (None when nothing is wrong)."""
        reasons = [r for r in (self.warmup.reason, self.batch_test.reason) if r]
        return "; ".join(reasons) or None


TRACE_COLUMNS = (("client", np.int32), ("dispatch_update", np.int64), ("apply_update", np.int64),
                 ("staleness", np.int64), ("dispatch_time", np.float64), ("completion_time", np.float64))
"""The columns of a trace (trace.parquet), one row per completed task, and their types."""


def trace_columns(r: CompletionRecords) -> list[np.ndarray]:
    """The trace rows of a chunk of completion records, column by column (:data:`TRACE_COLUMNS`)."""
    apply = r.apply
    return [r.client.astype(np.int32), r.dispatch_update, apply, apply - r.dispatch_update, r.dispatch_time,
            r.completion_time]


class TraceWriter:
    """Engine observer writing one Parquet row per completed task, a row group per chunk.

    Columns: client, dispatch_update, apply_update, staleness, dispatch_time, completion_time
    (all updates, the warm-up included).
    """

    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.schema = pa.schema([(name, pa.from_numpy_dtype(dtype)) for name, dtype in TRACE_COLUMNS])
        self._writer = pq.ParquetWriter(path, self.schema)

    def on_records(self, r: CompletionRecords) -> None:
        self._writer.write_table(self._pa.Table.from_arrays(trace_columns(r), schema=self.schema))

    def on_finish(self, engine: Engine) -> None:
        self._writer.close()


class TraceTable:
    """Engine observer keeping the trace in memory; :meth:`frame` is trace.parquet's table."""

    def __init__(self) -> None:
        self._chunks: list[list[np.ndarray]] = []

    def on_records(self, r: CompletionRecords) -> None:
        self._chunks.append(trace_columns(r))

    def frame(self) -> Any:
        """The trace as a pandas DataFrame."""
        import pandas as pd

        parts = list(zip(*self._chunks)) if self._chunks else [() for _ in TRACE_COLUMNS]
        return pd.DataFrame({name: np.concatenate(p).astype(dtype, copy=False) if p else np.zeros(0, dtype)
                             for (name, dtype), p in zip(TRACE_COLUMNS, parts)})


@dataclass(frozen=True)
class _Batches:
    """Per-(client, batch) sums over k batches, rows sorted by (client, batch), and the
    duration of every batch."""

    k: int
    client: np.ndarray
    batch: np.ndarray
    sums: np.ndarray  # rows: updates, staleness, sojourn, time at the client (shape 4 x rows)
    duration: np.ndarray


def _residual_sums(client: np.ndarray, batch: np.ndarray, e: np.ndarray, k: int,
                   n: int) -> tuple[np.ndarray, np.ndarray]:
    """sum_b e_b^2 and sum_{b<k-1} (e_{b+1} - e_b)^2 per client, for series given by their
    non-zero rows (sorted by client, then batch; e_b = 0 in every batch without a row)."""
    sq = np.bincount(client, weights=e * e, minlength=n)
    # e_b enters the differences once with each neighbour inside 0..k-1
    neighbours = 2.0 - (batch == 0) - (batch == k - 1)
    adjacent = (client[1:] == client[:-1]) & (batch[1:] == batch[:-1] + 1)
    cross = np.bincount(client[1:][adjacent], weights=(e[1:] * e[:-1])[adjacent], minlength=n)
    return sq, np.bincount(client, weights=e * e * neighbours, minlength=n) - 2.0 * cross


class Tracker:
    """Engine observer folding completion records into the statistics of :class:`RunStatistics`."""

    def __init__(self, scenario: Scenario) -> None:
        n = scenario.n_clients
        self.n = n
        self.client_group = scenario.client_group
        self.n_groups = len(scenario.groups)
        self.horizon = scenario.horizon
        self.level = scenario.statistics.confidence
        self.min_batches = scenario.statistics.batches
        self.concurrency = scenario.concurrency
        self.detect = self.horizon.warmup is None
        # the update index where slot 0 starts (None until a fixed warm-up is over)
        self.origin: int | None = 0 if self.detect or self.horizon.warmup == 0 else None
        self.slots, self.fewest_slots = slot_bounds(self.min_batches)
        # slots start at about C / 4 updates (a power of two), so that a task, which stays about C
        # updates at its client, spans a few slots only
        self.slot_size = 1 << max(0, (scenario.concurrency // 4).bit_length() - 1)
        self.slot_start = np.full(self.slots + 2, np.inf)  # start time of every slot (inf: not yet)
        self.slot_start[0] = 0.0
        self.per_slot = KeyedSums(4, 1)  # key slot * n + client: updates, staleness, sojourn, presence; max
        self.sketch = SegmentSketches(SKETCH_SEGMENTS)
        self.fine_size = FINE_BATCH
        self.fine_stale = np.zeros(FINE_CAP)
        self.fine_end = np.zeros(FINE_CAP)
        self._last_time = 0.0
        self._lost: list[tuple[int, float, float]] = []  # (client, dispatch time, loss time), not folded yet
        self.end_time = 0.0
        self.updates = 0
        # C tasks age by C - 1 per update only when none is lost (client behaviour loses tasks)
        self.identity = not scenario.behaves

    # -----------------------------------------------------------------------------------
    def on_lost(self, task: Any, now: float) -> None:
        """A task lost with its client (client behaviour): its time there still counts in the
        client's queue length, folded once the slots up to ``now`` are known."""
        self._lost.append((task.client, task.dispatch_time, now))

    def _fold_lost(self, until: float) -> None:
        """Fold the losses up to time ``until`` into the time tasks spent at their clients."""
        ready = [loss for loss in self._lost if loss[2] <= until]
        if not ready or self.origin is None:
            return
        self._lost = [loss for loss in self._lost if loss[2] > until]
        client, t_from, t_to = (np.array(column) for column in zip(*ready))
        keep = t_to > self.slot_start[0]  # lost inside a fixed warm-up: nothing to count
        last = np.searchsorted(self.slot_start, t_to[keep], side="right") - 1
        if keep.any():
            self._add_presence(client[keep].astype(np.int64), t_from[keep], t_to[keep], last)

    def on_records(self, r: CompletionRecords) -> None:
        self._fold_records(r)
        self._fold_lost(float(r.completion_time[-1]))

    def _fold_records(self, r: CompletionRecords) -> None:
        t_done = r.completion_time
        start = 0
        if self.origin is None:
            opening = self._window_opening(r)
            if opening is None:
                self._last_time = float(t_done[-1])
                return
            start = opening
            self.origin = r.first_update + start
            if self.horizon.updates is None:
                self.slot_start[0] = float(self.horizon.warmup)
            else:
                self.slot_start[0] = float(t_done[start - 1]) if start > 0 else self._last_time
        self._last_time = float(t_done[-1])
        first = r.first_update + start
        apply = np.arange(first, r.first_update + len(t_done), dtype=np.int64)
        self._fold(apply - self.origin, r.client[start:], apply - r.dispatch_update[start:], r.dispatch_time[start:],
                   t_done[start:])

    def _window_opening(self, r: CompletionRecords) -> int | None:
        """Row of the first update past a fixed warm-up in this chunk (None: not in it)."""
        if self.horizon.updates is not None:
            k = int(self.horizon.warmup) - r.first_update
            return k if 0 <= k < len(r.client) else None
        k = int(np.searchsorted(r.completion_time, self.horizon.warmup, side="left"))
        return k if k < len(r.client) else None

    def _fold(self, rel: np.ndarray, client: np.ndarray, staleness: np.ndarray, t_dispatch: np.ndarray,
              t_done: np.ndarray) -> None:
        """Fold window updates ``rel`` (update indices counted from the origin)."""
        n = self.n
        if self.detect:
            self._fold_fine(rel, staleness, t_done)
        while rel[-1] // self.slot_size >= self.slots:
            self._halve_slots()
        b = self.slot_size
        slot = rel // b
        # slot s starts when the last update of slot s - 1 completes
        lo, hi = -(-(rel[0] + 1) // b), (rel[-1] + 1) // b
        if hi >= lo:
            s = np.arange(lo, hi + 1)
            self.slot_start[s] = t_done[s * b - 1 - rel[0]]
        start = self.slot_start[slot]
        presence = t_done - np.maximum(t_dispatch, start)
        # the slot table: one row per (slot, client) of the chunk
        s0 = int(slot[0])
        cells, group = grouping((slot - s0) * n + client, (int(slot[-1]) - s0 + 1) * n)
        values = np.vstack([np.ones(len(rel)), staleness, t_done - t_dispatch, presence])
        self.per_slot.add(cells + s0 * n, group_sums(group, len(cells), values),
                          group_maxima(group, len(cells), staleness[None, :].astype(float)))
        # the sketches: one count per (segment, client, bucket) of the chunk
        bucket = bucket_of(staleness)
        b0, width = int(bucket.min()), int(bucket.max() - bucket.min()) + 1
        segment = self._segment(rel, t_done)
        g0 = int(segment[0])
        local = ((segment - g0) * n + client) * width + (bucket - b0)
        keys, group = grouping(local, (int(segment[-1]) - g0 + 1) * n * width)
        counts = np.bincount(group, minlength=len(keys)).astype(float)
        cell, bucket = keys // width, keys % width + b0
        where = cell // n
        firsts = np.searchsorted(segment, g0 + np.arange(int(where[-1]) + 1))
        for g in range(int(where[-1]) + 1):
            rows = slice(*np.searchsorted(where, [g, g + 1]))
            if rows.start < rows.stop:
                self.sketch.add(g0 + g, (cell[rows] % n) * BUCKETS + bucket[rows], counts[rows],
                                self.origin + int(rel[firsts[g]]))
        # tasks that arrived before their completion slot began were also present in earlier slots
        early = (t_dispatch < start) & (slot > 0)
        if early.any():
            self._add_presence(client[early], t_dispatch[early], start[early], slot[early] - 1)
        # memory budgets (after every row of the chunk is in, as they renumber the slots)
        while self.slots > self.fewest_slots and self.per_slot.exceeds(SLOT_ENTRY_BUDGET):
            self.slots //= 2
            self._halve_slots()
        while self.sketch.count > 1 and self.sketch.rows() > SKETCH_ENTRY_BUDGET:
            self.sketch.halve()

    def _segment(self, rel: np.ndarray, t_done: np.ndarray) -> np.ndarray:
        """Sketch segment of every update: its position in the first half of the horizon (in
        updates, or in time), cut into ``sketch.count`` equal parts; ``sketch.count`` past it."""
        count = self.sketch.count
        if self.horizon.updates is not None:
            span, position = self.horizon.updates // 2 - self.origin, rel
        else:
            span, position = self.horizon.time / 2 - self.slot_start[0], t_done - self.slot_start[0]
        if span <= 0:
            return np.full(len(rel), count, dtype=np.int64)
        return np.minimum((position * count) // span, count).astype(np.int64)

    def _add_presence(self, client: np.ndarray, t_from: np.ndarray, t_to: np.ndarray, last: np.ndarray) -> None:
        """Time each task spent at its client in slots up to ``last``, between t_from and t_to."""
        first = np.maximum(np.searchsorted(self.slot_start, t_from, side="right") - 1, 0)
        spans = last - first + 1
        task = np.repeat(np.arange(len(client)), spans)
        s = first[task] + np.arange(len(task)) - np.repeat(np.cumsum(spans) - spans, spans)
        time = (np.minimum(self.slot_start[s + 1], t_to[task]) - np.maximum(self.slot_start[s], t_from[task]))
        sums = np.zeros((4, len(task)))
        sums[_PRESENCE] = time
        self.per_slot.add(s * self.n + client[task], sums, np.full((1, len(task)), -1.0))

    def _fold_fine(self, rel: np.ndarray, staleness: np.ndarray, t_done: np.ndarray) -> None:
        """Batch sums of 5 (or more) updates for MSER: staleness sums and last completion times."""
        while rel[-1] // self.fine_size >= FINE_CAP:
            half = FINE_CAP // 2
            self.fine_stale[:half] = self.fine_stale[0::2] + self.fine_stale[1::2]
            self.fine_end[:half] = self.fine_end[1::2]
            self.fine_stale[half:] = 0.0
            self.fine_end[half:] = 0.0
            self.fine_size *= 2
        f = rel // self.fine_size
        self.fine_stale[f[0]: f[-1] + 1] += np.bincount(f - f[0], weights=staleness)
        last = np.flatnonzero(np.diff(f, append=f[-1] + 1))
        self.fine_end[f[last]] = t_done[last]

    def _halve_slots(self) -> None:
        """Double the slot size: slot k of the new series is slots 2k and 2k + 1 of the old."""
        n = self.n
        self.per_slot.rekey(lambda k: (k // n // 2) * n + k % n)
        self.slot_size *= 2
        start = np.full_like(self.slot_start, np.inf)
        merged = self.slot_start[0::2]
        start[: len(merged)] = merged
        self.slot_start = start

    def on_finish(self, engine: Engine) -> None:
        self.end_time = engine.env.now
        self.updates = engine.updates
        if self.origin is None:
            return
        self._fold_lost(np.inf)
        tasks = engine.in_flight()
        if tasks:
            client = np.array([t.client for t in tasks], dtype=np.int64)
            t_from = np.array([t.dispatch_time for t in tasks], dtype=float)
            last = (self.updates - self.origin) // self.slot_size
            self._add_presence(client, t_from, np.full(len(tasks), self.end_time), np.full(len(tasks), last))

    # -----------------------------------------------------------------------------------
    def result(self) -> RunStatistics:
        """The statistics of the finished run."""
        n = self.n
        if self.origin is None:  # the run ended inside a fixed warm-up
            return self._empty()
        full = (self.updates - self.origin) // self.slot_size
        warmup, s_w = self._warmup(full)
        t_w = float(self.slot_start[s_w])
        keys, sums, maxima = self.per_slot.table()
        slot, client = keys // n, keys % n
        win = slot >= s_w
        slot, client, sums = slot[win] - s_w, client[win], sums[:, win]  # slots counted from the window's start
        count, stale, sojourn, presence = (np.bincount(client, weights=row, minlength=n) for row in sums)
        smax = np.full(n, -1.0)
        np.maximum.at(smax, client, maxima[0, win])
        test, g = self._batch_size(slot, client, sums, s_w, full - s_w, int(count.max(initial=0)))
        k = (full - s_w) // g
        batches = self._batches(slot, client, sums, s_w, g, k)
        duration = self.end_time - t_w
        window_updates = int(count.sum())
        p50, p90, p99, q_first = self._quantiles(s_w)
        with np.errstate(invalid="ignore", divide="ignore"):
            clients = ClientStatistics(
                completions=count.astype(np.int64),
                staleness_mean=stale / count,
                staleness_ci=self._client_ci(batches, 1),
                staleness_p50=p50, staleness_p90=p90, staleness_p99=p99,
                staleness_max=np.where(smax >= 0, smax, np.nan),
                sojourn_mean=sojourn / count,
                sojourn_ci=self._client_ci(batches, 2),
                queue_mean=presence / duration if duration > 0 else np.full(n, np.nan),
                queue_ci=self._queue_ci(batches),
            )
            throughput = window_updates / duration if duration > 0 else float("nan")
            mean_staleness = stale.sum() / window_updates if window_updates else float("nan")
        per_batch = [np.bincount(batches.batch, weights=batches.sums[j], minlength=k)[:, None] for j in (0, 1)]
        _, thr_ci = ratio_ci(per_batch[0], batches.duration[:, None], self.level)
        _, mean_ci = ratio_ci(per_batch[1], per_batch[0], self.level)
        warmup = self._check_identity(warmup, float(mean_staleness), float(mean_ci[0]))
        group = self.client_group[batches.client] * k + batches.batch
        g_count, g_stale = (np.bincount(group, weights=batches.sums[j], minlength=k * self.n_groups)
                            .reshape(self.n_groups, k).T for j in (0, 1))
        _, group_ci = ratio_ci(g_stale, g_count, self.level)
        group_count = np.bincount(self.client_group, weights=count, minlength=self.n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            group_mean = np.bincount(self.client_group, weights=stale, minlength=self.n_groups) / group_count
        return RunStatistics(
            updates=self.updates, window_updates=window_updates, sim_time=self.end_time, window_start=t_w,
            throughput=throughput, throughput_ci=float(thr_ci[0]), mean_staleness=float(mean_staleness),
            mean_staleness_ci=float(mean_ci[0]), batches=int(k), batch_size=int(g * self.slot_size),
            clients=clients,
            groups=GroupStatistics(completions=group_count.astype(np.int64), staleness_mean=group_mean,
                                   staleness_ci=group_ci),
            warmup=warmup, batch_test=test, window_first_update=self.origin + s_w * self.slot_size,
            quantile_first_update=q_first,
        )

    def _warmup(self, full: int) -> tuple[Warmup, int]:
        """The warm-up and the first slot of the window."""
        b = self.slot_size
        if not self.detect:
            return Warmup(method="fixed", updates=int(self.origin), resolution=b), 0
        total, f = self.updates, self.fine_size
        m = total // f
        # the window starts at most half-way (in updates, and for a time horizon in time too)
        tail = int(self.sketch.first[-1])
        half = min(total // 2, tail if tail >= 0 else total)
        least = max(2 * MSER_MIN_TAIL, 2 * VARIANCE_BATCHES)
        if m < least:
            reason = (f"not stationary: {total} updates are too few to detect the end of the warm-up (at least "
                      f"{least * FINE_BATCH} needed); the window starts half-way; run longer")
            s_w = min(-(-half // b), full)
            return Warmup(method="mser-5", updates=s_w * b, resolution=b, stationary=False, reason=reason,
                          fine_batch=f), s_w
        series = {"staleness": self.fine_stale[:m] / f, "time per update": np.diff(self.fine_end[:m], prepend=0.0)}
        points = {name: mser_truncation(z) for name, z in series.items()}
        d = max(points.values())
        starts = {name: stationary_start(z, d, STATIONARITY_LEVEL / len(series)) for name, z in series.items()}
        late = [name for name, (start, _) in starts.items() if start is None]
        reason = None
        if late:
            point = half
            w2 = ", ".join(f"W^2 = {starts[name][1]:.2f}" for name in late)
            reason = (f"not stationary: the {' and '.join(late)} series does not settle in the first half of the run "
                      f"(MSER-5 truncation at update {d * f} of {total}; stationarity test {w2}); the window starts "
                      "half-way; run longer")
        else:
            point = max(start for start, _ in starts.values()) * f
        s_w = min(-(-min(point, half) // b), full)
        return Warmup(method="mser-5", updates=s_w * b, resolution=b, stationary=not late, reason=reason,
                      staleness_point=points["staleness"] * f, throughput_point=points["time per update"] * f,
                      fine_batch=f), s_w

    def _check_identity(self, warmup: Warmup, mean: float, half_width: float) -> Warmup:
        """Flag the window as not stationary when its mean staleness misses C - 1.

        Every update ages the C - 1 other tasks in flight by one, so over a window the staleness
        sum is exactly (C - 1) N_w + A_start - A_end, A the total age (updates since dispatch) of
        the tasks in flight (docs/model.md: the update-weighted mean staleness is C - 1). In a
        stationary run A_end - A_start is a fluctuation, which batch means over-estimate (the
        batch deviations telescope); a mean staleness outside C - 1 +- its half-width means the
        tasks in flight aged (queues still filling) or got younger (draining) over the window.
        Not checked when clients lose tasks (their ages leave A without an update).
        """
        target = self.concurrency - 1
        if not (self.identity and np.isfinite(half_width) and half_width > 0 and abs(mean - target) > half_width):
            return warmup
        trend = "aged: queues still filling" if mean < target else "got younger: queues still draining"
        reason = (f"not stationary: the window's mean staleness {mean:.4g} +- {half_width:.2g} differs from "
                  f"C - 1 = {target} (the tasks in flight {trend}); run longer")
        return replace(warmup, stationary=False, reason="; ".join(r for r in (warmup.reason, reason) if r))

    def _batches(self, slot: np.ndarray, client: np.ndarray, sums: np.ndarray, s_w: int, g: int, k: int) -> _Batches:
        """Per-(client, batch) sums over the k batches of g slots that start at slot s_w (rows
        of the window: ``slot`` counted from s_w)."""
        sel = slot < k * g
        keys, group = grouping(client[sel] * k + slot[sel] // g, self.n * k)
        return _Batches(k=k, client=keys // max(k, 1), batch=keys % max(k, 1),
                        sums=group_sums(group, len(keys), sums[:, sel]),
                        duration=np.diff(self.slot_start[s_w: s_w + k * g + 1: g]))

    def _batch_size(self, slot: np.ndarray, client: np.ndarray, sums: np.ndarray, s_w: int, window_slots: int,
                    most: int) -> tuple[BatchTest, int]:
        """Test batches of 1, 2, 4, ... slots for independence; return the test and the batch size
        (in slots) the intervals use. ``most`` is the largest number of updates of a client in
        the window: with fewer than k, no client series is tested at k batches."""
        updates = sums[0] > 0  # rows of time at a client only do not enter the staleness series
        slot, client, sums = slot[updates], client[updates], sums[:2, updates]
        least = TEST_BATCHES * self.min_batches
        g_default = 1
        while window_slots // (2 * g_default) >= self.min_batches:
            g_default *= 2
        g, tried = 1, None
        while window_slots // g >= least:
            k = window_slots // g
            rows = slice(None) if most >= k else slice(0)  # no client has k updates: throughput alone
            statistic, series = self._independence(self._batches(slot[rows], client[rows], sums[:, rows], s_w, g, k))
            critical = von_neumann_critical(TEST_LEVEL, series)
            tried = (g, k, statistic, critical, series)
            if statistic <= critical:
                return BatchTest(level=TEST_LEVEL, passed=True, batch_size=g * self.slot_size, batches=k,
                                 statistic=statistic, critical=critical, series=series), max(g, g_default)
            g *= 2
        if tried is None:
            reason = (f"only {window_slots} slots of {self.slot_size} updates after the warm-up: too few for "
                      f"{least} batches; run longer")
            return BatchTest(level=TEST_LEVEL, passed=False, batch_size=None, batches=window_slots,
                             statistic=float("nan"), critical=float("nan"), series=0, reason=reason), g_default
        g, k, statistic, critical, series = tried
        reason = (f"batch means not independent: von Neumann's test rejects every batch size that leaves at least "
                  f"{least} batches (last: {k} batches of {g * self.slot_size} updates, statistic {statistic:.2f} > "
                  f"{critical:.2f}); the intervals are too narrow; run longer")
        return BatchTest(level=TEST_LEVEL, passed=False, batch_size=None, batches=k, statistic=statistic,
                         critical=critical, series=series, reason=reason), g_default

    def _independence(self, b: _Batches) -> tuple[float, int]:
        """Largest standardised von Neumann statistic over the throughput series (batch
        durations) and the staleness residual series of every client with at least k updates,
        and the number of series."""
        k = b.k
        d = b.duration - b.duration.mean()
        z = [von_neumann_z(np.array([(d * d).sum()]), np.array([(np.diff(d) ** 2).sum()]), k)]
        count = np.bincount(b.client, weights=b.sums[0], minlength=self.n)
        stale = np.bincount(b.client, weights=b.sums[1], minlength=self.n)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(count > 0, stale / count, 0.0)
        e = b.sums[1] - r[b.client] * b.sums[0]
        sq, sq_diff = _residual_sums(b.client, b.batch, e, k, self.n)
        tested = count >= k
        z.append(von_neumann_z(sq[tested], sq_diff[tested], k))
        z_all = np.concatenate(z)
        z_all = z_all[np.isfinite(z_all)]
        return (float(z_all.max()) if len(z_all) else float("-inf")), int(len(z_all))

    def _client_ci(self, b: _Batches, column: int) -> np.ndarray:
        """Half-widths of the per-client ratio (column sum) / (updates) over the batches."""
        k, n = b.k, self.n
        if k < 2:
            return np.full(n, np.nan)
        x = np.bincount(b.client, weights=b.sums[0], minlength=n)
        y = np.bincount(b.client, weights=b.sums[column], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = y / x
            e = b.sums[column] - r[b.client] * b.sums[0]
            se = np.sqrt(np.bincount(b.client, weights=e * e, minlength=n) / (k * (k - 1))) / (x / k)
        return stdtrit(k - 1, 0.5 + self.level / 2) * se

    def _queue_ci(self, b: _Batches) -> np.ndarray:
        """Half-widths of the time-average queue lengths (time at the client / batch duration)."""
        k, n = b.k, self.n
        if k < 2:
            return np.full(n, np.nan)
        d = b.duration
        area = np.bincount(b.client, weights=b.sums[_PRESENCE], minlength=n)
        r = area / d.sum()
        e = b.sums[_PRESENCE] - r[b.client] * d[b.batch]
        # sum_b (A_b - r d_b)^2: the rows' residuals, and r d_b in the batches without a row
        covered = np.bincount(b.client, weights=d[b.batch] ** 2, minlength=n)
        sq = np.bincount(b.client, weights=e * e, minlength=n) + r * r * np.maximum((d * d).sum() - covered, 0.0)
        se = np.sqrt(sq / (k * (k - 1))) / (d.sum() / k)
        return stdtrit(k - 1, 0.5 + self.level / 2) * se

    def _quantiles(self, s_w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Staleness quantiles per client over the sketch segments from the first one that
        starts at or after slot s_w, and the update index where those segments start."""
        start = np.array([s_w * self.slot_size])
        first = int(self._segment(start, self.slot_start[s_w: s_w + 1])[0])
        if self.sketch.first[first] != start[0] + self.origin:  # s_w is inside segment `first`
            first = min(first + 1, self.sketch.count)
        key, counts = self.sketch.counts(first)
        q = sketch_quantiles(key // BUCKETS, key % BUCKETS, counts, self.n, QUANTILES)
        seen = self.sketch.first[first:]
        return q[0], q[1], q[2], int(seen[seen >= 0].min(initial=self.updates))

    def _empty(self) -> RunStatistics:
        """Statistics of a run that ended inside its fixed warm-up: nothing measured."""
        n, nan = self.n, np.full(self.n, np.nan)
        reason = "the run ended inside its warm-up (horizon.warmup): nothing was measured"
        return RunStatistics(
            updates=self.updates, window_updates=0, sim_time=self.end_time, window_start=self.end_time,
            throughput=float("nan"), throughput_ci=float("nan"), mean_staleness=float("nan"),
            mean_staleness_ci=float("nan"), batches=0, batch_size=0,
            clients=ClientStatistics(np.zeros(n, dtype=np.int64), nan, nan, nan, nan, nan, nan, nan, nan, nan, nan),
            groups=GroupStatistics(np.zeros(self.n_groups, dtype=np.int64), np.full(self.n_groups, np.nan),
                                   np.full(self.n_groups, np.nan)),
            warmup=Warmup(method="fixed", updates=self.updates, resolution=1),
            batch_test=BatchTest(level=TEST_LEVEL, passed=False, batch_size=None, batches=0, statistic=float("nan"),
                                 critical=float("nan"), series=0, reason=reason),
            window_first_update=self.updates, quantile_first_update=self.updates,
        )
