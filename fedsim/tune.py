"""``fedsim tune``: routing, concurrency and step size chosen by training in the simulator.

The loss-bound optimiser (:mod:`fedsim.optimize`) picks the routing ``p`` and the concurrency
``C`` from a bound whose constants are poorly known. This module asks the simulator instead:
every trial is a setting ``(p, C, eta)`` trained for real (:func:`fedsim.run.run_scenario`)
on a few seeds, and Optuna's TPE sampler proposes the next settings from the results.

Search space (:func:`tune_space`)
    * routing, ``--family power`` (default): ``p_i`` proportional to ``mu_i^beta``, ``mu_i =
      1 / E[S_i]`` the client's compute rate, ``beta`` in :data:`BETA_RANGE` = [-1, 3]:
      ``beta = 0`` is uniform routing (AsyncSGD), ``beta = 1`` is ``routing: proportional``,
      ``beta < 0`` favours slow clients. ``--family groups``: one per-client weight per group,
      ``weight[<group>]`` relative to the first group's (which is 1), log-uniform in
      :data:`WEIGHT_RANGE`. A trial's routing is written as ``routing: weights`` with each
      group's ``routing_weight``;
    * ``concurrency``: an integer on a log scale in ``[optimization.concurrency.min, max]``
      (default ``[1, n]``);
    * ``lr`` (``training.algorithm.lr``): log scale in ``[eta0 / 10, 10 eta0]``,
      ``eta0`` the scenario's learning rate (:data:`LR_FACTOR`).
    A parameter whose range is a single value (one group, ``C`` fixed by the scenario's
    range) is not searched.

Objective (:func:`run_value`), on a budget ``T`` of simulated time (``horizon.time`` or
``--budget``), averaged over the seeds (scenario seeds, so the tuning seeds can be kept apart
from the seeds a result is later evaluated on):
    * ``accuracy`` (maximised): the final test accuracy at ``T`` (the last evaluation of the
      learning curve, made when the run ends);
    * ``time`` (minimised): the simulated time of the first evaluation whose test accuracy
      reaches ``--target``. A run that never reaches it scores ``T (1 + (target - a) /
      target)``, ``a`` its best test accuracy: above every run that reaches the target, and
      ordered by how close the run came, up to ``2 T``.
    A run whose training diverges (a NaN loss) scores the worst value: accuracy 0, time ``2 T``.

The engine (:func:`search`) knows nothing of fedsim: parameters in, one value per (trial,
seed) out. Trials are asked in batches of fixed trial numbers (``--batch``, default 8), and
run by successive halving over seeds: at rung ``r`` every surviving trial of the batch has
run on its first ``s_r`` seeds, ``s = 1, 3, 9, ...`` (:data:`REDUCTION` = 3) up to ``K``; its
value there is the mean over those seeds, and it goes on only if that value ranks in the best
``ceil(m / 3)`` of the ``m`` trials of the study (up to the end of its batch) that reached the
rung; the others are pruned. The runs of a rung go to the local process pool or to Ray
(:func:`fedsim.sweep.run_jobs`) as one list.

Determinism and resumption. The study lives in an Optuna RDB storage (``OUT/study.db``,
SQLite). Each ask uses a fresh ``TPESampler(seed=sampler_seed + trial number)`` over the
trials finished before the trial's batch (all of them, as every batch ends before the next
is asked), and every prune decision uses values fixed when its rung ends, so a study's
trials depend only on its settings: not on the number of workers, nor on the order in
which runs end. Every run's value is stored when it arrives; a killed tune run again with the
same settings asks the missing trials of the current batch, runs only the runs it lacks (a
trial left ``RUNNING`` goes on with its own parameters) and ends with the same trials, hence
the same best trial, as an uninterrupted one.
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.errors import ScenarioError

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from fedsim.scenario import Scenario

__all__ = ["BETA_RANGE", "FAMILIES", "OBJECTIVES", "Param", "Request", "TuneResult", "search", "trials_frame",
           "tune", "tune_space"]

OBJECTIVES = ("accuracy", "time")
FAMILIES = ("power", "groups")
BETA_RANGE = (-1.0, 3.0)
WEIGHT_RANGE = (1e-3, 1e3)
LR_FACTOR = 10.0
REDUCTION = 3
DEFAULT_BATCH = 8
DEFAULT_TRIALS = 40
TUNE_SEED_BASE = 100  # --seeds K: scenario seeds 101..100+K
DEFAULT_SEEDS = (101, 102, 103)
STUDY_FILE = "study.db"
BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.parquet"
FIGURE_FILE = "search.png"
STUDY_NAME = "fedsim-tune"
ASYNCSGD = "AsyncSGD (uniform, C = n)"
ANALYTIC = "analytic wall-clock optimum"
SAMPLED = "tpe"


def _optuna() -> Any:
    """The optuna module (imported here, on first use), with its log quiet."""
    try:
        import optuna
    except ImportError:
        raise ScenarioError("tune", "Optuna is not installed; pip install 'fedsim[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ---------------------------------------------------------------------------------------
# the engine


@dataclass(frozen=True)
class Param:
    """One dimension of the search: a float or an integer in ``[low, high]``, on a log scale
    or not."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def distribution(self) -> Any:
        optuna = _optuna()
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def suggest(self, trial: Any) -> float | int:
        """The trial's value of this parameter (sampled by the study's sampler unless fixed)."""
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def clip(self, value: float) -> float | int:
        """``value`` moved into the range (rounded for an integer)."""
        x = min(max(value, self.low), self.high)
        return int(round(x)) if self.integer else float(x)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "low": self.low, "high": self.high, "log": self.log, "integer": self.integer}


