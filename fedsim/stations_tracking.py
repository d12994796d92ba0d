"""Statistics of the stations of the extended network: queues, times per visit, the server, energy.

An engine observer of completion records with stage times
(:attr:`~fedsim.engine.CompletionRecords.stages`). For every client i and each route station
s (downlink, compute, uplink), over the statistics window ``[t_w, T]``:

- mean number of tasks present (waiting or in service), ``Q_is = (1/(T - t_w)) sum_tasks
  |[a, e] ∩ [t_w, T]|``, the time-average, where ``a`` and ``e`` are a task's arrival at and
  departure from the station (tasks still in the network at the end count up to T);
- mean time per visit ``W_is``, the average of ``e - a`` over the tasks whose update was applied
  in the window (waiting and service), and the mean service time per visit;
- mean number of tasks in service, ``B_is`` (the busy fraction of a FIFO station; at a delay
  station every task present is in service, so ``B = Q``).

The server likewise: mean tasks present (``server_queue``), busy fraction
(``server_utilisation``), time per visit. Energy follows fedsim's power contract (the same as
:func:`fedsim.analytic.power_draw`), per unit of time:

    client i:  compute B_i,compute + uplink B_i,uplink + downlink B_i,downlink
               + idle (1 - B_i,compute),
    server:    busy B_server + idle (1 - B_server),

(a link draws its power per transfer in progress: at a FIFO link only the transfer in service)
and energy per update = total power / throughput.

Window and intervals: the window opens after the horizon's warm-up (by update index or by
time); with ``warmup: auto`` these statistics do not follow the window the tracker detects
but take a fixed warm-up of 10% of the horizon (:func:`fedsim.tracking.fixed_warmup`). Batches are consecutive runs of b applied
updates with b doubling (adjacent batches merged) whenever the count reaches twice
``statistics.batches``, a task's time in the window is counted in the batch of its update, and
every interval is the batch-means ratio interval of :func:`fedsim.tracking.ratio_ci`. Memory
grows with n times the number of stations that exist, not with the run length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.engine import STAGES, CompletionRecords
from fedsim.scenario import ClientPower, Scenario, ServerPower
from fedsim.stations import StationEngine
from fedsim.tracking import fixed_warmup, ratio_ci

ROUTE = STAGES[:3]
FIRST_BATCH_SIZE = 64
SERVER = len(STAGES) - 1


@dataclass(frozen=True)
class StationFigures:
    """One station of every route, per client (arrays of length n; zeros where it does not exist).

    ``*_ci`` are half-widths of batch-means intervals (nan when not estimable).
    """

    queue: np.ndarray  # mean tasks present, time average
    queue_ci: np.ndarray
    time: np.ndarray  # mean time per visit (waiting and service)
    time_ci: np.ndarray
    service: np.ndarray  # mean service time per visit
    busy: np.ndarray  # mean tasks in service (busy fraction of a FIFO station)
    busy_ci: np.ndarray


@dataclass(frozen=True)
class StationStatistics:
    """What the stations did over the statistics window (see the module docstring)."""

    stations: dict[str, StationFigures]  # downlink, compute, uplink
    server_queue: float
    server_queue_ci: float
    server_utilisation: float
    server_utilisation_ci: float
    server_time: float
    server_service: float
    throughput: float
    throughput_ci: float
    client_power: np.ndarray  # watts drawn by every client
    client_power_ci: np.ndarray
    group_power: np.ndarray  # watts drawn by all the clients of each group
    group_power_ci: np.ndarray
    server_power: float
    power: float  # total: clients and server
    power_ci: float
    energy_per_update: float
    energy_per_update_ci: float


def power_vectors(scenario: Scenario) -> tuple[dict[str, np.ndarray], ServerPower]:
    """Every client's powers by field of :class:`~fedsim.scenario.ClientPower` (0 W where a
    group gives none), and the server's."""
    groups = [g.power or ClientPower() for g in scenario.groups]
    client = {name: np.array([getattr(p, name) for p in groups])[scenario.client_group]
              for name in ("compute", "uplink", "downlink", "idle")}
    return client, scenario.server_power or ServerPower()


