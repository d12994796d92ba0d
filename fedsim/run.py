"""One run of a scenario: the engine with its observers, the statistics and the analytical model."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedsim.analytic import NetworkSolution, solve
from fedsim.engine import CompletionRecords, Engine
from fedsim.errors import ScenarioError
from fedsim.scenario import Scenario
from fedsim.tracking import RunStatistics, TraceWriter, Tracker


@dataclass(frozen=True)
class RunResult:
    """A finished run: its scenario, what was measured, and what the product form predicts."""

    scenario: Scenario
    stats: RunStatistics
    analytic: NetworkSolution
    wall_seconds: float


def analyse(scenario: Scenario) -> NetworkSolution:
    """Product-form prediction for the scenario (exact iff every service is exponential)."""
    _refuse_extended(scenario)
    return solve(scenario.mu, scenario.p, scenario.concurrency)


def _refuse_extended(scenario: Scenario) -> None:
    """Links and the server are parsed but neither simulated nor solved yet: refuse them
    rather than silently run the base model."""
    if scenario.extended:
        raise ScenarioError("server" if scenario.server is not None else "clients",
                            "links and a server are not simulated yet; remove server, downlink and uplink")


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
    _refuse_extended(scenario)
    bar = (StepProgressBar if scenario.training is not None else ProgressBar)(scenario) if progress else None
    tracker = Tracker(scenario)
    extra = [o for o in (bar, TraceWriter(trace) if trace is not None else None) if o is not None]
    start = time.perf_counter()
    try:
        Engine(scenario, [tracker, *extra, *observers]).run()
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    return RunResult(scenario=scenario, stats=tracker.result(), analytic=analyse(scenario), wall_seconds=wall)
