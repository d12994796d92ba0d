"""The accuracy experiment: optimised routing and concurrency against AsyncSGD, each setting at
its own best step size, with real training.

    python analysis/experiment.py [--scenarios heterogeneous edge_devices] [--models mlp logistic]
        [--seeds 10] [--tuning-seeds 101 102 103] [--lrs 0.025 ... 1.6] [--concurrencies 10 ... 100]
        [--budgets 500 1000 2000] [--evaluations 100] [--trials 24] [--workers 2]
        [--no-calibrated] [--no-tuned] [--fresh] [--summarise-only] [--out results/experiment]

Protocol (docs/optimization.md, "The accuracy experiment"):

* **Two disjoint sets of seeds.** Every choice (the step size of every setting, the
  concurrency of AsyncSGD-best-C, the targets, the calibration, ``fedsim tune``, the
  estimated constants) is made on the *tuning seeds*; the reported results are the *evaluation
  seeds* only, which enter no choice. A seed fixes the data, the partition, the initial model,
  every client's mini-batch stream and service-time stream, and the routing stream's uniforms.
* **A setting** (an arm) is a family of configurations (routing ``p``, concurrency ``C``,
  step size ``lr``); for each metric the arm's configuration is the one with the best mean over
  the tuning seeds (:func:`choose`). Arms: :data:`ARMS`.
* **One run per configuration and seed**, to the largest budget ``T_max``, with the test accuracy
  evaluated at the fixed simulated times ``k T_max / E``, ``k = 0..E`` (``--evaluations E``;
  the budgets must lie on that grid): the model at time ``t`` is the one after every update
  applied up to ``t``, so the accuracy at a budget ``T`` is exactly that of a run stopped at
  ``T``. The time to a target accuracy ``a`` is the first grid time whose accuracy is ``>= a``
  (resolution ``T_max / E``), infinite when the run never reaches it by ``T_max``.
* **Metrics**: the accuracy at each budget, and the time to each target. The targets are the
  mean accuracy over the tuning seeds of AsyncSGD-best-C (tuned for that budget) at each budget
  but the largest, fixed from its tuning runs alone before any other arm is chosen.
* **Paired by seed** against AsyncSGD-best-C: accuracy differences, and the relative time saving
  ``1 - T_arm / T_base`` on the seeds where both reach the target, with 95% t-intervals
  (:func:`paired_accuracy`, :func:`paired_time`).

Outputs in ``--out``: ``tuning.csv`` (every tuning run), ``choices.csv`` (each arm's chosen
configuration per metric, with its tuning score), ``targets.csv``, ``runs.csv`` (every
evaluation run: accuracy at each budget, time to each target, throughput, staleness),
``curves.csv`` (every evaluation of every evaluation run), ``summary.csv`` and ``summary.md``
(per scenario, model, metric and arm: the evaluation-seed means and the paired comparisons),
``time_to_target.png``, ``accuracy_vs_time.png``, and per scenario and model
``constants-<scenario>-<model>.json`` (estimated and calibrated constants) and the ``tune/``
folders of ``fedsim tune``; ``cache.jsonl`` keeps every run (reused by the next invocation with the
same ``--out`` unless ``--fresh``). Every run is one process-pool task on one torch thread.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedsim.errors import RunStopped, ScenarioError  # noqa: E402
from fedsim.optimize.config import complete_constants, group_network, parse_optimization  # noqa: E402
from fedsim.optimize.objective import BoundConstants, Objective  # noqa: E402
from fedsim.optimize.solver import max_throughput_routing, optimise  # noqa: E402
from fedsim.scenario import Scenario, load_scenario, parse_scenario  # noqa: E402

BASE = "AsyncSGD, best C"
ARMS = ("AsyncSGD (uniform, C = n)", BASE, "max-throughput routing (C = n)", "per-update optimum",
        "wall-clock optimum, estimated constants", "wall-clock optimum, calibrated constants",
        "fedsim tune")
LRS = (0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
CONCURRENCIES = (10, 20, 40, 70, 100)
TUNING_SEEDS = (101, 102, 103)
BUDGETS = (500.0, 1000.0, 2000.0)
LEVEL = 0.95
NO_EVAL = 10**9  # training.eval.every_updates: the session's own monitor evaluates only at 0 and the end
TOOL_EVAL = 100  # training.eval.every_updates of the scenarios handed to calibrate and tune
#: The training section given to scenarios without one (that of scenarios/heterogeneous.yaml).
TRAINING = {"dataset": {"name": "synthetic", "iid": True, "dim": 60, "classes": 10, "samples": 100},
            "partition": {"dirichlet": 0.3}, "model": "mlp",
            "algorithm": {"name": "generalized_async_sgd", "lr": 0.05, "batch_size": 32}}


# ---------------------------------------------------------------------------------------
# configurations and runs


@dataclass(frozen=True)
class Config:
    """One configuration of an arm: per-client routing weight of every group ``q``, concurrency
    ``C`` and step size ``lr`` (``document``: a whole scenario document instead, for
    ``fedsim tune``'s best trial). ``budget``: the budget the bound's optimum was computed for."""

    arm: str
    lr: float
    concurrency: int
    q: tuple[float, ...]
    budget: float | None = None
    document: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def label(self) -> str:
        what = f"C = {self.concurrency}, lr = {self.lr:g}"
        return what + (f" (optimum for T = {self.budget:g})" if self.budget is not None else "")


def run_document(base: dict[str, Any], config: Config, seed: int, horizon: float) -> dict[str, Any]:
    """The scenario document of ``config`` for one seed, run to ``horizon`` (warm-up 10%)."""
    if config.document is not None:
        doc = copy.deepcopy(config.document)
    else:
        doc = copy.deepcopy(base)
        doc |= {"concurrency": int(config.concurrency), "routing": "weights"}
        doc["clients"] = [dict(c) | {"routing_weight": float(x)} for c, x in zip(doc["clients"], config.q)]
        doc["training"] = copy.deepcopy(doc["training"])
        doc["training"]["algorithm"] = dict(doc["training"]["algorithm"]) | {"lr": float(config.lr)}
    doc.pop("optimization", None)
    doc["training"] = dict(doc["training"]) | {"eval": {"every_updates": NO_EVAL}}
    return doc | {"seed": int(seed), "horizon": {"time": float(horizon), "warmup": 0.1 * float(horizon)}}


class TimeGrid:
    """Engine observer evaluating the global model on the test set at fixed simulated times ``times``.

    Placed before the training observer, it sees each completion before its update is applied:
    at a completion at time ``now`` the model holds every update applied before ``now``, which
    is the model at every grid time in ``[previous completion, now)``. The grid times up to the
    end of the run are evaluated when it finishes. ``evaluate()`` returns ``test_loss`` and
    ``test_accuracy``; a non-finite test loss stops the run (:class:`fedsim.errors.RunStopped`)
    and the grid times after it keep NaN.
    """

    def __init__(self, evaluate: Any, times: np.ndarray) -> None:
        self.evaluate = evaluate
        self.times = np.asarray(times, dtype=float)
        self.rows = np.full((len(self.times), 3), np.nan)  # update, test loss, test accuracy
        self.k = 0
        self._last: tuple[int, tuple[float, float, float]] | None = None

    def _until(self, now: float, update: int, inclusive: bool) -> None:
        while self.k < len(self.times) and (self.times[self.k] < now or (inclusive and self.times[self.k] <= now)):
            if self._last is None or self._last[0] != update:
                ev = self.evaluate()
                self._last = (update, (ev.test_loss, ev.test_accuracy))
            self.rows[self.k] = (update, *self._last[1])
            self.k += 1
            if not math.isfinite(self._last[1][0]):
                raise RunStopped(f"training diverged at update {update}")

    def on_complete(self, _task: Any, update: int, now: float) -> None:
        self._until(now, update, inclusive=False)

    def on_finish(self, engine: Any) -> None:
        self._until(engine.env.now, engine.updates, inclusive=True)


def run_one(task: tuple[str, dict[str, Any], str, list[float]]) -> dict[str, Any]:
    """Train one configuration on one seed (in a worker process): its curve on the time grid
    and what the simulation measured."""
    key, doc, base_dir, times = task
    from fedsim.run import simulate
    from fedsim.training.session import TrainingSession

    scenario = parse_scenario(doc, base_dir=Path(base_dir))
    start, cpu = time.perf_counter(), time.process_time()
    session = TrainingSession(scenario)
    grid = TimeGrid(test_evaluator(session.workload.evaluator, session.model), np.asarray(times))
    out: dict[str, Any] = {"key": key, "diverged": False}
    try:
        result = simulate(scenario, observers=[grid, session.observer])
        st = result.stats
        horizon = scenario.horizon.time
        out |= {"updates": st.updates, "throughput_run": st.updates / horizon, "throughput_window": st.throughput,
                "mean_staleness": st.mean_staleness, "final_train_loss": session.finish()["final_train_loss"],
                "staleness": {g.name: float(v) for g, v in zip(scenario.groups, st.groups.staleness_mean)}}
    except RunStopped:
        out |= {"diverged": True, "updates": np.nan, "throughput_run": np.nan, "throughput_window": np.nan,
                "mean_staleness": np.nan, "final_train_loss": np.nan, "staleness": {}}
    out |= {"rows": grid.rows.tolist(), "wall_seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu}
    return out


def test_evaluator(evaluator: Any, model: Any) -> Any:
    """The run's evaluator on the test set alone (the same code, with no training rows: its
    train loss is 0), evaluating the global model ``model.w``; the train loss, 90% of an
    evaluation's cost, is evaluated once, at the end of the run."""
    from fedsim.training.evaluate import Evaluator

    e = evaluator
    test_only = Evaluator(e.flat, e.x_train[:0], e.y_train[:0], e.client_of[:0], e.sizes, e.x_test, e.y_test)
    return lambda: test_only(model.w)


