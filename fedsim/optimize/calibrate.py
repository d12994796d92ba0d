r"""Constants of the loss bound calibrated on short pilot training runs.

The bound of :mod:`fedsim.optimize.objective`,

    B(p, C; K) = A / (eta K) + eta L S V(p) + eta^2 L^2 S D(p, C),
    V(p) = sum_i 1 / (n^2 p_i),   D(p, C) = sum_i E[tau_i](p, C) / (n^2 p_i),

is used as a model of the training loss after ``K`` updates at routing ``p`` and concurrency
``C``. Its constants estimated at ``w_0`` (:mod:`fedsim.optimize.constants`) are local and
worst-case; here they are fitted to what training actually does.

The model fitted
----------------
Every evaluation of every pilot run gives one observation ``(K, V, D, loss)`` (``loss`` the
training objective ``(1/n) sum_i f_i(w)`` after ``K`` updates; ``V`` and ``D`` the analytical
factors of the run's ``(p, C)``), fitted by the linear model

    loss = f_s + a / K + b V + c D + error,   a = A / eta,  b = eta L S,  c = eta^2 L^2 S,

with one intercept ``f_s`` per seed ``s`` (a seed fixes the data, the partition and the
initial model, hence the loss floor, at every design point). The constants follow:

    A = a eta,   L = c / (eta b),   S = b^2 / c

(``c / b = eta L``, and ``b^2 / c = S``). ``a, b, c`` are constrained to be ``>= 0`` (the bound's
terms are non-negative): bounded least squares (:func:`scipy.optimize.lsq_linear`), with the
constraints found active reported. A zero ``b`` or ``c`` leaves ``L`` and ``S`` undefined and is
refused (:class:`CalibrationError`). Every run gets the same total weight (each of its rows
``1 / rows of the run``), so that a run evaluated more often does not count more.

Identifiability. ``a`` is seen along each run's curve (many ``K``), ``b`` only across routings
(``V`` depends on ``p`` alone) and ``c`` across concurrencies and routings. The fit is refused
when the design cannot separate them: the condition number of the weighted design matrix with
unit-norm columns must be at most :data:`MAX_CONDITION` (a column that is constant, or a
combination of the others, such as ``V`` with a single routing, gives an infinite one), and the
error names the columns involved.

Uncertainty
-----------
The rows of one run are far from independent (one trajectory evaluated again and again), so the
usual least-squares covariance would be much too narrow. The covariance of ``(a, b, c)`` is the
cluster-robust (sandwich) one with one cluster per run, ``(X'WX)^{-1} (sum_r X_r'W_r e_r
e_r'W_r X_r) (X'WX)^{-1}`` with the small-sample factor ``G/(G-1) (N-1)/(N-P)`` (``G`` runs,
``N`` rows, ``P`` columns), and the standard errors of ``A, L, S`` come from it by the delta
method (gradients of the three formulas above). Why not a bootstrap over seeds: the pilots use
few seeds (3 by default, 10 distinct resamples) and the ratios ``L`` and ``S`` are unstable in
resamples where ``c`` is near 0; the sandwich is deterministic and uses every run. Runs of the
same seed share data and mini-batches (common random numbers): the seed intercepts take out
their common level, and treating their remaining common wiggles as independent errors makes the
standard errors conservative. A coefficient held at its bound 0 has no standard error
(``nan``), and the covariance of the others is that of the fit without its column.

The pilot design
----------------
By default (:func:`default_design`) routings tilted towards fast clients, ``p_i`` proportional
to ``mu_i^alpha`` for ``alpha`` in :data:`TILTS` (``alpha = 0`` is uniform), times
:data:`CONCURRENCIES` values of ``C`` spread geometrically over the scenario's search range
``[c_min, c_max]``; every point runs for every pilot seed. Every pilot runs the same number of
updates (the pilot budget, default :data:`BUDGET_FRACTION` of the objective's ``K``) rather
than the same simulated time: the runs then cover the same range of ``K``, so ``b`` and ``c``
come from differences in loss at equal ``K`` (in the balanced design they do not depend on how
well ``a / K`` describes the shape of the curve), and a run's cost is its number of updates,
whatever its throughput. Each run is evaluated :data:`EVALUATIONS` times.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize

from fedsim.errors import ScenarioError
from fedsim.fields import check_int
from fedsim.optimize.config import complete_constants, group_network, parse_optimization
from fedsim.optimize.objective import BoundConstants, GroupNetwork, Objective, bound_terms
from fedsim.scenario import MAX_SEED, Scenario

__all__ = ["BoundFit", "Calibration", "CalibrationError", "DesignPoint", "calibrate", "default_design", "fit_bound"]

#: Exponents ``alpha`` of the default routings ``p_i ~ mu_i^alpha`` (0: uniform).
TILTS = (0.0, 0.25, 0.5)
#: Concurrencies of the default design, geometric over ``[c_min, c_max]``.
CONCURRENCIES = 4
#: Default pilot budget, as a fraction of the updates ``K`` of the objective (``optimization.updates``).
BUDGET_FRACTION = 0.5
#: Evaluations of the training loss per pilot run.
EVALUATIONS = 20
#: Largest condition number of the scaled design the fit accepts.
MAX_CONDITION = 1e6
#: Columns of the observations :func:`fit_bound` reads.
OBSERVATION_COLUMNS = ("point", "seed", "updates", "variance_factor", "staleness_factor", "loss")
COEFFICIENTS = ("a", "b", "c")


class CalibrationError(ScenarioError):
    """Pilot runs that cannot determine the constants (an unidentifiable design, a fit with a
    term at zero, a pilot that failed)."""


@dataclass(frozen=True)
class BoundFit:
    """The least-squares fit of :func:`fit_bound`.

    ``coefficients``: ``a, b, c`` and the intercept ``f[<seed>]`` of every seed;
    ``covariance``: cluster-robust covariance of ``(a, b, c)``; ``constants``: ``A, L, S`` (and
    ``eta``); ``stderr``: delta-method standard errors of ``A, L, S`` and of ``a, b, c``;
    ``condition``: condition number of the scaled design; ``active``: coefficients held at
    their bound 0; ``rms``: weighted root mean square residual; ``r2``: weighted R^2.
    """

    coefficients: dict[str, float]
    covariance: np.ndarray
    constants: BoundConstants
    stderr: dict[str, float]
    condition: float
    active: tuple[str, ...]
    rms: float
    r2: float
    rows: int
    runs: int


@dataclass(frozen=True)
class DesignPoint:
    """A pilot setting: per-client probability ``q`` of each group and the concurrency."""

    label: str
    q: np.ndarray
    concurrency: int


@dataclass(frozen=True)
class Calibration:
    """Constants fitted on pilot runs, with their uncertainty.

    ``constants``: fitted ``A, L, S`` with ``eta`` the pilots' learning rate; ``stderr``: their
    standard errors (``A``, ``L``, ``S``); ``estimated``: the constants fedsim uses without
    calibration (the ``optimization:`` section's, the missing ones estimated from the training
    section), for comparison, and ``estimates`` how they were estimated (None when the section
    gives them all); ``observations``: one row per evaluation of every pilot (columns
    :data:`OBSERVATION_COLUMNS` plus ``concurrency``, ``sim_time``, ``test_accuracy`` and the
    routing ``p[<group>]``); ``fit``: the :class:`BoundFit`; ``design``: the pilot points;
    ``seeds`` and ``budget`` (updates per pilot); ``wall_seconds``: time the pilots and the fit took.
    """

    constants: BoundConstants
    stderr: dict[str, float]
    estimated: BoundConstants | None
    estimates: Any
    observations: pd.DataFrame
    fit: BoundFit
    design: tuple[DesignPoint, ...]
    seeds: tuple[int, ...]
    budget: int
    wall_seconds: float

    def table(self) -> pd.DataFrame:
        """One row per constant: ``A, L, S, eta``, then the coefficients the bound is made of,
        ``a = A / eta``, ``b = eta L S``, ``c = eta^2 L^2 S`` (what the optimum depends on);
        columns ``constant``, ``estimated``, ``fitted``, ``stderr`` (0 for ``eta``, which is given)."""
        rows = []
        for name in ("A", "L", "S", "eta", *COEFFICIENTS):
            estimated = math.nan if self.estimated is None else _constant(self.estimated, name)
            rows.append({"constant": name, "estimated": estimated, "fitted": _constant(self.constants, name),
                         "stderr": self.fit.stderr.get(name, 0.0)})
        return pd.DataFrame(rows)

    def describe(self) -> str:
        """One line: the fit's size and diagnostics."""
        fit = self.fit
        active = f"; held at 0: {', '.join(fit.active)}" if fit.active else ""
        return (f"{len(self.design)} points x {len(self.seeds)} seeds = {fit.runs} pilots of {self.budget} updates, "
                f"{fit.rows} evaluations; condition number {fit.condition:.3g}, R^2 = {fit.r2:.4f}, "
                f"rms residual {fit.rms:.3g}{active}; {self.wall_seconds:.1f} s")