class StationTracker:
    """Engine observer folding stage times into :class:`StationStatistics`."""

    def __init__(self, scenario: Scenario) -> None:
        n = scenario.n_clients
        self.n = n
        self.horizon = fixed_warmup(scenario.horizon)
        self.level = scenario.statistics.confidence
        self.power, self.server_power = power_vectors(scenario)
        self.groups = np.eye(len(scenario.groups))[scenario.client_group]  # client x group indicator
        # route stations that exist somewhere (compute always); the server if there is one
        self.present = [s for s, name in enumerate(ROUTE)
                        if name == "compute" or any(getattr(g, name) is not None for g in scenario.groups)]
        self.has_server = scenario.server is not None
        self.window_start = 0.0 if self.horizon.warmup == 0 else None
        self.window_first_update: int | None = None
        self.count = np.zeros(n)
        self.visit = {s: np.zeros(n) for s in self.present}  # time per visit, summed
        self.service = {s: np.zeros(n) for s in self.present}
        self.area = {s: np.zeros(n) for s in self.present}  # presence in the window, summed
        self.busy = {s: np.zeros(n) for s in self.present}  # service in the window, summed
        self.server = np.zeros(4)  # visit, service, area, busy of the server
        self.batch_size = FIRST_BATCH_SIZE
        slots = 2 * scenario.statistics.batches
        self.b_count = np.zeros((slots, n))
        self.b_visit = {s: np.zeros((slots, n)) for s in self.present}
        self.b_area = {s: np.zeros((slots, n)) for s in self.present}
        self.b_busy = {s: np.zeros((slots, n)) for s in self.present}
        self.b_server = np.zeros((slots, 3))  # visit, area, busy
        self.b_end = np.zeros(slots)
        self.end_time = 0.0
        self.updates = 0

    # ---------------------------------------------------------------------------------
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
            self._fold(r.client[w], apply[w], r.dispatch_time[w], r.stages[w])

    def _intervals(self, dispatch_time: np.ndarray, stages: np.ndarray, stage: int, end: float = np.inf):
        """Per task at ``stage``: visit time, service time, presence and service in the window."""
        arrival = dispatch_time if stage == 0 else stages[:, 2 * stage - 1]
        start, depart = stages[:, 2 * stage], stages[:, 2 * stage + 1]
        tw = self.window_start
        presence = np.clip(np.minimum(depart, end) - np.maximum(arrival, tw), 0.0, None)
        serving = np.clip(np.minimum(depart, end) - np.maximum(start, tw), 0.0, None)
        return depart - arrival, depart - start, presence, serving

    def _fold(self, client: np.ndarray, apply: np.ndarray, dispatch_time: np.ndarray, stages: np.ndarray) -> None:
        n = self.n
        if self.window_first_update is None:
            self.window_first_update = int(apply[0])
        batch = (apply - self.window_first_update) // self.batch_size
        while batch[-1] >= self.b_count.shape[0]:
            self._merge_batches()
            batch = (apply - self.window_first_update) // self.batch_size
        slots = self.b_count.shape[0]
        key = batch * n + client

        def per_batch(weights: np.ndarray | None) -> np.ndarray:
            return np.bincount(key, weights=weights, minlength=slots * n).reshape(slots, n)

        self.count += np.bincount(client, minlength=n)
        self.b_count += per_batch(None)
        for s in self.present:
            visit, service, presence, serving = self._intervals(dispatch_time, stages, s)
            self.visit[s] += np.bincount(client, weights=visit, minlength=n)
            self.service[s] += np.bincount(client, weights=service, minlength=n)
            self.area[s] += np.bincount(client, weights=presence, minlength=n)
            self.busy[s] += np.bincount(client, weights=serving, minlength=n)
            self.b_visit[s] += per_batch(visit)
            self.b_area[s] += per_batch(presence)
            self.b_busy[s] += per_batch(serving)
        if self.has_server:
            visit, service, presence, serving = self._intervals(dispatch_time, stages, SERVER)
            self.server += [visit.sum(), service.sum(), presence.sum(), serving.sum()]
            for column, values in enumerate((visit, presence, serving)):
                self.b_server[:, column] += np.bincount(batch, weights=values, minlength=slots)
        last = np.flatnonzero(np.diff(batch, append=batch[-1] + 1))
        self.b_end[batch[last]] = stages[last, -1]

    def _merge_batches(self) -> None:
        """Double the batch size: batch k of the new series is batches 2k and 2k+1 of the old."""
        def merged(a: np.ndarray) -> np.ndarray:
            out = np.zeros_like(a)
            out[: a.shape[0] // 2] = a[0::2] + a[1::2]
            return out

        self.b_count = merged(self.b_count)
        for table in (self.b_visit, self.b_area, self.b_busy):
            for s in table:
                table[s] = merged(table[s])
        self.b_server = merged(self.b_server)
        end = np.zeros_like(self.b_end)
        end[: end.size // 2] = self.b_end[1::2]
        self.b_end = end
        self.batch_size *= 2

    def on_finish(self, engine: StationEngine) -> None:
        """Add the time tasks still in the network spent at each station within the window."""
        self.end_time = end = engine.env.now
        self.updates = engine.updates
        if self.window_start is None:
            self.window_start = end
        flight = list(engine.occupancy())
        if not flight:
            return
        # stamps as the records would hold them, the stages not reached yet ending now
        rows = np.array([task.stamps for _, task, _ in flight], dtype=float)
        for k, (stage, _, in_service) in enumerate(flight):
            rows[k, 2 * stage + (1 if in_service else 0):] = end
        rows = np.maximum.accumulate(rows, axis=1)
        client = np.array([task.client for _, task, _ in flight])
        dispatch = np.array([task.dispatch_time for _, task, _ in flight])
        for s in self.present:
            _, _, presence, serving = self._intervals(dispatch, rows, s, end)
            self.area[s] += np.bincount(client, weights=presence, minlength=self.n)
            self.busy[s] += np.bincount(client, weights=serving, minlength=self.n)
        if self.has_server:
            _, _, presence, serving = self._intervals(dispatch, rows, SERVER, end)
            self.server[2:] += [presence.sum(), serving.sum()]

    # ---------------------------------------------------------------------------------
    def result(self) -> StationStatistics:
        """The station statistics of the finished run."""
        n, level = self.n, self.level
        duration = self.end_time - self.window_start
        full = 0
        if self.window_first_update is not None:
            full = (self.updates - self.window_first_update) // self.batch_size
        full = min(full, self.b_count.shape[0])
        b_duration = np.diff(self.b_end[:full], prepend=self.window_start)[:, None]
        b_count = self.b_count[:full]
        b_updates = b_count.sum(axis=1, keepdims=True)
        zeros = np.zeros(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            figures = {}
            for s, name in enumerate(ROUTE):
                if s not in self.present:
                    figures[name] = StationFigures(zeros, zeros, zeros, zeros, zeros, zeros, zeros)
                    continue
                figures[name] = StationFigures(
                    queue=self.area[s] / duration, queue_ci=ratio_ci(self.b_area[s][:full], b_duration, level)[1],
                    time=self.visit[s] / self.count, time_ci=ratio_ci(self.b_visit[s][:full], b_count, level)[1],
                    service=self.service[s] / self.count,
                    busy=self.busy[s] / duration, busy_ci=ratio_ci(self.b_busy[s][:full], b_duration, level)[1])
            b_server = self.b_server[:full]
            updates = self.count.sum()
            server_visit, server_service, server_area, server_busy = self.server
            server_queue_ci = ratio_ci(b_server[:, 1:2], b_duration, level)[1][0]
            server_util_ci = ratio_ci(b_server[:, 2:3], b_duration, level)[1][0]
            _, throughput_ci = ratio_ci(b_updates, b_duration, level)
            # energy: totals over the window and per batch (joules), then per unit time
            p, sp = self.power, self.server_power
            energy = p["idle"] * duration + sum(
                (p[name] - (p["idle"] if name == "compute" else 0.0)) * self.busy[s]
                for s, name in enumerate(ROUTE) if s in self.present)
            b_energy = p["idle"] * b_duration + sum(
                (p[name] - (p["idle"] if name == "compute" else 0.0)) * self.b_busy[s][:full]
                for s, name in enumerate(ROUTE) if s in self.present)
            server_energy = sp.idle * duration + (sp.busy - sp.idle) * server_busy
            b_total = b_energy.sum(axis=1, keepdims=True) + sp.idle * b_duration \
                + (sp.busy - sp.idle) * b_server[:, 2:3]
            total = float(energy.sum() + server_energy)
            return StationStatistics(
                stations=figures,
                server_queue=server_area / duration, server_queue_ci=float(server_queue_ci),
                server_utilisation=server_busy / duration, server_utilisation_ci=float(server_util_ci),
                server_time=server_visit / updates if updates else float("nan"),
                server_service=server_service / updates if updates else float("nan"),
                throughput=updates / duration, throughput_ci=float(throughput_ci[0]),
                client_power=energy / duration, client_power_ci=ratio_ci(b_energy, b_duration, level)[1],
                group_power=energy @ self.groups / duration,
                group_power_ci=ratio_ci(b_energy @ self.groups, b_duration, level)[1],
                server_power=server_energy / duration,
                power=total / duration, power_ci=float(ratio_ci(b_total, b_duration, level)[1][0]),
                energy_per_update=total / updates if updates else float("nan"),
                energy_per_update_ci=float(ratio_ci(b_total, b_updates, level)[1][0]),
            )