class Runner:
    """Runs (configuration, seed) pairs on a process pool, each pair once: results are kept by
    the run's scenario document and time grid, in memory and in the file ``cache`` (JSON lines,
    appended as runs end), so that running the experiment again reuses every run it already
    has (after an interruption, or with a new arm)."""

    def __init__(self, workers: int, times: np.ndarray, base_dir: Path, cache: Path | None = None) -> None:
        method = "forkserver" if "forkserver" in get_all_start_methods() else "spawn"
        context = get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(["fedsim.run", "fedsim.training.session"])
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        self.times = [float(t) for t in times]
        self.base_dir = str(base_dir)
        self.cache: dict[str, dict[str, Any]] = {}
        self.file = cache
        if cache is not None and cache.exists():
            for line in cache.read_text().splitlines():
                if line.strip():
                    result = json.loads(line)
                    self.cache[result["key"]] = result
        self.count = 0

    def run(self, jobs: list[tuple[Config, int, dict[str, Any]]]) -> list[dict[str, Any]]:
        """The result of each ``(config, seed, document)``, in order."""
        keys = [json.dumps([doc, self.times], sort_keys=True) for _, _, doc in jobs]
        todo = {k: doc for k, (_, _, doc) in zip(keys, jobs) if k not in self.cache}
        tasks = [(k, doc, self.base_dir, self.times) for k, doc in todo.items()]
        for result in self.pool.map(run_one, tasks):
            self.cache[result["key"]] = result
            self.count += 1
            if self.file is not None:
                with open(self.file, "a") as f:
                    f.write(json.dumps(result, default=float) + "\n")
        return [self.cache[k] for k in keys]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def metrics_of(rows: np.ndarray, times: np.ndarray, budgets: list[float], targets: dict[str, float]) -> dict[str, float]:
    """Accuracy at each budget and time to each target of one curve on the time grid."""
    acc = rows[:, 2]
    out = {f"accuracy@{b:g}": float(acc[int(np.argmin(np.abs(times - b)))]) for b in budgets}
    for name, a in targets.items():
        out[f"time@{name}"] = time_to_target(times, acc, a)
    return out