def _constant(constants: BoundConstants, name: str) -> float:
    """``A, L, S, eta`` or the bound's coefficients ``a = A / eta``, ``b = eta L S``, ``c = eta^2 L^2 S``."""
    c = constants
    if name not in COEFFICIENTS:
        return getattr(c, name)
    return {"a": c.A / c.eta, "b": c.eta * c.L * c.S, "c": c.eta**2 * c.L**2 * c.S}[name]


def fit_bound(observations: pd.DataFrame, eta: float) -> BoundFit:
    """Fit ``loss = f_seed + a / K + b V + c D`` (module docstring) and derive ``A, L, S``.

    ``observations`` has the columns :data:`OBSERVATION_COLUMNS` (``point`` and ``seed`` identify
    the run a row comes from; ``updates`` is ``K >= 1``). Raises :class:`CalibrationError` when
    the design cannot identify ``a, b, c`` or when the fit puts ``b`` or ``c`` at 0.
    """
    missing = [c for c in OBSERVATION_COLUMNS if c not in observations.columns]
    if missing:
        raise ValueError(f"observations lack the columns {missing}")
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a positive number, got {eta!r}")
    obs = observations.reset_index(drop=True)
    K = obs["updates"].to_numpy(dtype=np.float64)
    y = obs["loss"].to_numpy(dtype=np.float64)
    if np.any(K < 1) or not np.all(np.isfinite(y)):
        raise ValueError("observations need updates >= 1 and finite losses")
    seeds = sorted(obs["seed"].unique())
    run = obs.groupby(["point", "seed"], sort=False).ngroup().to_numpy()
    runs = int(run.max()) + 1
    weights = 1.0 / np.bincount(run)[run]
    X = np.column_stack([1.0 / K, obs["variance_factor"].to_numpy(dtype=np.float64),
                         obs["staleness_factor"].to_numpy(dtype=np.float64)]
                        + [(obs["seed"] == s).to_numpy(dtype=np.float64) for s in seeds])
    names = [*COEFFICIENTS, *(f"f[{s}]" for s in seeds)]
    labels = ["1/K", "V (variance factor)", "D (staleness factor)", *(f"intercept of seed {s}" for s in seeds)]
    root = np.sqrt(weights)
    Xw, yw = X * root[:, None], y * root
    condition = _check_design(Xw, labels, runs)
    P = len(names)
    scale = np.linalg.norm(Xw, axis=0)
    lower = np.r_[np.zeros(3), np.full(P - 3, -np.inf)]
    res = optimize.lsq_linear(Xw / scale, yw, bounds=(lower, np.full(P, np.inf)), method="bvls", tol=1e-14)
    beta = res.x / scale
    active = tuple(n for n, v in zip(COEFFICIENTS, beta[:3]) if v <= 0.0)
    for name in ("b", "c"):
        if name in active:
            what = "the variance factor V" if name == "b" else "the staleness factor D"
            raise CalibrationError("calibrate", f"the fit finds no effect of {what} on the loss ({name} = 0 at "
                                   "its bound): L and S are undefined; lengthen the pilots or add seeds or points")
    resid = y - X @ beta
    # cluster-robust covariance (clusters: runs) of the model the bounded fit solved: the free
    # coefficients are the least-squares fit of the design without the columns held at 0
    free = np.array([names[k] not in active for k in range(P)])
    Xf = X[:, free]
    bread = np.linalg.inv((Xw[:, free]).T @ Xw[:, free])
    score = np.zeros((runs, Xf.shape[1]))
    np.add.at(score, run, Xf * (weights * resid)[:, None])
    N = len(y)
    factor = runs / (runs - 1) * (N - 1) / max(N - Xf.shape[1], 1)
    cov = np.full((3, 3), np.nan)  # a coefficient at its bound has no standard error
    kept = np.flatnonzero(free[:3])
    cov[np.ix_(kept, kept)] = (factor * bread @ (score.T @ score) @ bread)[:kept.size, :kept.size]
    a, b, c = beta[:3]
    constants = BoundConstants(A=float(a * eta), L=float(c / (eta * b)), S=float(b * b / c), eta=float(eta))
    gradients = {"A": np.array([eta, 0.0, 0.0]), "L": np.array([0.0, -c / (eta * b * b), 1.0 / (eta * b)]),
                 "S": np.array([0.0, 2 * b / c, -b * b / (c * c)])}
    stderr = {k: float(np.sqrt(g[kept] @ cov[np.ix_(kept, kept)] @ g[kept])) if not np.any(g[~free[:3]]) else np.nan
              for k, g in gradients.items()}
    stderr |= {n: float(np.sqrt(cov[k, k])) for k, n in enumerate(COEFFICIENTS)}
    mean = np.sum(weights * y) / weights.sum()
    r2 = 1.0 - float(np.sum(weights * resid**2) / np.sum(weights * (y - mean) ** 2))
    return BoundFit(coefficients={n: float(v) for n, v in zip(names, beta)}, covariance=cov, constants=constants,
                    stderr=stderr, condition=condition, active=active,
                    rms=float(np.sqrt(np.sum(weights * resid**2) / weights.sum())), r2=r2, rows=N, runs=runs)