@dataclass(frozen=True)
class Request:
    """One evaluation the engine asks for: trial ``trial``'s parameters on the seed of index
    ``seed_index`` in the study's seed list (``seed`` is that list's item)."""

    trial: int
    params: Mapping[str, Any]
    seed: Any
    seed_index: int


#: ``evaluate(requests, done)`` computes every request, in any order and in parallel if it
#: likes, and calls ``done(request, value, wall_seconds, error)`` for each as it finishes
#: (``value`` None and ``error`` a one-line message when it failed).
Evaluate = Callable[[list[Request], Callable[[Request, "float | None", float, "str | None"], None]], None]


def seed_rungs(k: int, reduction: int = REDUCTION) -> list[int]:
    """Seeds run by the end of each rung of successive halving: 1, r, r^2, ... below k, then k."""
    rungs = [1]
    while rungs[-1] * reduction < k:
        rungs.append(rungs[-1] * reduction)
    return rungs + [k] if rungs[-1] < k else rungs


def _seed_key(k: int) -> str:
    return f"value[{k}]"


def _wall_key(k: int) -> str:
    return f"wall[{k}]"


def _sampler(optuna: Any, seed: int, startup: int) -> Any:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=False)


def search(space: Sequence[Param], evaluate: Evaluate, storage: Any, *, trials: int, seeds: Sequence[Any] = (0,),
           direction: str = "maximize", batch: int = DEFAULT_BATCH, reduction: int = REDUCTION,
           sampler_seed: int = 0, startup: int = 10, enqueue: Iterable[tuple[Mapping[str, Any], str]] = (),
           settings: Mapping[str, Any] | None = None, where: str = "storage",
           progress: Callable[[Any, int, int], None] | None = None) -> optuna.Study:
    """Run (or resume) the study in ``storage`` until it holds ``trials`` finished trials.

    ``space``: the parameters. ``evaluate``: see :data:`Evaluate`; a trial's value is the mean
    of its per-seed values over ``seeds``. ``direction``: ``maximize`` or ``minimize``.
    ``batch``: trials asked together (the unit of parallelism and of determinism);
    ``reduction``: the successive-halving factor over seeds (see the module docstring);
    ``startup``: trials sampled at random before TPE models the history; ``enqueue``:
    ``(params, label)`` pairs run first (warm starts), in order. ``settings``: anything else
    the values depend on; the study records them with the arguments above, and resuming a
    study with other ones is a :class:`ScenarioError` on ``where``. ``progress(study, done,
    total)`` is called after every batch. Returns the study (its trials carry the per-seed
    values as user attributes ``value[k]`` and ``wall[k]``, and ``source``: the warm start's
    label or ``tpe``).
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    params = tuple(space)
    dists = {p.name: p.distribution() for p in params}
    seeds = list(seeds)
    enqueue = [(dict(p), label) for p, label in enqueue]
    for p, label in enqueue:
        if missing := [q.name for q in params if q.name not in p]:
            raise ValueError(f"the warm start {label!r} gives no {', '.join(missing)}")
    record = json.loads(json.dumps({
        "space": [p.to_dict() for p in params], "seeds": seeds, "direction": direction, "batch": batch,
        "reduction": reduction, "sampler_seed": sampler_seed, "startup": startup,
        "enqueue": [[p, label] for p, label in enqueue], **(settings or {})}))
    # every trial is created fully formed (enqueued with its parameters) and then asked, so
    # the study's own sampler never samples: a kill mid-ask leaves a trial that completes the same
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, load_if_exists=True,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", record)
    elif stored != record:
        differ = sorted(k for k in set(stored) | set(record) if stored.get(k) != record.get(k))
        raise ScenarioError(where, f"holds a study of other settings ({', '.join(differ)} differ); rerun with the "
                            "same settings to resume it, or give another folder")
    by_name = {q.name: q for q in params}
    if not study.user_attrs.get("enqueued"):  # a kill while enqueuing leaves a prefix of them
        for p, label in enqueue[len(study.get_trials(deepcopy=False)):]:
            study.enqueue_trial({k: by_name[k].clip(v) for k, v in p.items() if k in by_name},
                                user_attrs={"source": label})
        study.set_user_attr("enqueued", True)
    rungs = seed_rungs(len(seeds), reduction)
    sign = -1.0 if direction == "maximize" else 1.0

    for start in range(0, trials, batch):
        end = min(start + batch, trials)
        current = {t.number: t for t in study.get_trials(deepcopy=False)}
        if all(n in current and current[n].state.is_finished() for n in range(start, end)):
            continue
        history = [t for t in study.get_trials() if t.number < start and t.state.is_finished()]
        for number in range(start, end):
            if number not in current:  # trial numbers are created in order
                study.enqueue_trial(_sample(optuna, history, dists, direction, sampler_seed + number, startup),
                                    user_attrs={"source": SAMPLED})
            current = {t.number: t for t in study.get_trials(deepcopy=False)}
            if current[number].state == TrialState.WAITING:
                asked = study.ask()
                if asked.number != number:
                    raise ScenarioError(where, f"the study got trial {asked.number} where {number} was due: "
                                        "another process is writing it; run one tune per study")
            if not current[number].state.is_finished():
                trial = optuna.trial.Trial(study, current[number]._trial_id)
                for param in params:  # the enqueued values (a no-op for those already set)
                    param.suggest(trial)
        _run_batch(study, range(start, end), rungs, seeds, evaluate, sign, reduction)
        if progress is not None:
            progress(study, end, trials)
    return study


def _sample(optuna: Any, history: list[Any], dists: Mapping[str, Any], direction: str, seed: int,
            startup: int) -> dict[str, Any]:
    """The parameters TPE proposes, with ``TPESampler(seed)``, after the finished trials ``history``."""
    sandbox = optuna.create_study(direction=direction, sampler=_sampler(optuna, seed, startup))
    sandbox.add_trials(history)
    return dict(sandbox.ask(fixed_distributions=dict(dists)).params)


def _mean(trial: Any, count: int) -> float:
    """The mean of a trial's values on its first ``count`` seeds."""
    return sum(trial.user_attrs[_seed_key(k)] for k in range(count)) / count