def time_to_target(times: np.ndarray, accuracy: np.ndarray, target: float) -> float:
    """The first time of the grid whose accuracy is ``>= target``; ``inf`` when none is (NaN,
    a diverged run, never counts as reached)."""
    hit = np.flatnonzero(np.nan_to_num(np.asarray(accuracy, dtype=float), nan=-np.inf) >= target)
    return float(times[hit[0]]) if hit.size else math.inf


# ---------------------------------------------------------------------------------------
# the protocol's statistics (pure functions; tests/test_experiment.py)


def choose(tuning: pd.DataFrame, metric: str, seeds: tuple[int, ...], tiebreak: str | None = None) -> tuple[int, float]:
    """The configuration (``config`` column) an arm uses for ``metric``, from the rows of
    ``tuning`` whose seed is in ``seeds`` alone; returns it with its score.

    Accuracy (``accuracy@T``): the largest mean over the seeds (a NaN, a diverged run, makes the
    mean -inf). Time (``time@a``): the fewest seeds that never reach the target, then the
    smallest mean time over the seeds that reach it (the score; ``inf`` when none does), then
    the largest mean of the column ``tiebreak`` (the accuracy at the largest budget: it decides
    between configurations that never reach the target). Remaining ties go to the configuration
    listed first.
    """
    part = tuning[tuning["seed"].isin(seeds)]
    if part.empty:
        raise ValueError(f"no tuning run with a seed in {seeds}")
    best, best_key = None, None
    for config, rows in part.groupby("config", sort=False):
        values = rows[metric].to_numpy(dtype=float)
        if metric.startswith("accuracy@"):
            score = -np.inf if np.isnan(values).any() else float(values.mean())
            key: tuple[float, ...] = (-score,)
        else:
            reached = values[np.isfinite(values)]
            score = float(reached.mean()) if reached.size else math.inf
            after = np.nan_to_num(rows[tiebreak].to_numpy(dtype=float), nan=-np.inf).mean() if tiebreak else 0.0
            key = (int(len(values) - reached.size), score, -after)
        if best_key is None or key < best_key:
            best, best_key = (int(config), score), key
    assert best is not None
    return best


def interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the two-sided t-interval at LEVEL over independent replications
    (``nan`` half-width below two values)."""
    values = np.asarray(values, dtype=float)
    k = values.size
    if k == 0:
        return float("nan"), float("nan")
    if k < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(stats.t.ppf(0.5 + LEVEL / 2, k - 1) * values.std(ddof=1) / np.sqrt(k))


def paired_accuracy(arm: pd.Series, base: pd.Series) -> dict[str, float]:
    """Paired by seed (the two series indexed by seed): mean difference ``arm - base`` with its
    t-interval (a diverged run's NaN leaves its seed out; ``pairs`` says how many remain)."""
    diff = (arm - base.reindex(arm.index)).dropna().to_numpy()
    mean, half = interval(diff)
    return {"difference": mean, "difference_ci": half, "pairs": int(diff.size)}


def paired_time(arm: pd.Series, base: pd.Series, horizon: float) -> dict[str, float]:
    """Time to a target paired by seed (series indexed by seed, ``inf`` = never reached by
    ``horizon``).

    ``saving``: mean of ``1 - T_arm / T_base`` over the seeds where both reach the target, with
    its t-interval (``both`` such seeds). ``saving_censored``: the same over every seed that
    the baseline reaches, with a time the arm never reaches counted as ``horizon`` (so it is an
    upper bound of those seeds' saving, favourable to the arm). ``reached`` and
    ``base_reached`` count the seeds that reach the target.
    """
    base = base.reindex(arm.index)
    a, b = arm.to_numpy(dtype=float), base.to_numpy(dtype=float)
    both = np.isfinite(a) & np.isfinite(b)
    saving, saving_ci = interval(1.0 - a[both] / b[both])
    seen = np.isfinite(b)
    censored, censored_ci = interval(1.0 - np.minimum(a[seen], horizon) / b[seen])
    return {"saving": saving, "saving_ci": saving_ci, "both": int(both.sum()),
            "saving_censored": censored, "saving_censored_ci": censored_ci,
            "reached": int(np.isfinite(a).sum()), "base_reached": int(seen.sum()), "seeds": int(a.size)}


# ---------------------------------------------------------------------------------------
# the arms


@dataclass
class Study:
    """One scenario and model: its base document, network and grids."""

    name: str
    model: str
    base: dict[str, Any]
    scenario: Scenario
    base_dir: Path
    lrs: tuple[float, ...]
    concurrencies: tuple[int, ...]
    budgets: list[float]

    @property
    def n(self) -> int:
        return int(sum(g.count for g in self.scenario.groups))

    def network(self) -> Any:
        s = self.scenario
        return group_network(s.groups, s.server, s.server_power)

    def uniform(self) -> tuple[float, ...]:
        return tuple(1.0 for _ in self.scenario.groups)


def make_study(path: Path, model: str, lrs: tuple[float, ...], concurrencies: tuple[int, ...],
               budgets: list[float]) -> Study:
    """The scenario at ``path`` with ``model``, uniform routing, no ``optimization:`` section
    and, when it has none, the training section :data:`TRAINING`."""
    scenario = load_scenario(path)
    doc = copy.deepcopy(dict(scenario.raw))
    doc.pop("optimization", None)
    doc["training"] = copy.deepcopy(doc.get("training", TRAINING))
    doc["training"]["model"] = model
    doc["routing"] = "uniform"
    doc["clients"] = [{k: v for k, v in c.items() if k != "routing_weight"} for c in doc["clients"]]
    doc["training"]["eval"] = {"every_updates": TOOL_EVAL}
    doc |= {"seed": TUNING_SEEDS[0], "horizon": {"time": max(budgets), "warmup": 0.1 * max(budgets)}}
    parsed = parse_scenario(doc, base_dir=path.parent, source=path)
    n = sum(g.count for g in parsed.groups)
    return Study(path.stem, model, doc, parsed, path.parent, lrs, tuple(sorted({min(c, n) for c in concurrencies})),
                 budgets)


def baseline_configs(study: Study) -> dict[str, list[Config]]:
    """The arms whose configurations do not come from the bound: AsyncSGD at C = n and at every
    C of the grid, max-throughput routing at C = n, the per-update optimum (C = 1, uniform: the
    bound's per-update optimum for any constants, docs/optimization.md)."""
    n, u = study.n, study.uniform()
    q_max = tuple(float(x) for x in max_throughput_routing(study.network(), n).q)
    return {
        ARMS[0]: [Config(ARMS[0], lr, n, u) for lr in study.lrs],
        BASE: [Config(BASE, lr, c, u) for c in study.concurrencies for lr in study.lrs],
        ARMS[2]: [Config(ARMS[2], lr, n, q_max) for lr in study.lrs],
        ARMS[3]: [Config(ARMS[3], lr, 1, u) for lr in study.lrs],
    }


def bound_configs(study: Study, arm: str, constants: BoundConstants) -> list[Config]:
    """For every budget and step size ``lr``, the wall-clock optimum ``(p*, C*)`` of the bound
    with ``constants`` at ``eta = lr``, run at that ``lr``: the arm's lr is then chosen like any
    other's, and the bound is always the one of the step size it runs at."""
    network, out = study.network(), []
    for budget in study.budgets:
        for lr in study.lrs:
            opt = optimise(network, dataclasses.replace(constants, eta=lr), Objective.wall_clock(budget),
                           c_min=1, c_max=study.n)
            out.append(Config(arm, lr, int(opt.concurrency), tuple(float(x) for x in opt.q), budget))
    return out


def estimated_constants(study: Study) -> tuple[BoundConstants, Any]:
    """A, L, S estimated at the initial model of the first tuning seed (fedsim.optimize.constants)."""
    s = study.scenario
    spec = parse_optimization(None, s.groups, s.horizon, s.server)
    spec, estimates = complete_constants(spec, s.training, s.groups, TUNING_SEEDS[0])
    return spec.constants, estimates


# ---------------------------------------------------------------------------------------
# the experiment


def tuning_frame(study: Study, runner: Runner, configs: dict[str, list[Config]], seeds: tuple[int, ...],
                 targets: dict[str, float], index: dict[Config, int]) -> pd.DataFrame:
    """Run every configuration of ``configs`` on ``seeds``; one row per run with its metrics."""
    jobs, meta = [], []
    for arm, items in configs.items():
        for config in items:
            cid = index.setdefault(config, len(index))
            for seed in seeds:
                jobs.append((config, seed, run_document(study.base, config, seed, max(study.budgets))))
                meta.append((arm, cid, config, seed))
    rows = []
    times = np.asarray(runner.times)
    for (arm, cid, config, seed), result in zip(meta, runner.run(jobs)):
        curve = np.asarray(result["rows"])
        rows.append({"scenario": study.name, "model": study.model, "arm": arm, "config": cid, "seed": seed,
                     "lr": config.lr, "concurrency": config.concurrency, "bound_budget": config.budget,
                     "diverged": result["diverged"], "cpu_seconds": result["cpu_seconds"]}
                    | metrics_of(curve, times, study.budgets, targets))
    return pd.DataFrame(rows)


def experiment(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.summarise_only:
        return summarise_folder(out, args)
    tuning_seeds, eval_seeds = tuple(args.tuning_seeds), tuple(range(1, args.seeds + 1))
    if set(tuning_seeds) & set(eval_seeds):
        raise ScenarioError("--tuning-seeds", f"must not overlap the evaluation seeds 1..{args.seeds}")
    budgets = sorted(float(b) for b in args.budgets)
    horizon = budgets[-1]
    times = np.linspace(0.0, horizon, args.evaluations + 1)
    step = horizon / args.evaluations
    if any(abs(b / step - round(b / step)) > 1e-9 for b in budgets):
        raise ScenarioError("--budgets", f"must be multiples of T_max / --evaluations = {step:g}")
    calibrate = tune = None
    if not args.no_calibrated:
        try:
            from fedsim.optimize.calibrate import calibrate
        except ImportError:
            print("fedsim.optimize.calibrate is not available: the calibrated arm is left out")
    if not args.no_tuned:
        try:
            from fedsim.tune import tune
        except ImportError:
            print("fedsim.tune is not available: the fedsim tune arm is left out")
    started = time.perf_counter()
    parts: tuple[list[pd.DataFrame], ...] = ([], [], [], [], [])  # tuning, choices, runs, curves, targets
    for name in args.scenarios:
        path = Path(name) if name.endswith(".yaml") else REPO / "scenarios" / f"{name}.yaml"
        for model in args.models:
            study = make_study(path, model, tuple(args.lrs), tuple(args.concurrencies), budgets)
            runner = Runner(args.workers, times, study.base_dir, None if args.fresh else out / "cache.jsonl")
            try:
                tuning, choices, runs, curves, targets = run_study(study, runner, tuning_seeds, eval_seeds,
                                                                   calibrate, tune, args, out)
            finally:
                runner.close()
            for frames, frame in zip(parts, (tuning, choices, runs, curves, targets)):
                frames.append(frame)
            print(f"{study.name}, {model}: {runner.count} runs, {time.perf_counter() - started:.0f} s so far", flush=True)
            tuning, choices, runs, curves, targets = (pd.concat(frames, ignore_index=True) for frames in parts)
            for frame, file in ((tuning, "tuning.csv"), (choices, "choices.csv"), (runs, "runs.csv"),
                                (curves, "curves.csv"), (targets, "targets.csv")):
                frame.to_csv(out / file, index=False, float_format="%.6g")  # after every study
    write_summary(out, runs, choices, targets, curves, args)
    print(f"done in {time.perf_counter() - started:.0f} s; results in {out}")
    return 0


def write_summary(out: Path, runs: pd.DataFrame, choices: pd.DataFrame, targets: pd.DataFrame,
                  curves: pd.DataFrame, args: argparse.Namespace) -> None:
    """summary.csv, summary.md and the two figures, from the runs and the choices."""
    horizon = max(args.budgets)
    summary = summarise(runs, choices, targets, horizon)
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    text = markdown(summary, targets, args, horizon / args.evaluations)
    (out / "summary.md").write_text(text)
    time_figure(summary, out / "time_to_target.png")
    curve_figure(curves, choices, targets, out / "accuracy_vs_time.png")
    print(text)


def summarise_folder(out: Path, args: argparse.Namespace) -> int:
    """--summarise-only: the summary and figures again from the CSV files of ``out``."""
    read = {name: pd.read_csv(out / f"{name}.csv") for name in ("runs", "choices", "targets", "curves")}
    write_summary(out, read["runs"], read["choices"], read["targets"], read["curves"], args)
    return 0


def run_study(study: Study, runner: Runner, tuning_seeds: tuple[int, ...], eval_seeds: tuple[int, ...],
              calibrate: Any, tune: Any, args: argparse.Namespace, out: Path):
    """Tune every arm of one scenario and model on the tuning seeds, then evaluate."""
    budgets, horizon = study.budgets, study.budgets[-1]
    index: dict[Config, int] = {}
    # 1. the baseline alone: its choices per budget and the targets (nothing else seen yet)
    base_cfgs = baseline_configs(study)
    base_tuning = tuning_frame(study, runner, {BASE: base_cfgs[BASE]}, tuning_seeds, {}, index)
    targets = {}
    for b in budgets[:-1]:
        cid, score = choose(base_tuning, f"accuracy@{b:g}", tuning_seeds)
        targets[f"{100 * score:.1f}%"] = score
    target_rows = pd.DataFrame([{"scenario": study.name, "model": study.model, "target": k, "accuracy": v,
                                 "from_budget": b} for (k, v), b in zip(targets.items(), budgets)])
    print(f"{study.name}, {study.model}: targets {', '.join(targets)} (AsyncSGD-best-C at T = "
          f"{', '.join(f'{b:g}' for b in budgets[:-1])}, tuning seeds)", flush=True)
    # 2. every other arm's configurations
    configs = dict(base_cfgs)
    constants, estimates = estimated_constants(study)
    configs[ARMS[4]] = bound_configs(study, ARMS[4], constants)
    record: dict[str, Any] = {"estimated": constants.to_dict(), "estimates": estimates.to_dict()}
    # calibrate and tune start from AsyncSGD-best-C as tuned for the largest budget (tune searches
    # lr in [lr / 10, 10 lr] around its lr); their own pilots and trials run on the tuning seeds
    cid_base, _ = choose(base_tuning, f"accuracy@{horizon:g}", tuning_seeds)
    start = next(c for c, i in index.items() if i == cid_base)
    doc = run_document(study.base, start, tuning_seeds[0], horizon)
    doc["training"]["eval"] = {"every_updates": TOOL_EVAL}
    scenario = parse_scenario(doc, base_dir=study.base_dir)
    if calibrate is not None:
        cal = calibrate(scenario, seeds=list(tuning_seeds), workers=args.workers)
        configs[ARMS[5]] = bound_configs(study, ARMS[5], cal.constants)
        record |= {"calibrated": cal.constants.to_dict(), "calibrated_stderr": cal.stderr,
                   "calibrated_at_lr": start.lr}
        print(cal.table(), flush=True)
    if tune is not None:
        first = next(iter(targets.values()))
        res = tune(scenario, out=out / "tune" / f"{study.name}-{study.model}", trials=args.trials,
                   objective="time", budget=horizon, target=first, seeds=list(tuning_seeds), workers=args.workers,
                   sampler_seed=0)
        best = dict(res.best_document)
        weights = tuple(float(c.get("routing_weight", 1.0)) for c in best["clients"])
        configs[ARMS[6]] = [Config(ARMS[6], float(best["training"]["algorithm"]["lr"]), int(best["concurrency"]),
                                   weights, None, best)]
        record |= {"tune_best_params": res.best_params, "tune_best_value": res.best_value, "tune_started_at_lr": start.lr}
    (out / f"constants-{study.name}-{study.model}.json").write_text(json.dumps(record, indent=2, default=float))
    # the baseline's time metrics too, now that the targets are fixed (its runs are cached)
    tuning = tuning_frame(study, runner, configs, tuning_seeds, targets, index)
    # 3. choices: per arm and metric, from the tuning seeds only
    by_id = {i: c for c, i in index.items()}
    metrics = [f"accuracy@{b:g}" for b in budgets] + [f"time@{k}" for k in targets]
    choice_rows = []
    for arm in configs:
        part = tuning[tuning["arm"] == arm]
        for metric in metrics:
            if metric.startswith("accuracy@") and configs[arm][0].budget is not None:
                b = float(metric.split("@")[1])
                sub = part[part["bound_budget"] == b]
            elif metric.startswith("time@") and configs[arm][0].budget is not None:
                b = float(target_rows.set_index("target").loc[metric[5:], "from_budget"])
                sub = part[part["bound_budget"] == b]
            else:
                sub = part
            cid, score = choose(sub, metric, tuning_seeds, tiebreak=f"accuracy@{horizon:g}")
            c = by_id[cid]
            choice_rows.append({"scenario": study.name, "model": study.model, "arm": arm, "metric": metric,
                                "config": cid, "lr": c.lr, "concurrency": c.concurrency, "bound_budget": c.budget,
                                "tuning_score": score}
                               | {f"q[{g.name}]": x / float(np.dot(c.q, [h.count for h in study.scenario.groups]))
                                  for g, x in zip(study.scenario.groups, c.q)})
    choices = pd.DataFrame(choice_rows)
    # 4. evaluation seeds, each chosen configuration once
    chosen = sorted(set(choices["config"]))
    jobs, meta = [], []
    for cid in chosen:
        for seed in eval_seeds:
            jobs.append((by_id[cid], seed, run_document(study.base, by_id[cid], seed, horizon)))
            meta.append((cid, seed))
    run_rows, curve_rows = [], []
    times = np.asarray(runner.times)
    for (cid, seed), result in zip(meta, runner.run(jobs)):
        c = by_id[cid]
        curve = np.asarray(result["rows"])
        run_rows.append({"scenario": study.name, "model": study.model, "config": cid, "arm": c.arm, "seed": seed,
                         "lr": c.lr, "concurrency": c.concurrency, "bound_budget": c.budget,
                         "diverged": result["diverged"], "updates": result["updates"],
                         "throughput_run": result["throughput_run"], "throughput_window": result["throughput_window"],
                         "mean_staleness": result["mean_staleness"], "final_train_loss": result["final_train_loss"],
                         "wall_seconds": result["wall_seconds"], "cpu_seconds": result["cpu_seconds"]}
                        | {f"staleness[{g}]": v for g, v in result["staleness"].items()}
                        | metrics_of(curve, times, budgets, targets))
        curve_rows.append(pd.DataFrame({"scenario": study.name, "model": study.model, "config": cid, "seed": seed,
                                        "sim_time": times, "update": curve[:, 0], "test_loss": curve[:, 1],
                                        "test_accuracy": curve[:, 2]}))
    return tuning, choices, pd.DataFrame(run_rows), pd.concat(curve_rows, ignore_index=True), target_rows


# ---------------------------------------------------------------------------------------
# summary, tables, figures


def summarise(runs: pd.DataFrame, choices: pd.DataFrame, targets: pd.DataFrame, horizon: float) -> pd.DataFrame:
    """Per scenario, model, metric and arm: the evaluation-seed mean (accuracy, or time over the
    seeds that reach the target) with its t-interval, and the paired comparison with
    AsyncSGD-best-C's configuration for the same metric."""
    rows = []
    for (scenario, model, metric), part in choices.groupby(["scenario", "model", "metric"], sort=False):
        mine = runs[(runs["scenario"] == scenario) & (runs["model"] == model)]
        base_cid = int(part[part["arm"] == BASE]["config"].iloc[0])
        base = mine[mine["config"] == base_cid].set_index("seed")[metric]
        for c in part.itertuples():
            values = mine[mine["config"] == c.config].set_index("seed")
            v = values[metric]
            row = {"scenario": scenario, "model": model, "metric": metric, "arm": c.arm, "lr": c.lr,
                   "concurrency": c.concurrency, "throughput_run": values["throughput_run"].mean(),
                   "throughput_window": values["throughput_window"].mean(),
                   "mean_staleness": values["mean_staleness"].mean()}
            if metric.startswith("accuracy@"):
                mean, half = interval(v.dropna())
                row |= {"value": mean, "value_ci": half, "diverged": int(values["diverged"].sum())}
                row |= {} if c.arm == BASE else paired_accuracy(v, base)
            else:
                mean, half = interval(v[np.isfinite(v)])
                row |= {"value": mean, "value_ci": half}
                row |= paired_time(v, base, horizon) if c.arm != BASE else {
                    "reached": int(np.isfinite(v).sum()), "seeds": int(v.size)}
            rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, half: float, scale: float = 1.0, digits: int = 1, sign: bool = False) -> str:
    if not np.isfinite(mean):
        return "-"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = fmt.format(scale * mean)
    return text + (f" ± {scale * half:.{digits}f}" if np.isfinite(half) else "")


def markdown(summary: pd.DataFrame, targets: pd.DataFrame, args: argparse.Namespace, step: float) -> str:
    """summary.md: per scenario and model, one table of accuracies and one of times to target."""
    out = [f"Evaluation seeds 1..{args.seeds}, tuning seeds {', '.join(map(str, args.tuning_seeds))}; "
           f"evaluations every {step:g} units of simulated time. Means with 95% t-intervals over the "
           f"evaluation seeds; paired differences against `{BASE}` (its configuration for the same metric).\n"]
    for (scenario, model), part in summary.groupby(["scenario", "model"], sort=False):
        tg = targets[(targets["scenario"] == scenario) & (targets["model"] == model)]
        out.append(f"\n#### {scenario}, {model}\n")
        out.append("Accuracy at each budget (test accuracy, %; gain in points, paired):\n")
        out.append("| budget T | setting | lr | C | accuracy | gain vs AsyncSGD-best-C | updates per unit time "
               "(whole run) | mean staleness (after warm-up) |\n|---|---|---|---|---|---|---|---|")
        for r in part[part["metric"].str.startswith("accuracy@")].itertuples():
            gain = "-" if r.arm == BASE else _pm(r.difference, r.difference_ci, 100, 2, True)
            div = f" ({int(r.diverged)} diverged)" if r.diverged else ""
            out.append(f"| {r.metric[9:]} | {r.arm} | {r.lr:g} | {r.concurrency} | "
                       f"{_pm(r.value, r.value_ci, 100, 2)}{div} | {gain} | {r.throughput_run:.3g} | "
                       f"{r.mean_staleness:.3g} |")
        out.append("")
        for t in tg.itertuples():
            out.append(f"Time to {t.target} test accuracy (AsyncSGD-best-C's tuning-seed mean at T = "
                       f"{t.from_budget:g}); saving `1 - T_arm / T_base` paired over the seeds where both reach it:\n")
            out.append("| setting | lr | C | reached | time to target | saving vs AsyncSGD-best-C | "
                       "saving, never reached = T_max |\n|---|---|---|---|---|---|---|")
            for r in part[part["metric"] == f"time@{t.target}"].itertuples():
                if r.arm == BASE:
                    saving = censored = "-"
                else:
                    saving = (f"{_pm(r.saving, r.saving_ci, 100, 1, True)} %" if r.both else "-") + f" ({int(r.both)} seeds)"
                    censored = f"{_pm(r.saving_censored, r.saving_censored_ci, 100, 1, True)} %" if r.base_reached else "-"
                out.append(f"| {r.arm} | {r.lr:g} | {r.concurrency} | {int(r.reached)}/{int(r.seeds)} | "
                           f"{_pm(r.value, r.value_ci, 1, 0)} | {saving} | {censored} |")
            out.append("")
    return "\n".join(out) + "\n"


def _palette() -> dict[str, Any]:
    import seaborn as sns

    return dict(zip(ARMS, sns.color_palette("deep", len(ARMS))))


def _panels(count: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A figure with ``count`` panels, two per row."""
    import matplotlib.pyplot as plt

    cols = min(2, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def time_figure(summary: pd.DataFrame, path: Path) -> None:
    """Relative time saving against AsyncSGD-best-C per arm (mean over the evaluation seeds the
    baseline reaches, a miss of the arm counted as T_max, with its 95% paired t-interval), one
    panel per scenario and model, one marker per target; ``k/N``: seeds where the arm reaches
    the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    part = summary[summary["metric"].str.startswith("time@") & (summary["arm"] != BASE)]
    studies = list(dict.fromkeys(zip(part["scenario"], part["model"])))
    fig, axes = _panels(len(studies), 7.0, 4.2)
    arms = [a for a in ARMS if a != BASE and a in set(part["arm"])]
    markers = ["o", "s", "^", "D"]
    for ax, (scenario, model) in zip(axes, studies):
        mine = part[(part["scenario"] == scenario) & (part["model"] == model)]
        low = np.nanmin(100 * (mine["saving_censored"] - mine["saving_censored_ci"].fillna(0)))
        for k, metric in enumerate(dict.fromkeys(mine["metric"])):
            rows = mine[mine["metric"] == metric].set_index("arm")
            for j, arm in enumerate(arms):
                if arm not in rows.index:
                    continue
                r = rows.loc[arm]
                y = j + 0.22 * (k - 0.5)
                ax.errorbar(100 * r["saving_censored"], y, xerr=100 * np.nan_to_num(r["saving_censored_ci"]),
                            fmt=markers[k % 4], color=_palette()[arm], capsize=3,
                            label=f"target {metric[5:]}" if j == 0 else None)
                ax.annotate(f"{int(r['reached'])}/{int(r['seeds'])}", (100 * r["saving_censored"], y),
                            xytext=(6, 2), textcoords="offset points", fontsize=7)
        ax.axvline(0, color="k", lw=1)
        ax.axvline(10, color="k", lw=1, ls=":")
        ax.set_xlim(left=min(-20.0, low - 10))
        ax.set_yticks(range(len(arms)), arms, fontsize=8)
        ax.set(xlabel="time saving vs AsyncSGD-best-C (%)", title=f"{scenario}, {model} (a miss counts as T_max)")
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_figure(curves: pd.DataFrame, choices: pd.DataFrame, targets: pd.DataFrame, path: Path) -> None:
    """Test accuracy against simulated time (mean over the evaluation seeds, 95% band) of every
    arm's configuration for the first target, targets dashed; one panel per scenario and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    studies = list(dict.fromkeys(zip(choices["scenario"], choices["model"])))
    fig, axes = _panels(len(studies), 6.5, 4.6)
    for ax, (scenario, model) in zip(axes, studies):
        tg = targets[(targets["scenario"] == scenario) & (targets["model"] == model)]
        metric = f"time@{tg['target'].iloc[0]}"
        chosen = choices[(choices["scenario"] == scenario) & (choices["model"] == model) & (choices["metric"] == metric)]
        mine = curves[(curves["scenario"] == scenario) & (curves["model"] == model)]
        for c in chosen.itertuples():
            part = mine[mine["config"] == c.config]
            ys = np.stack([g["test_accuracy"].to_numpy() for _, g in part.groupby("seed")])
            t = part[part["seed"] == part["seed"].iloc[0]]["sim_time"].to_numpy()
            mean = np.nanmean(ys, axis=0)
            half = stats.t.ppf(0.5 + LEVEL / 2, len(ys) - 1) * np.nanstd(ys, axis=0, ddof=1) / np.sqrt(len(ys))
            ax.plot(t, 100 * mean, color=_palette()[c.arm], lw=1.8, label=f"{c.arm} (C = {c.concurrency}, lr = {c.lr:g})")
            ax.fill_between(t, 100 * (mean - half), 100 * (mean + half), color=_palette()[c.arm], alpha=0.15)
        for a in tg["accuracy"]:
            ax.axhline(100 * a, color="k", lw=0.8, ls="--")
        ax.set(xlabel="simulated time", ylabel="test accuracy (%)", title=f"{scenario}, {model}", ylim=(20, 100))
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=["heterogeneous", "edge_devices"],
                        help="names under scenarios/ or paths to YAML files")
    parser.add_argument("--models", nargs="+", default=["mlp", "logistic"])
    parser.add_argument("--seeds", type=int, default=10, help="evaluation seeds 1..N")
    parser.add_argument("--tuning-seeds", type=int, nargs="+", default=list(TUNING_SEEDS))
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS), help="step-size grid of every arm")
    parser.add_argument("--concurrencies", type=int, nargs="+", default=list(CONCURRENCIES),
                        help="concurrency grid of AsyncSGD-best-C")
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS),
                        help="budgets of simulated time; the runs last the largest, the others give the targets")
    parser.add_argument("--evaluations", type=int, default=100, help="evaluations per run, evenly spaced in time")
    parser.add_argument("--trials", type=int, default=24, help="trials of fedsim tune")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-calibrated", action="store_true", help="leave out the calibrated arm")
    parser.add_argument("--no-tuned", action="store_true", help="leave out the fedsim tune arm")
    parser.add_argument("--out", default=str(REPO / "results" / "experiment"))
    parser.add_argument("--fresh", action="store_true",
                        help="run everything again (default: reuse the runs of --out/cache.jsonl)")
    parser.add_argument("--summarise-only", action="store_true",
                        help="rewrite the summary and figures from the CSV files already in --out")
    args = parser.parse_args(argv)
    if len(args.budgets) < 2:
        parser.error("--budgets: give at least two (the smaller ones give the targets)")
    try:
        return experiment(args)
    except ScenarioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