def _check_design(Xw: np.ndarray, labels: list[str], runs: int) -> float:
    """The condition number of the design with unit-norm columns; refuse it above MAX_CONDITION."""
    if runs < 2:
        raise CalibrationError("calibrate", f"{runs} pilot run: the fit needs runs at several routings and "
                               "concurrencies")
    norms = np.linalg.norm(Xw, axis=0)
    if np.any(norms == 0):
        raise CalibrationError("calibrate", f"the column {labels[int(np.argmin(norms))]} is zero in every row")
    U, s, Vt = np.linalg.svd(Xw / norms, full_matrices=False)
    condition = float(s[0] / s[-1]) if s[-1] > 0 else math.inf
    if not condition <= MAX_CONDITION:
        null = np.abs(Vt[-1])
        involved = [labels[k] for k in np.argsort(-null) if null[k] > 0.1 * null.max()]
        raise CalibrationError("calibrate", f"the pilot design cannot identify the constants: condition number "
                               f"{condition:.3g} above {MAX_CONDITION:.0e}; nearly collinear: {', '.join(involved)} "
                               "(vary the routing for V, the concurrency for D, and K along each run)")
    return condition


def default_design(network: GroupNetwork, c_min: int, c_max: int) -> tuple[DesignPoint, ...]:
    """Routings ``p_i ~ mu_i^alpha`` (``alpha`` in :data:`TILTS`) times :data:`CONCURRENCIES`
    concurrencies geometric in ``[c_min, c_max]`` (fewer where they round to the same integer)."""
    Cs = np.unique(np.rint(np.geomspace(c_min, c_max, CONCURRENCIES)).astype(int))
    points = []
    for alpha in TILTS:
        weight = network.mu**alpha
        q = weight / float(network.counts @ weight)
        label = "uniform" if alpha == 0 else f"mu^{alpha:g}"
        points += [DesignPoint(f"{label}, C = {C}", q, int(C)) for C in Cs]
    return tuple(points)


