"""One run of a scenario: the engine with its observers, the statistics and the analytical model.

:func:`run_scenario` is *the* run: what ``fedsim run``, ``fedsim.run`` and sweep cells do.
It makes every check that can be made before anything runs (:func:`preflight`: the
resources the run needs, the training workload built and its model tried on real inputs),
then trains (when the scenario has a ``training:`` section) through FedAvg rounds or the
asynchronous engine, and returns the :class:`~fedsim.report.Run` in memory; ``Run.save``
writes its folder. :func:`simulate` is the engine part alone.
"""


from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from fedsim.behaviour_tracking import BehaviourStatistics, BehaviourTracker
from fedsim.engine import CompletionRecords, Engine, has_stations
from fedsim.entry import make_callable
from fedsim.errors import ScenarioError
from fedsim.scenario import LINKS, Scenario
from fedsim.stations_tracking import StationStatistics, StationTracker, power_vectors
from fedsim.tracking import RunStatistics, TraceTable, TraceWriter, Tracker

if TYPE_CHECKING:
    from fedsim.behaviour_analytic import BehaviourModel


@dataclass(frozen=True)
class RunResult:
    """A finished run: its scenario, what was measured, and what the product form predicts.

    For a scenario with links, a server or powers (:func:`~fedsim.engine.has_stations`),
    ``analytic`` is an :class:`~fedsim.analytic.ExtendedSolution`, and ``stations`` and
    ``power`` hold the simulated station statistics and the analytical power draw. With client
    behaviour (:mod:`fedsim.behaviour`), ``behaviour`` holds what it did and ``behaviour_model``
    its analysis (:mod:`fedsim.behaviour_analytic`); ``analytic`` then counts applied updates.
    """

    scenario: Scenario
    stats: RunStatistics
    analytic: NetworkSolution | ExtendedSolution
    wall_seconds: float
    stations: StationStatistics | None = None
    power: PowerDraw | None = None
    behaviour: BehaviourStatistics | None = None
    behaviour_model: BehaviourModel | None = None


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
    """Product-form prediction for the scenario (exact iff ``scenario.exact``): the base model's
    :func:`~fedsim.analytic.solve`, or :func:`~fedsim.analytic.solve_extended` when the scenario
    has links, a server or powers; with client behaviour, :func:`analyse_behaviour`'s."""
    if scenario.behaves:
        return analyse_behaviour(scenario)[0]
    return solve_at(scenario, scenario.mu)


def solve_at(scenario: Scenario, mu: np.ndarray) -> NetworkSolution | ExtendedSolution:
    """The scenario's network (base or extended) solved with compute rates ``mu``."""
    if not has_stations(scenario):
        return solve(mu, scenario.p, scenario.concurrency)
    return solve_extended(replace(extended_model(scenario)[0], mu=mu), scenario.p, scenario.concurrency)


def analyse_behaviour(scenario: Scenario) -> tuple[NetworkSolution | ExtendedSolution, BehaviourModel]:
    """The analysis of a scenario with client behaviour (:func:`fedsim.behaviour_analytic.analyse`)."""
    from fedsim.behaviour_analytic import analyse

    return analyse(scenario, lambda mu: solve_at(scenario, mu))


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
             progress: bool = False, analytic: NetworkSolution | ExtendedSolution | None = None) -> RunResult:
    """Simulate ``scenario`` to its horizon with a tracker (and any extra observers).

    ``trace`` writes one Parquet row per completed task; ``progress`` shows a bar on stderr,
    advanced per update when the scenario trains a model and per chunk of records otherwise.
    ``analytic`` is the scenario's product-form solution when already computed.
    """
    bar = (StepProgressBar if scenario.training is not None else ProgressBar)(scenario) if progress else None
    tracker = Tracker(scenario)
    stations = StationTracker(scenario) if has_stations(scenario) else None
    behaviour = BehaviourTracker(scenario) if scenario.behaves else None
    extra = [o for o in (stations, behaviour, bar, TraceWriter(trace) if trace is not None else None) if o is not None]
    start = time.perf_counter()
    try:
        Engine(scenario, [tracker, *extra, *observers]).run()
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    parts: dict[str, Any] = {}
    if behaviour is None:
        analytic = analytic if analytic is not None else analyse(scenario)
    else:  # the analysis of behaviour also gives its model (losses, capacity, always-on throughput)
        analytic, model = analyse_behaviour(scenario)
        parts = {"behaviour": behaviour.result(), "behaviour_model": model}
    if stations is not None:
        parts |= {"stations": stations.result(), "power": analyse_power(scenario, analytic)}
    return RunResult(scenario=scenario, stats=tracker.result(), analytic=analytic, wall_seconds=wall, **parts)


# ---------------------------------------------------------------------------------------
# the run


@dataclass
class Preflight:
    """What the checks before a run found and built: the resource estimate, the analytical
    solution (None for FedAvg, which does not run the network) and the training workload."""

    estimate: Any
    analytic: NetworkSolution | ExtendedSolution | None
    workload: Any = None