def _run_batch(study: Any, numbers: range, rungs: list[int], seeds: list[Any], evaluate: Evaluate, sign: float,
               reduction: int) -> None:
    """Successive halving over seeds for the trials ``numbers`` (see the module docstring);
    ``sign`` is -1 when larger values are better."""
    from optuna.trial import Trial, TrialState

    for rung, count in enumerate(rungs):
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        alive = [trials[n] for n in numbers if trials[n].state == TrialState.RUNNING]
        if not alive:
            return
        requests = [Request(t.number, dict(t.params), seeds[k], k) for t in alive for k in range(count)
                    if _seed_key(k) not in t.user_attrs]
        ids = {t.number: t._trial_id for t in alive}
        failed: dict[int, str] = {}

        def done(request: Request, value: float | None, wall: float, error: str | None) -> None:
            if error is not None or value is None or not math.isfinite(value):
                failed.setdefault(request.trial, error or f"the value is {value}")
                return
            handle = Trial(study, ids[request.trial])
            handle.set_user_attr(_wall_key(request.seed_index), float(wall))
            handle.set_user_attr(_seed_key(request.seed_index), float(value))  # last: marks the run done

        evaluate(requests, done)
        for number, error in sorted(failed.items()):
            Trial(study, ids[number]).set_user_attr("error", error)
            study.tell(number, state=TrialState.FAIL)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        alive = [trials[n] for n in numbers if trials[n].state == TrialState.RUNNING]
        for t in alive:
            if count not in t.intermediate_values:
                Trial(study, t._trial_id).report(_mean(t, count), count)
        if rung == len(rungs) - 1:
            for t in alive:
                study.tell(t.number, _mean(t, count))
            return
        # the trials up to the end of this batch that reached this rung, best first (ties: lower number)
        reached = sorted((sign * t.intermediate_values[count], t.number) for t in study.get_trials(deepcopy=False)
                         if t.number < numbers.stop and count in t.intermediate_values)
        keep = {n for _, n in reached[:math.ceil(len(reached) / reduction)]}
        for t in alive:
            if t.number not in keep:
                study.tell(t.number, state=TrialState.PRUNED)


