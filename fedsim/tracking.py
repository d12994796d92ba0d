"""Streaming statistics of a run: staleness, sojourn, queue lengths and throughput.

The tracker is an engine observer of completion records: every chunk of completions
(:class:`~fedsim.engine.CompletionRecords`) is folded, vectorised, into running sums, integer
histograms and batch sums, then dropped, so memory does not grow with the number of updates
(it grows with n and, per client, with the smaller of its number of updates and its largest
staleness: :mod:`fedsim.histograms`).

Statistics window. Updates whose index is below the warm-up (or that complete before the
warm-up time) are discarded. The window opens at time t_w (the completion time of the last
warm-up update, or the warm-up time) and closes at the end of the run T.

Confidence intervals come from batch means (MODEL.md, "Statistics"): successive staleness
values are strongly autocorrelated, so the window is cut into consecutive batches of b
updates, and each mean is treated as a ratio estimator R = sum_b Y_b / sum_b X_b over the k
full batches, with standard error

    SE(R) = sqrt( sum_b (Y_b - R X_b)^2 / (k (k - 1)) ) / mean_b(X_b)

and half-width t_{k-1, (1+level)/2} SE(R) (the delta method for ratios; it handles batches in
which a client completes nothing). The batch size starts small and doubles, merging adjacent
batches, whenever the count reaches twice the requested number, so a run ends with between
``batches`` and ``2 * batches - 1`` full batches whatever its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import stdtrit  # the t quantile without importing scipy.stats (slow to import)

from fedsim.engine import CompletionRecords, Engine
from fedsim.histograms import ClientHistograms
from fedsim.scenario import Scenario

FIRST_BATCH_SIZE = 64


@dataclass(frozen=True)
class ClientStatistics:
    """Per-client figures over the statistics window (arrays of length n)."""

    completions: np.ndarray
    staleness_mean: np.ndarray
    staleness_ci: np.ndarray  # half-width of the confidence interval (nan when not estimable)
    staleness_p50: np.ndarray
    staleness_p90: np.ndarray
    staleness_p99: np.ndarray
    staleness_max: np.ndarray
    sojourn_mean: np.ndarray
    sojourn_ci: np.ndarray
    queue_mean: np.ndarray  # time-average number of tasks at the client (queued or in service)
    queue_ci: np.ndarray  # batch means, each task's time in the window counted in its completion batch


@dataclass(frozen=True)
class GroupStatistics:
    """Per-group, update-weighted figures (arrays of length number-of-groups)."""

    completions: np.ndarray
    staleness_mean: np.ndarray
    staleness_ci: np.ndarray


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


def ratio_ci(y: np.ndarray, x: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Batch-means ratio estimate sum(y)/sum(x) and its CI half-width along axis 0.

    ``y`` and ``x`` hold one row per batch. Returns (R, half-width); nan where sum(x) = 0 or
    fewer than two batches.
    """
    k = y.shape[0]
    sx = x.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = y.sum(axis=0) / sx
        if k < 2:
            return r, np.full_like(r, np.nan, dtype=float)
        resid = y - r * x
        se = np.sqrt((resid**2).sum(axis=0) / (k * (k - 1))) / (sx / k)
    return r, stdtrit(k - 1, 0.5 + level / 2) * se


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
        self.window_start = 0.0 if self.horizon.warmup == 0 else None
        self.window_first_update: int | None = None
        # running sums over the window
        self.count = np.zeros(n, dtype=np.int64)
        self.stale_sum = np.zeros(n)
        self.sojourn_sum = np.zeros(n)
        self.area = np.zeros(n)
        self.hist = ClientHistograms(n)  # staleness counts per client (exact, sparse while few)
        # batch sums: rows are batches of ``batch_size`` window updates
        self.batch_size = FIRST_BATCH_SIZE
        slots = 2 * self.min_batches
        self.b_count = np.zeros((slots, n))
        self.b_stale = np.zeros((slots, n))
        self.b_sojourn = np.zeros((slots, n))
        self.b_area = np.zeros((slots, n))
        self.b_end = np.zeros(slots)  # completion time of the last update of each batch
        self.end_time = 0.0
        self.updates = 0

    def on_finish(self, engine: Engine) -> None:
        self.end_time = engine.env.now
        self.updates = engine.updates
        if self.window_start is None:  # the run ended inside the warm-up
            self.window_start = self.end_time
        for task in engine.in_flight():
            self.area[task.client] += self.end_time - max(task.dispatch_time, self.window_start)

    # -----------------------------------------------------------------------------------
    def on_records(self, r: CompletionRecords) -> None:
        apply = r.apply
        warmup = self.horizon.warmup
        if self.horizon.updates is not None:
            in_window = apply >= warmup
            if self.window_start is None and apply[0] <= warmup - 1 <= apply[-1]:
                self.window_start = float(r.completion_time[int(warmup) - 1 - apply[0]])
        else:
            in_window = r.completion_time >= warmup
            if self.window_start is None and in_window.any():
                self.window_start = float(warmup)
        if in_window.any():
            w = in_window
            self._fold(r.client[w], apply[w] - r.dispatch_update[w], r.dispatch_time[w], r.completion_time[w],
                       apply[w])

    def _fold(self, client: np.ndarray, staleness: np.ndarray, t_dispatch: np.ndarray, t_done: np.ndarray,
              apply: np.ndarray) -> None:
        n = self.n
        if self.window_first_update is None:
            self.window_first_update = int(apply[0])
        sojourn = t_done - t_dispatch
        self.count += np.bincount(client, minlength=n)
        self.stale_sum += np.bincount(client, weights=staleness, minlength=n)
        self.sojourn_sum += np.bincount(client, weights=sojourn, minlength=n)
        presence = t_done - np.maximum(t_dispatch, self.window_start)  # time spent at the client in the window
        self.area += np.bincount(client, weights=presence, minlength=n)
        self.hist.add(client, staleness)
        batch = (apply - self.window_first_update) // self.batch_size
        while batch[-1] >= self.b_count.shape[0]:
            self._merge_batches()
            batch = (apply - self.window_first_update) // self.batch_size
        slots = self.b_count.shape[0]
        key = batch * n + client
        self.b_count += np.bincount(key, minlength=slots * n).reshape(slots, n)
        self.b_stale += np.bincount(key, weights=staleness, minlength=slots * n).reshape(slots, n)
        self.b_sojourn += np.bincount(key, weights=sojourn, minlength=slots * n).reshape(slots, n)
        self.b_area += np.bincount(key, weights=presence, minlength=slots * n).reshape(slots, n)
        last = np.flatnonzero(np.diff(batch, append=batch[-1] + 1))
        self.b_end[batch[last]] = t_done[last]

    def _merge_batches(self) -> None:
        """Double the batch size: batch k of the new series is batches 2k and 2k+1 of the old."""
        half = self.b_count.shape[0] // 2
        for name in ("b_count", "b_stale", "b_sojourn", "b_area"):
            a = getattr(self, name)
            merged = np.zeros_like(a)
            merged[:half] = a[0::2] + a[1::2]
            setattr(self, name, merged)
        end = np.zeros_like(self.b_end)
        end[:half] = self.b_end[1::2]
        self.b_end = end
        self.batch_size *= 2

    # -----------------------------------------------------------------------------------
    def result(self) -> RunStatistics:
        """The statistics of the finished run."""
        window_updates = int(self.count.sum())
        duration = self.end_time - self.window_start
        full = 0
        if self.window_first_update is not None:
            full = (self.updates - self.window_first_update) // self.batch_size
        full = min(full, self.b_count.shape[0])
        b_count, b_stale, b_sojourn = self.b_count[:full], self.b_stale[:full], self.b_sojourn[:full]
        _, stale_ci = ratio_ci(b_stale, b_count, self.level)
        _, sojourn_ci = ratio_ci(b_sojourn, b_count, self.level)
        b_updates = b_count.sum(axis=1)
        b_duration = np.diff(self.b_end[:full], prepend=self.window_start)
        _, thr_ci = ratio_ci(b_updates[:, None], b_duration[:, None], self.level)
        _, queue_ci = ratio_ci(self.b_area[:full], b_duration[:, None], self.level)
        _, mean_stale_ci = ratio_ci(b_stale.sum(axis=1)[:, None], b_updates[:, None], self.level)
        g_count, g_stale = self._by_group(b_count), self._by_group(b_stale)
        _, group_ci = ratio_ci(g_stale, g_count, self.level)
        group_completions = self._by_group(self.count[None, :])[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            clients = ClientStatistics(
                completions=self.count.copy(),
                staleness_mean=self.stale_sum / self.count,
                staleness_ci=stale_ci,
                staleness_p50=self.hist.quantile(0.5),
                staleness_p90=self.hist.quantile(0.9),
                staleness_p99=self.hist.quantile(0.99),
                staleness_max=self.hist.maximum(),
                sojourn_mean=self.sojourn_sum / self.count,
                sojourn_ci=sojourn_ci,
                queue_mean=self.area / duration if duration > 0 else np.full(self.n, np.nan),
                queue_ci=queue_ci,
            )
            throughput = window_updates / duration if duration > 0 else float("nan")
            mean_staleness = self.stale_sum.sum() / window_updates if window_updates else float("nan")
            group_staleness = self._by_group(self.stale_sum[None, :])[0] / group_completions  # nan: no updates
        return RunStatistics(
            updates=self.updates, window_updates=window_updates, sim_time=self.end_time,
            window_start=float(self.window_start), throughput=throughput, throughput_ci=float(thr_ci[0]),
            mean_staleness=float(mean_staleness), mean_staleness_ci=float(mean_stale_ci[0]),
            batches=int(full), batch_size=self.batch_size, clients=clients,
            groups=GroupStatistics(
                completions=group_completions.astype(np.int64),
                staleness_mean=group_staleness,
                staleness_ci=group_ci,
            ),
        )

    def _by_group(self, per_client: np.ndarray) -> np.ndarray:
        """Sum the columns (clients) of a 2-D array within each group."""
        out = np.zeros((per_client.shape[0], self.n_groups))
        np.add.at(out.T, self.client_group, per_client.T)
        return out