def preflight(scenario: Scenario, *, trace: bool = False, trace_in_memory: bool = False,
              max_memory: int | None = None, solve_expensive: bool = True) -> Preflight:
    """Every check that can be made before a run, in the order of their cost; ScenarioError
    on the first that fails. ``fedsim validate`` runs it, and every run runs it before its
    output folder is touched.

    1. FedAvg refuses what it cannot mean (a trace; a concurrency other than its round size);
    2. the memory the run needs (:mod:`fedsim.resources`) must fit ``max_memory`` (default:
       the memory available on this machine);
    3. the product-form solution (before the memory check when it is cheap: its staleness
       sizes the sketches; after it otherwise, unless ``solve_expensive`` is false, as for
       ``fedsim validate``: its O(n C + C^2) cost is then left to the run);
    4. with training: the dataset is loaded, partitioned, the model built and run on two
       training samples, and the estimate checked again with the model's real size.
    """
    from fedsim.resources import cheap_to_solve, check_memory, estimate

    cfg = scenario.training
    synchronous = cfg is not None and cfg.synchronous
    if synchronous:
        _check_fedavg(scenario, trace)
    solution = None if synchronous or not cheap_to_solve(scenario) else analyse(scenario)
    first = check_memory(estimate(scenario, trace_in_memory=trace_in_memory, solution=solution), max_memory)
    if solution is None and not synchronous and solve_expensive:
        solution = analyse(scenario)
    found = Preflight(first, solution)
    if cfg is not None:
        from fedsim.training.workload import build_workload, check_model

        workload = build_workload(scenario)
        activations = check_model(workload)
        found.workload = workload
        found.estimate = check_memory(estimate(scenario, trace_in_memory=trace_in_memory, solution=solution,
                                               parameters=workload.flat.size, activations=activations), max_memory)
    return found


def _check_fedavg(scenario: Scenario, trace: bool) -> None:
    from fedsim.training.fedavg import check_clients_per_round

    m = scenario.training.algorithm["clients_per_round"]
    check_clients_per_round(scenario, m)
    if trace:
        raise ScenarioError("trace", "FedAvg runs synchronous rounds, not the asynchronous network: there is no "
                            "trace of tasks; remove --trace")
    if scenario.concurrency != m:
        raise ScenarioError("concurrency", f"FedAvg has training.algorithm.clients_per_round = {m} tasks in flight "
                            f"in every round; set concurrency: {m} (got {scenario.concurrency})")


@contextmanager
def _torch_state_kept(training: bool) -> Iterator[None]:
    """Restore torch's thread count and global generator, which a training session sets."""
    if not training:
        yield
        return
    import torch

    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)


def run_scenario(scenario: Scenario, *, trace: bool | Path = False, progress: bool = False,
                 checkpoint: Path | None = None, checkpoint_every: int | None = None, resume: Path | None = None,
                 curve: Path | None = None, max_memory: int | None = None, command: Sequence[str] | None = None,
                 checked: Preflight | None = None) -> Any:
    """Run ``scenario`` as ``fedsim run`` does and return its :class:`~fedsim.report.Run`.

    ``trace``: True keeps the trace in memory (``Run.trace``), a path streams it to that
    Parquet file (the CLI), False keeps none. ``checkpoint`` / ``checkpoint_every``: write
    the training state to that file every N updates; ``resume``: continue from the
    checkpoint in that run folder. ``curve``: a file training.csv's rows are appended to as
    they come. ``command`` is recorded in the provenance; ``checked`` is the
    :func:`preflight` already made (made here otherwise). Global state is left as found:
    torch's thread count and generator are restored at the end.
    """
    from fedsim.provenance import now_iso, provenance
    from fedsim.report import Run, async_run, normalised

    started = now_iso()
    if checked is None:
        checked = preflight(scenario, trace=bool(trace), trace_in_memory=trace is True, max_memory=max_memory)
    cfg = scenario.training
    if cfg is None and (checkpoint_every or resume):
        raise ScenarioError("--resume" if resume else "--checkpoint-every", "only for scenarios with a training: section")
    with _torch_state_kept(cfg is not None):
        session = None
        if cfg is not None:
            from fedsim.training.session import TrainingSession

            session = TrainingSession(scenario, workload=checked.workload, curve=curve, checkpoint=checkpoint,
                                      checkpoint_every=checkpoint_every, resume=resume)
        if session is not None and session.synchronous:
            from fedsim.training.fedavg import rounds_table

            rounds = session.run_rounds()
            run = Run(summary=session.rounds_summary(rounds), clients=rounds_table(scenario, rounds, session.workload.sizes),
                      training=session.curve(), model=session.model_state())
        else:
            table = TraceTable() if trace is True else None
            observers = [o for o in (table, session.observer if session else None) if o is not None]
            result = simulate(scenario, observers=observers, trace=trace if isinstance(trace, Path) else None,
                              progress=progress, analytic=checked.analytic)
            extra = session.finish() if session else None
            run = async_run(result, extra=extra, columns=session.client_columns() if session else None,
                            curve=session.curve() if session else None,
                            model=session.model_state() if session else None,
                            trace=table.frame() if table is not None else None)
    run.summary = normalised(run.summary | {"provenance": provenance(scenario, command=command, started=started)})
    return run


make_callable(__name__)  # fedsim.run(...) is fedsim.api.run (see fedsim.entry)