def calibrate(scenario: Scenario, *, points: Sequence[tuple[Sequence[float], int]] | None = None,
              budget: int | None = None, seeds: int | Sequence[int] = 3, workers: int | None = None,
              ray: str | None = None, estimate: bool = True) -> Calibration:
    """Run pilot trainings of ``scenario`` and fit the bound's constants to their loss curves.

    ``points``: pilot settings as ``(q, C)``, ``q`` the per-client probability of each group
    (``sum_g count_g q_g = 1``); default :func:`default_design`. ``budget``: updates per pilot
    (default :data:`BUDGET_FRACTION` of ``optimization.updates``). ``seeds``: the pilot seeds,
    a count (starting from the scenario's seed) or the seeds themselves. ``workers`` and ``ray``
    choose the executor as for a sweep (:func:`fedsim.sweep.run_jobs`). ``estimate``: also give
    the constants fedsim uses without calibration (estimating the missing ones from the model).
    """
    from fedsim.plugins import registered_modules
    from fedsim.sweep import CURVE_FILE, CellJob, ray_session, run_jobs

    start = time.perf_counter()
    training = scenario.training
    if training is None:
        raise ScenarioError("training", "missing; calibrating the bound needs pilot training runs")
    if training.synchronous:
        raise ScenarioError("training.algorithm.name", f"is {training.algorithm.name!r}, which runs rounds; the "
                            "bound is for asynchronous SGD (e.g. generalized_async_sgd)")
    if workers is not None:
        check_int(workers, "--workers", 1)
    seed_list = _seeds(seeds, scenario.seed)
    spec = scenario.optimization or parse_optimization(None, scenario.groups, scenario.horizon, scenario.server)
    budget = max(EVALUATIONS, round(BUDGET_FRACTION * spec.updates)) if budget is None else budget
    budget = check_int(budget, "--pilot-budget", 2)
    network = group_network(scenario.groups, scenario.server, scenario.server_power)
    design = (default_design(network, spec.c_min, spec.c_max) if points is None
              else tuple(DesignPoint(f"point {k}", np.asarray(q, dtype=np.float64), C)
                         for k, (q, C) in enumerate(points)))
    eta = float(training.algorithm["lr"])
    factors = {}
    unit = BoundConstants(A=1.0, L=1.0, S=1.0, eta=1.0)
    for k, point in enumerate(design):
        C = check_int(point.concurrency, f"points[{k}].concurrency", 1)
        try:
            terms = bound_terms(network, point.q, C, unit, Objective.per_update(budget))
        except ValueError as err:
            raise ScenarioError(f"points[{k}]", str(err)) from None
        factors[point.label] = (terms.variance_factor, terms.staleness_factor)
    base_dir = scenario.source.parent if scenario.source is not None else Path(".")
    every = max(1, budget // EVALUATIONS)
    jobs, info = [], {}
    for point in design:
        for seed in seed_list:
            name = f"{point.label} | seed {seed}"
            info[name] = (point, seed)
            jobs.append(CellJob(name, _pilot_document(scenario, point, seed, budget, every), base_dir, False,
                                registered_modules()))
    frames, failed = [], {}

    def done(outcome: Any) -> None:
        if outcome.error is not None:
            failed[outcome.name] = outcome.error
            return
        point, seed = info[outcome.name]
        curve = pd.read_csv(io.BytesIO(outcome.files[CURVE_FILE]))
        curve = curve[curve["update"] >= 1]
        V, D = factors[point.label]
        frame = pd.DataFrame({"point": point.label, "seed": seed, "concurrency": point.concurrency,
                              "updates": curve["update"].to_numpy(), "sim_time": curve["sim_time"].to_numpy(),
                              "variance_factor": V, "staleness_factor": D, "loss": curve["train_loss"].to_numpy(),
                              "test_accuracy": curve["test_accuracy"].to_numpy()})
        for g, q in zip(scenario.groups, point.q):
            frame[f"p[{g.name}]"] = q
        frames.append(frame)

    with ray_session(ray, workers) as ray_module:
        run_jobs(jobs, done, workers=workers, ray=ray_module)
    if failed:
        name, error = next(iter(failed.items()))
        raise CalibrationError("calibrate", f"{len(failed)} of {len(jobs)} pilots failed, first {name}: {error}")
    order = {name: k for k, name in enumerate(info)}
    frames.sort(key=lambda f: order[f"{f['point'].iat[0]} | seed {f['seed'].iat[0]}"])
    observations = pd.concat(frames, ignore_index=True)
    fit = fit_bound(observations, eta)
    estimated, estimates = None, None
    if estimate:
        full, estimates = complete_constants(spec, training, scenario.groups, scenario.seed)
        estimated = full.constants
    return Calibration(constants=fit.constants, stderr={k: fit.stderr[k] for k in ("A", "L", "S")},
                       estimated=estimated, estimates=estimates, observations=observations, fit=fit,
                       design=design, seeds=seed_list, budget=budget, wall_seconds=time.perf_counter() - start)


def _seeds(seeds: int | Sequence[int], first: int) -> tuple[int, ...]:
    """The pilot seeds: ``first, first + 1, ...`` for a count, else the given ones (distinct)."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        count = check_int(int(seeds), "--pilot-seeds", 1)
        if first + count - 1 > MAX_SEED:
            raise ScenarioError("--pilot-seeds", f"seeds {first}..{first + count - 1} go past {MAX_SEED}")
        return tuple(range(first, first + count))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise ScenarioError("--pilot-seeds", f"must be a count >= 1 or a non-empty list of seeds, got {seeds!r}")
    out = tuple(check_int(s, f"--pilot-seeds[{k}]", 0, MAX_SEED) for k, s in enumerate(seeds))
    if len(set(out)) < len(out):
        raise ScenarioError("--pilot-seeds", f"seeds must be distinct, got {list(out)}")
    return out


def _pilot_document(scenario: Scenario, point: DesignPoint, seed: int, budget: int, every: int) -> dict[str, Any]:
    """The scenario mapping of one pilot: the point's routing and concurrency, ``budget`` updates,
    ``every``-update evaluations, the given seed; no ``optimization:`` section."""
    doc: dict[str, Any] = copy.deepcopy(dict(scenario.raw))
    doc.pop("optimization", None)
    doc |= {"seed": seed, "concurrency": point.concurrency, "routing": "weights",
            "horizon": {"updates": budget, "warmup": budget // 10}}
    doc["clients"] = [dict(item) | {"routing_weight": float(q)} for item, q in zip(doc["clients"], point.q)]
    training = dict(doc["training"])
    training["eval"] = dict(training.get("eval") or {}) | {"every_updates": every}
    doc["training"] = training
    return doc
