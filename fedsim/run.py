"""One run of a scenario: the engine with its observers, the statistics and the analytical model."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.analytic import (
    ExtendedNetwork,
    ExtendedSolution,
    NetworkSolution,
    PowerDraw,
    PowerModel,
    power_draw,
    solve,
    solve_extended,
)
from fedsim.engine import CompletionRecords, Engine, has_stations
from fedsim.scenario import LINKS, Scenario
from fedsim.stations_tracking import StationStatistics, StationTracker, power_vectors
from fedsim.tracking import RunStatistics, TraceWriter, Tracker


@dataclass(frozen=True)
class RunResult:
    """A finished run: its scenario, what was measured, and what the product form predicts.

    For a scenario with links, a server or powers (:func:`~fedsim.engine.has_stations`),
    ``analytic`` is an :class:`~fedsim.analytic.ExtendedSolution`, and ``stations`` and
    ``power`` hold the simulated station statistics and the analytical power draw.
    """

    scenario: Scenario
    stats: RunStatistics
    analytic: NetworkSolution | ExtendedSolution
    wall_seconds: float
    stations: StationStatistics | None = None
    power: PowerDraw | None = None


def extended_model(scenario: Scenario) -> tuple[ExtendedNetwork, PowerModel]:
    """The scenario as the analysis sees it: per client, the compute rate and the links' mean
    times and kinds, the server's mean time; and every power (0 W where none is given)."""
    def link(name: str) -> tuple[np.ndarray, np.ndarray]:
        stations = [getattr(g, name) for g in scenario.groups]
        mean = np.array([0.0 if s is None else s.law.mean for s in stations])
        return mean[scenario.client_group], np.array([s is None or s.kind == "delay" for s in stations])[
            scenario.client_group]

    links = {name: link(name) for name in LINKS}
    network = ExtendedNetwork(scenario.mu, *links["downlink"], *links["uplink"],
                              server=0.0 if scenario.server is None else scenario.server.law.mean)
    watts, server = power_vectors(scenario)
    return network, PowerModel(**watts, server_busy=server.busy, server_idle=server.idle)


def analyse(scenario: Scenario) -> NetworkSolution | ExtendedSolution:
    """Product-form prediction for the scenario (exact iff every FIFO station is exponential):
    the base model's :func:`~fedsim.analytic.solve`, or :func:`~fedsim.analytic.solve_extended`
    when the scenario has links, a server or powers."""
    if not has_stations(scenario):
        return solve(scenario.mu, scenario.p, scenario.concurrency)
    return solve_extended(extended_model(scenario)[0], scenario.p, scenario.concurrency)


def analyse_power(scenario: Scenario, solution: ExtendedSolution) -> PowerDraw:
    """Mean power of every client and of the server in the product form."""
    return power_draw(solution, extended_model(scenario)[1])


class ProgressBar:
    """Engine observer showing a tqdm bar over updates (or simulated time) on stderr."""

    def __init__(self, scenario: Scenario) -> None:
        from tqdm import tqdm

        h = scenario.horizon
        self.by_updates = h.updates is not None
        total = h.updates if self.by_updates else h.time
        unit = "upd" if self.by_updates else "t"
        self.bar = tqdm(total=total, unit=unit, desc=scenario.name, file=sys.stderr, leave=False,
                        unit_scale=self.by_updates)

    def on_records(self, r: CompletionRecords) -> None:
        self.bar.n = r.first_update + len(r.client) if self.by_updates else min(r.completion_time[-1], self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class StepProgressBar(ProgressBar):
    """A :class:`ProgressBar` that also advances at every completion, for runs whose updates
    are slow (real training): the chunks of completion records come too rarely there, and a
    call per update costs nothing next to a gradient step. (tqdm throttles the redraws.)"""

    def on_complete(self, _task: object, update: int, now: float) -> None:
        bar = self.bar
        bar.update((update + 1 if self.by_updates else min(now, bar.total)) - bar.n)


def simulate(scenario: Scenario, *, observers: Iterable[object] = (), trace: Path | None = None,
             progress: bool = False) -> RunResult:
    """Simulate ``scenario`` to its horizon with a tracker (and any extra observers).

    ``trace`` writes one Parquet row per completed task; ``progress`` shows a bar on stderr,
    advanced per update when the scenario trains a model and per chunk of records otherwise.
    """
    bar = (StepProgressBar if scenario.training is not None else ProgressBar)(scenario) if progress else None
    tracker = Tracker(scenario)
    stations = StationTracker(scenario) if has_stations(scenario) else None
    extra = [o for o in (stations, bar, TraceWriter(trace) if trace is not None else None) if o is not None]
    start = time.perf_counter()
    try:
        Engine(scenario, [tracker, *extra, *observers]).run()
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    analytic = analyse(scenario)
    if stations is None:
        return RunResult(scenario=scenario, stats=tracker.result(), analytic=analytic, wall_seconds=wall)
    return RunResult(scenario=scenario, stats=tracker.result(), analytic=analytic, wall_seconds=wall,
                     stations=stations.result(), power=analyse_power(scenario, analytic))