def trials_frame(study: Any, space: Sequence[Param], seeds: Sequence[Any]) -> pd.DataFrame:
    """One row per trial: ``number``, ``state`` (complete, pruned, fail, running, waiting),
    ``source`` (a warm start's label or ``tpe``), the parameters, ``value`` (the mean over every
    seed for a complete trial; for a pruned one the mean over the seeds it ran), ``seeds_run``,
    ``value[<seed>]`` per seed (null where not run), ``wall_seconds`` (the trial's runs, summed),
    ``error`` (a failed trial's)."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        ran = [k for k in range(len(seeds)) if _seed_key(k) in t.user_attrs]
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                     if t.intermediate_values else None)
        rows.append({"number": t.number, "state": t.state.name.lower(), "source": t.user_attrs.get("source"),
                     **{p.name: t.params.get(p.name) for p in space},
                     "value": float("nan") if value is None else float(value), "seeds_run": len(ran),
                     **{f"value[{s}]": t.user_attrs.get(_seed_key(k), float("nan")) for k, s in enumerate(seeds)},
                     "wall_seconds": sum(t.user_attrs.get(_wall_key(k), 0.0) for k in ran),
                     "error": t.user_attrs.get("error")})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------
# fedsim's side: the space, the trial scenarios, the value of a run


def tune_space(scenario: Scenario, family: str = "power") -> tuple[Param, ...]:
    """The parameters searched for ``scenario`` (see the module docstring)."""
    params = []
    rates = [g.service.rate for g in scenario.groups]
    if family == "power" and max(rates) > min(rates):
        params.append(Param("beta", *BETA_RANGE))
    elif family == "groups":
        params += [Param(f"weight[{g.name}]", *WEIGHT_RANGE, log=True) for g in scenario.groups[1:]]
    c_min, c_max = _concurrency_range(scenario)
    if c_max > c_min:
        params.append(Param("concurrency", c_min, c_max, log=True, integer=True))
    lr = float(scenario.training.algorithm["lr"])
    params.append(Param("lr", lr / LR_FACTOR, lr * LR_FACTOR, log=True))
    return tuple(params)


def _concurrency_range(scenario: Scenario) -> tuple[int, int]:
    spec = scenario.optimization
    return (spec.c_min, spec.c_max) if spec is not None else (1, scenario.n_clients)


def group_weights(scenario: Scenario, params: Mapping[str, Any], family: str) -> list[float]:
    """Per-client routing weight of each group: ``(mu_g / mu_ref)^beta`` (power family, ``mu_ref``
    the rate whose power is largest, so the largest weight is 1), or 1 for the first group and
    ``weight[<group>]`` for the others (groups family)."""
    if family == "groups":
        return [1.0] + [float(params.get(f"weight[{g.name}]", 1.0)) for g in scenario.groups[1:]]
    beta = float(params.get("beta", 0.0))
    logs = [beta * math.log(g.service.rate) for g in scenario.groups]
    return [math.exp(x - max(logs)) for x in logs]


def trial_document(scenario: Scenario, params: Mapping[str, Any], family: str, budget: float,
                   seed: int | None = None) -> dict[str, Any]:
    """The scenario mapping of a setting: the scenario as written with ``routing: weights`` and
    the family's weights, the trial's ``concurrency`` and ``training.algorithm.lr``, the horizon
    ``{time: budget}`` (the scenario's warm-up kept when it is below the budget) and ``seed``
    (default the scenario's)."""
    doc = copy.deepcopy(dict(scenario.raw))
    doc["routing"] = "weights"
    for group, weight in zip(doc["clients"], group_weights(scenario, params, family)):
        group["routing_weight"] = weight
    c_min, _ = _concurrency_range(scenario)
    doc["concurrency"] = int(params.get("concurrency", c_min))
    doc["training"]["algorithm"]["lr"] = float(params.get("lr", scenario.training.algorithm["lr"]))
    warmup = scenario.horizon.warmup
    doc["horizon"] = {"time": float(budget)} | ({"warmup": warmup} if scenario.horizon.time is not None
                                                and warmup is not None and warmup < budget else {})
    if isinstance(doc.get("optimization"), Mapping):
        doc["optimization"] = {k: v for k, v in doc["optimization"].items() if k != "objective"}
    if seed is not None:
        doc["seed"] = int(seed)
    return doc


def worst_value(objective: str, budget: float) -> float:
    """The value of a run whose training diverged: accuracy 0, or twice the budget."""
    return 0.0 if objective == "accuracy" else 2.0 * budget


def run_value(files: Mapping[str, bytes], objective: str, budget: float, target: float | None) -> float:
    """A run's value from its run folder's files (``summary.json``, ``training.csv``): its final
    test accuracy, or its time to ``target`` (see the module docstring for the penalty)."""
    import pandas as pd

    from fedsim.sweep import time_to_accuracy

    summary = json.loads(files["summary.json"])
    if objective == "accuracy":
        accuracy = summary.get("final_accuracy")
        return 0.0 if accuracy is None or not math.isfinite(accuracy) else float(accuracy)
    curve = pd.read_csv(io.BytesIO(files["training.csv"]))
    reached = time_to_accuracy(curve, target)
    if reached is not None:
        return reached
    best = curve["test_accuracy"].max()
    best = 0.0 if not math.isfinite(best) else float(best)
    return budget * (1.0 + (target - best) / target)


def warm_starts(scenario: Scenario, family: str, budget: float) -> list[tuple[dict[str, Any], str]]:
    """The first trials: the analytic wall-clock optimum for the budget (as ``fedsim optimize
    --objective wall-clock`` computes it, constants estimated from the training section where
    the scenario does not give them), its routing mapped to the family: exactly for ``groups``,
    for ``power`` the ``beta`` of the least-squares fit ``log q_g = c + beta log mu_g`` weighted
    by the group counts; and AsyncSGD (uniform routing, ``C = n`` or the range's maximum, the
    scenario's learning rate)."""
    import dataclasses

    import numpy as np

    from fedsim.optimize.config import complete_constants, group_network, parse_optimization
    from fedsim.optimize.objective import Objective
    from fedsim.optimize.solver import optimise

    spec = scenario.optimization or parse_optimization(None, scenario.groups, scenario.horizon, scenario.server)
    spec, _ = complete_constants(dataclasses.replace(spec, budget=budget), scenario.training, scenario.groups,
                                 scenario.seed)
    optimum = optimise(group_network(scenario.groups, scenario.server), spec.constants, Objective.wall_clock(budget),
                       c_min=spec.c_min, c_max=spec.c_max)
    lr = float(scenario.training.algorithm["lr"])
    q = np.asarray(optimum.q, dtype=float)
    if family == "groups":
        routing = {f"weight[{g.name}]": float(q[k] / q[0]) for k, g in enumerate(scenario.groups) if k}
    else:
        x = np.log([g.service.rate for g in scenario.groups])
        w = np.array([g.count for g in scenario.groups], dtype=float)
        xc = x - np.average(x, weights=w)
        spread = float(np.sum(w * xc ** 2))
        routing = {"beta": float(np.sum(w * xc * np.log(q)) / spread) if spread > 0 else 0.0}
    asyncsgd = {"beta": 0.0} if family == "power" else {f"weight[{g.name}]": 1.0 for g in scenario.groups[1:]}
    c_max = _concurrency_range(scenario)[1]
    return [(routing | {"concurrency": int(optimum.concurrency), "lr": lr}, ANALYTIC),
            (asyncsgd | {"concurrency": min(scenario.n_clients, c_max), "lr": lr}, ASYNCSGD)]


def _evaluator(scenario: Scenario, family: str, budget: float, objective: str, target: float | None,
               workers: int | None, ray: Any) -> Evaluate:
    """Requests run as sweep cells (:func:`fedsim.sweep.run_jobs`): each the trial's scenario on
    the request's seed, its value by :func:`run_value`."""
    from fedsim.plugins import registered_modules
    from fedsim.sweep import CellJob, run_jobs

    base_dir = Path(scenario.source).parent.resolve() if scenario.source is not None else Path.cwd()
    plugins = registered_modules()

    def evaluate(requests: list[Request], done: Callable[..., None]) -> None:
        by_name = {f"trial={r.trial}__seed={r.seed}": r for r in requests}
        jobs = [CellJob(name, trial_document(scenario, r.params, family, budget, r.seed), base_dir, False, plugins)
                for name, r in by_name.items()]

        def finished(outcome: Any) -> None:
            request = by_name[outcome.name]
            if outcome.error is None:
                wall = float(json.loads(outcome.files["summary.json"]).get("wall_seconds") or 0.0)
                done(request, run_value(outcome.files, objective, budget, target), wall, None)
            elif outcome.error.startswith("TrainingDiverged"):
                done(request, worst_value(objective, budget), 0.0, None)
            else:
                done(request, None, 0.0, outcome.error)

        run_jobs(jobs, finished, workers=workers, ray=ray)

    return evaluate


# ---------------------------------------------------------------------------------------
# the command


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found. ``best_document`` is the scenario mapping of the best trial
    (its own seed, horizon ``{time: budget}``), loadable by :func:`fedsim.api.load_scenario`
    and written as ``best.yaml``; ``trials`` is trials.parquet (:func:`trials_frame`)."""

    scenario: str
    objective: str
    budget: float
    target: float | None
    seeds: tuple[int, ...]
    family: str
    best_number: int
    best_params: dict[str, Any]
    best_value: float
    best_seed_values: tuple[float, ...]
    best_document: dict[str, Any]
    trials: pd.DataFrame
    runs: int  # runs made (pruned trials stop early)
    runs_unpruned: int  # trials times seeds
    out: Path
    wall_seconds: float


def _check_settings(scenario: Scenario, trials: int, objective: str, budget: float | None, target: float | None,
                    seeds: Sequence[int], family: str, batch: int) -> tuple[float, tuple[int, ...]]:
    """Validate the arguments of :func:`tune`; the budget and the seeds to use."""
    from fedsim.fields import check_int, check_number
    from fedsim.scenario import MAX_SEED

    if objective not in OBJECTIVES:
        raise ScenarioError("--objective", f"must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if family not in FAMILIES:
        raise ScenarioError("--family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    check_int(trials, "--trials", 1)
    check_int(batch, "--batch", 1)
    if scenario.training is None:
        raise ScenarioError("training", "fedsim tune trains the model of the scenario: it needs a training: section")
    if scenario.training.synchronous:
        raise ScenarioError("training.algorithm.name", f"{scenario.training.algorithm.name} runs rounds, without "
                            "routing or concurrency to tune; use an asynchronous algorithm")
    if budget is None:
        if scenario.horizon.time is None:
            raise ScenarioError("--budget", "missing: the scenario's horizon counts updates; give a budget of "
                                "simulated time (--budget T) or horizon.time")
        budget = scenario.horizon.time
    budget = check_number(budget, "--budget", positive=True)
    if objective == "time":
        if target is None:
            raise ScenarioError("--target", "missing: --objective time needs a test accuracy to reach, in (0, 1]")
        if not 0 < check_number(target, "--target") <= 1:
            raise ScenarioError("--target", f"must be a test accuracy in (0, 1], got {target!r}")
    elif target is not None:
        raise ScenarioError("--target", "only with --objective time")
    seeds = tuple(seeds)
    if not seeds:
        raise ScenarioError("--seed-list", "must give at least one seed")
    for s in seeds:
        check_int(s, "--seed-list", 0, MAX_SEED)
    if len(set(seeds)) < len(seeds):
        raise ScenarioError("--seed-list", f"seeds must be distinct, got {list(seeds)}")
    return float(budget), seeds


def tune(scenario: Any, *, out: str | Path | None = None, trials: int = DEFAULT_TRIALS, objective: str = "accuracy",
         budget: float | None = None, target: float | None = None, seeds: Sequence[int] = DEFAULT_SEEDS,
         family: str = "power", workers: int | None = None, ray: str | None = None, sampler_seed: int = 0,
         batch: int = DEFAULT_BATCH, progress: Callable[[Any, int, int], None] | None = None) -> TuneResult:
    """Search the routing family, the concurrency and the learning rate of ``scenario`` (a file,
    a mapping or a :class:`~fedsim.scenario.Scenario`) by training in the simulator; see the
    module docstring. ``out`` (default ``results/<scenario>-tune``) holds the study and gets
    ``best.yaml``, ``trials.parquet`` and ``search.png``; run again with the same arguments it
    resumes the study (more ``trials`` extend it). ``workers``: local processes (default the
    available cores); ``ray``: a Ray address (:func:`fedsim.sweep.ray_session`). Neither
    changes the result; ``batch`` and ``sampler_seed`` do.
    """
    import yaml

    from fedsim.api import load_scenario
    from fedsim.fields import check_int
    from fedsim.folders import check_out, disk_error
    from fedsim.report import atomic_write
    from fedsim.sweep import ray_session

    start = time.perf_counter()
    sc = load_scenario(scenario)
    budget, seeds = _check_settings(sc, trials, objective, budget, target, seeds, family, batch)
    if workers is not None:
        check_int(workers, "--workers", 1)
    stem = Path(sc.source).stem if sc.source is not None else sc.name
    out = check_out(Path(out) if out is not None else Path("results") / f"{stem}-tune")
    _optuna()
    space = tune_space(sc, family)
    settings = {"scenario": json.loads(json.dumps(dict(sc.raw))), "objective": objective, "budget": budget,
                "target": target, "family": family}
    with ray_session(ray, workers) as ray_module:
        enqueue = warm_starts(sc, family, budget)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, out) from None
        study = search(space, _evaluator(sc, family, budget, objective, target, workers, ray_module),
                       f"sqlite:///{(out / STUDY_FILE).resolve()}", trials=trials, seeds=seeds,
                       direction="maximize" if objective == "accuracy" else "minimize", batch=batch,
                       sampler_seed=sampler_seed, enqueue=enqueue, settings=settings, where="--out",
                       progress=progress)
    from optuna.trial import TrialState

    frame = trials_frame(study, space, seeds)
    done = [t for t in study.get_trials(deepcopy=False) if t.number < trials and t.state == TrialState.COMPLETE]
    if not done:
        first = frame["error"].dropna()
        raise ScenarioError("--trials", "no trial finished" + (f"; the first error: {first.iloc[0]}" if len(first)
                                                               else ""))
    sign = 1.0 if objective == "accuracy" else -1.0
    best = max(done, key=lambda t: (sign * t.value, -t.number))
    document = trial_document(sc, best.params, family, budget)
    header = (f"# fedsim tune: trial {best.number} of {trials}, {objective} {best.value:.6g} over seeds "
              f"{', '.join(map(str, seeds))} (budget {budget:g})\n")
    figure = search_figure(frame, space, objective, f"{sc.name}: tune, {objective} at T = {budget:g}")
    try:
        atomic_write(out / BEST_FILE, lambda tmp: tmp.write_text(header + yaml.safe_dump(document, sort_keys=False)))
        atomic_write(out / TRIALS_FILE, lambda tmp: frame.to_parquet(tmp, index=False))
        atomic_write(out / FIGURE_FILE, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    except OSError as exc:
        raise disk_error(exc, out) from None
    return TuneResult(scenario=sc.name, objective=objective, budget=budget, target=target, seeds=seeds,
                      family=family, best_number=best.number, best_params=dict(best.params),
                      best_value=float(best.value),
                      best_seed_values=tuple(best.user_attrs[_seed_key(k)] for k in range(len(seeds))),
                      best_document=document, trials=frame, runs=int(frame["seeds_run"].sum()),
                      runs_unpruned=len(frame) * len(seeds), out=out, wall_seconds=time.perf_counter() - start)


def search_figure(frame: pd.DataFrame, space: Sequence[Param], objective: str, title: str) -> Any:
    """The search: each trial's value against its number with the best so far (complete trials
    as dots, warm starts as stars, pruned trials as crosses at the mean over the seeds they ran),
    then the value against each parameter (log axes for log-scale parameters)."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from fedsim.plots import figure_style, palette

    label = "final test accuracy" if objective == "accuracy" else "time to target"
    complete = frame[frame["state"] == "complete"]
    pruned = frame[frame["state"] == "pruned"]
    warm = complete[complete["source"] != SAMPLED]
    panels = 1 + len(space)
    cols = 2 if panels == 4 else min(panels, 3)
    rows = math.ceil(panels / cols)
    with figure_style():
        fig = Figure(figsize=(4.6 * cols, 3.6 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        blue, orange, green = palette(3)
        ax = axes[0]
        ax.scatter(pruned["number"], pruned["value"], marker="x", color="0.6", label="pruned (fewer seeds)")
        ax.scatter(complete["number"], complete["value"], color=blue, s=18, label="complete")
        ax.scatter(warm["number"], warm["value"], marker="*", s=120, color=green, label="warm start", zorder=3)
        if len(complete):
            ordered = complete.sort_values("number")
            best = (np.maximum if objective == "accuracy" else np.minimum).accumulate(ordered["value"].to_numpy())
            ax.step([*ordered["number"], frame["number"].max()], [*best, best[-1]], where="post", color=orange,
                    label="best so far")
        ax.set(xlabel="trial", ylabel=label)
        ax.legend(fontsize="small")
        for ax, param in zip(axes[1:], space):
            ax.scatter(pruned[param.name], pruned["value"], marker="x", color="0.6")
            ax.scatter(complete[param.name], complete["value"], color=blue, s=18)
            ax.scatter(warm[param.name], warm["value"], marker="*", s=120, color=green, zorder=3)
            if param.log:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(xlabel=param.name, ylabel=label)
        for ax in axes[panels:]:
            ax.set_visible(False)
        fig.suptitle(title)
    return fig
