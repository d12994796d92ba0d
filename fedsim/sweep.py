"""Parameter sweeps: a grid of scenarios times a number of seeds, run as independent cells.

A sweep file names a base scenario and a grid of scenario fields, each by its *field path*
(the path :class:`~fedsim.errors.ScenarioError` uses)::

    name: concurrency
    plugins: [mylab]                        # optional: modules imported first (fedsim.plugins)
    scenario: ../scenarios/default.yaml     # a scenario file (relative to this file) or a mapping
    overrides: {horizon: {updates: 100000, warmup: 10000}}   # optional: set on every cell
    grid:                                   # optional: the product of these lists
      concurrency: [1, 2, 5, 10, 20, 50, 100]
      clients[1].service.cv: [0.5, 1, 2]
    seeds: 5                                # replications per grid point (default 1)
    seed: 2025                              # base seed (default: the base scenario's seed)
    trace: {concurrency: 20}                # optional: these cells also write trace.parquet
    targets: [0.6, 0.75]                    # optional, base scenario that trains: time to these accuracies

Cells. The cells are the product of the grid lists (in file order, the last path varying
fastest) times the seed indices ``k = 0..seeds-1`` (innermost). Cell ``k`` of a grid point
runs with scenario seed ``seed + k``: the same seeds at every grid point (common random
numbers, so differences between grid points are not blurred by independent noise), and
different seeds give independent streams because :class:`~fedsim.scenario.Streams` hashes
the seed through ``numpy.random.SeedSequence``. The seed is fixed by the sweep file alone,
so a cell gives the same run whichever executor runs it. A cell is the run ``fedsim run``
makes of its scenario: with a ``training:`` section it trains (FedAvg runs its rounds), and
``routing: optimal-*`` is optimised for the cell's own seed.

Field paths. ``name(.name | [index])*``, resolved on the base scenario as written (the YAML
mapping, after ``overrides``). Every step but the last must exist in the base (a list index
must be in range); the last field may be absent, and is then added: ``clients[0].routing_weight``
works on a base that leaves it out. Each cell's mapping is validated by
:func:`~fedsim.scenario.parse_scenario` before anything runs, so an unknown field or a value
the schema refuses is a one-line :class:`~fedsim.errors.ScenarioError` naming the grid path.
Grid values are scalars (numbers, strings, booleans), distinct within a path; ``seed`` is
not a grid path (use ``seeds`` and ``seed``).

Output folder::

    OUT/sweep.json        the resolved sweep: base scenario, grid, seeds, targets, the cells
    OUT/cells/<cell>/     an ordinary run folder without figures (summary.json, clients.csv[,
                          trace.parquet][, training.csv, model.pt]) and cell.json, its input
    OUT/results.parquet   one row per cell and client (:func:`cell_rows`), written last
    OUT/training.parquet  every learning curve (:func:`collect_training`), when cells train

A cell folder is named by its grid values and seed, ``concurrency=20__seed=2025``. It is
complete when its ``summary.json`` exists (it is written last, by atomic rename) and its
``cell.json`` holds the cell's scenario mapping and trace flag; a rerun skips complete cells
(without parsing them), so a killed sweep resumes where it stopped, and a grid extended with
new values runs only the new cells.

Execution. A cell is :func:`run_cell`: a picklable :class:`CellJob` in, the run folder's
files as bytes out (``{"clients.csv": b"...", "summary.json": b"..."}``), or the error
text. The driver process writes every folder, so Ray nodes need no shared file system.
The same function runs in-process (``workers=1``), in a local process pool, or as Ray tasks;
it first imports the plug-in modules of the driver (:mod:`fedsim.plugins`).
A cell that raises records ``status = "error"`` and its message in results.parquet, and the
sweep goes on.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim import __version__
from fedsim.entry import make_callable
from fedsim.errors import ScenarioError
from fedsim.fields import check_int, check_mapping, check_number, check_str
from fedsim.inputs import load_yaml_file
from fedsim.paths import set_path, split_path
from fedsim.plugins import import_near, load_plugins, registered_modules
from fedsim.scenario import MAX_SEED, parse_scenario

SWEEP_FIELDS = ("name", "plugins", "scenario", "overrides", "grid", "seeds", "seed", "trace", "targets")
SUMMARY_FILE = "summary.json"
CELL_FILE = "cell.json"
CURVE_FILE = "training.csv"
RESULTS_FILE = "results.parquet"
TRAINING_FILE = "training.parquet"
MANIFEST_FILE = "sweep.json"
CELLS_DIR = "cells"
MAX_CELLS = 100_000
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-\[\]]")

Scalar = bool | int | float | str


# ---------------------------------------------------------------------------------------
# cell names


def format_value(value: Scalar) -> str:
    """A grid value as it appears in a cell folder name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return _UNSAFE.sub("_", str(value))


# ---------------------------------------------------------------------------------------
# the sweep


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: a grid point and a seed."""

    name: str  # folder name under OUT/cells/
    values: tuple[tuple[str, Scalar], ...]  # (grid path, value), in grid order
    seed_index: int
    seed: int
    scenario: Mapping[str, Any]  # the cell's scenario mapping (validated)
    trace: bool  # also write trace.parquet


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its cells in row order, and what it was built from."""

    name: str
    base: Mapping[str, Any]  # base scenario mapping, overrides applied
    base_dir: Path  # relative file names in the scenario resolve here
    grid: tuple[tuple[str, tuple[Scalar, ...]], ...]
    seeds: int
    seed: int
    cells: tuple[Cell, ...]
    source: Path | None = None
    plugins: tuple[str, ...] = ()  # the sweep file's plugins: (imported when it was parsed)
    targets: tuple[float, ...] = ()  # test accuracies whose time to reach results.parquet reports

    def manifest(self) -> dict[str, Any]:
        """The content of sweep.json."""
        return {
            "name": self.name,
            "source": None if self.source is None else str(self.source),
            "plugins": list(self.plugins),
            "fedsim_version": __version__,
            "base_scenario": self.base,
            "grid": {path: list(values) for path, values in self.grid},
            "seeds": self.seeds,
            "seed": self.seed,
            "targets": list(self.targets),
            "cells": [{"name": c.name, "values": dict(c.values), "seed_index": c.seed_index, "seed": c.seed,
                       "trace": c.trace} for c in self.cells],
        }


def _check_values(values: Any, where: str) -> tuple[Scalar, ...]:
    if not isinstance(values, list) or not values:
        raise ScenarioError(where, f"must be a non-empty list of values, got {values!r}")
    for v in values:
        if not isinstance(v, (bool, int, float, str)) or (isinstance(v, float) and not math.isfinite(v)):
            raise ScenarioError(where, f"grid values must be numbers, strings or booleans, got {v!r}")
    kinds = {"str" if isinstance(v, str) else "bool" if isinstance(v, bool) else "number" for v in values}
    if len(kinds) > 1:
        raise ScenarioError(where, f"mixes {' and '.join(sorted(kinds))} values; give one kind per path")
    if len({format_value(v) for v in values}) < len(values):
        raise ScenarioError(where, f"values must be distinct, got {values!r}")
    return tuple(values)


def _load_base(spec: Any, base_dir: Path) -> tuple[dict[str, Any], Path]:
    """The base scenario mapping and the folder its relative file names resolve from."""
    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec)), base_dir
    path = base_dir / check_str(spec, "scenario")
    doc = load_yaml_file(path, f"the base scenario {path}", "scenario")
    if not isinstance(doc, dict):
        raise ScenarioError("scenario", f"the base scenario {path} must be a mapping")
    return doc, path.parent


def _validate_cell(doc: dict[str, Any], base_dir: Path, values: tuple[tuple[str, Scalar], ...],
                   added: set[str]) -> Any:
    """parse_scenario on a cell's mapping (the Scenario); errors are re-located on the grid
    path that caused them."""
    try:
        return parse_scenario(doc, base_dir=base_dir)
    except ScenarioError as err:
        for path, value in values:
            if err.path == path:
                note = "; the field is absent from the base scenario" if path in added else ""
                raise ScenarioError(f"grid.{path}", f"{err.message} (value {value!r}{note})") from None
        label = ", ".join(f"{p}={v!r}" for p, v in values) or "the base scenario"
        raise ScenarioError(err.path, f"{err.message} (in the sweep cell {label})") from None


def parse_sweep(raw: Any, base_dir: Path, source: Path | None = None, default_name: str = "sweep") -> Sweep:
    """Validate a sweep mapping and build every cell; any bad input raises ScenarioError here."""
    doc = check_mapping(raw, "", SWEEP_FIELDS)
    plugins = load_plugins(doc.get("plugins"), base_dir)
    if "scenario" not in doc:
        raise ScenarioError("scenario", "missing; give a scenario file (relative to the sweep file) or a mapping")
    name = check_str(doc.get("name", default_name), "name")
    base, scenario_dir = _load_base(doc["scenario"], base_dir)
    overrides = _path_mapping(doc.get("overrides"), "overrides")
    for path, value in overrides.items():
        set_path(base, path, value, f"overrides.{path}")
    grid: list[tuple[str, tuple[Scalar, ...]]] = []
    for path, values in _path_mapping(doc.get("grid"), "grid").items():
        where = f"grid.{path}"
        split_path(path, where)
        if path == "seed":
            raise ScenarioError(where, "not a grid path; set the replications with seeds and the base seed with seed")
        if path in overrides:
            raise ScenarioError(where, "also set in overrides; give it in one place")
        grid.append((path, _check_values(values, where)))
    seeds = check_int(doc.get("seeds", 1), "seeds", 1, MAX_CELLS)
    seed = check_int(doc.get("seed", base.get("seed", 0)), "seed", 0, MAX_SEED - seeds + 1)
    cells_count = math.prod(len(values) for _, values in grid) * seeds
    if cells_count > MAX_CELLS:
        raise ScenarioError("grid", f"{cells_count:,} cells (grid points times seeds), above the limit of "
                            f"{MAX_CELLS:,}; split the sweep")
    trace = _parse_trace(doc.get("trace", False), grid)
    targets = _parse_targets(doc.get("targets"), base)

    cells = []
    for point in itertools.product(*(values for _, values in grid)):
        values = tuple(zip([p for p, _ in grid], point))
        cell_doc = copy.deepcopy(base)
        added = {path for path, value in values if not set_path(cell_doc, path, value, f"grid.{path}")}
        cell_doc["seed"] = seed
        parsed = _validate_cell(cell_doc, scenario_dir, values, added)  # any seed >= 0 would parse as well
        if trace(values) and parsed.training is not None and parsed.training.synchronous:
            raise ScenarioError("trace", "FedAvg cells run rounds, not the asynchronous network: they have no "
                                "trace of tasks; remove trace")
        for k in range(seeds):
            folder = "__".join([f"{p}={format_value(v)}" for p, v in values] + [f"seed={seed + k}"])
            cells.append(Cell(name=folder, values=values, seed_index=k, seed=seed + k,
                              scenario=copy.deepcopy(cell_doc) | {"seed": seed + k}, trace=trace(values)))
    too_long = next((c.name for c in cells if len(c.name.encode()) > 240), None)
    if too_long is not None:
        raise ScenarioError("grid", f"cell folder name too long ({too_long[:60]}...); use fewer or shorter values")
    return Sweep(name=name, base=base, base_dir=scenario_dir.resolve(), grid=tuple(grid), seeds=seeds, seed=seed,
                 cells=tuple(cells), source=source, plugins=plugins, targets=targets)


def _path_mapping(value: Any, where: str) -> dict[str, Any]:
    """An optional mapping keyed by field paths (``grid``, ``overrides``)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ScenarioError(where, f"must be a mapping of field paths, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _parse_trace(raw: Any, grid: list[tuple[str, tuple[Scalar, ...]]]
                 ) -> Callable[[tuple[tuple[str, Scalar], ...]], bool]:
    """``trace: true | false | {grid path: value or list of values}`` -> predicate on a cell's values."""
    if isinstance(raw, bool):
        return lambda values: raw
    selector = check_mapping(raw, "trace", tuple(p for p, _ in grid))
    allowed = dict(grid)
    chosen: dict[str, set[str]] = {}
    for path, value in selector.items():
        wanted = value if isinstance(value, list) else [value]
        for v in wanted:
            if format_value(v) not in {format_value(a) for a in allowed[path]}:
                raise ScenarioError(f"trace.{path}", f"{v!r} is not one of the grid values {list(allowed[path])}")
        chosen[path] = {format_value(v) for v in wanted}
    return lambda values: all(format_value(v) in chosen[p] for p, v in values if p in chosen)


def _parse_targets(raw: Any, base: Mapping[str, Any]) -> tuple[float, ...]:
    """``targets: [0.6, 0.75]``: test accuracies in (0, 1], distinct; the base must train."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise ScenarioError("targets", f"must be a non-empty list of test accuracies in (0, 1], got {raw!r}")
    targets = []
    for k, value in enumerate(raw):
        x = check_number(value, f"targets[{k}]")
        if not 0 < x <= 1:
            raise ScenarioError(f"targets[{k}]", f"must be a test accuracy in (0, 1], got {value!r}")
        if x in targets:
            raise ScenarioError(f"targets[{k}]", f"{value!r} is given twice")
        targets.append(x)
    if base.get("training") is None:
        raise ScenarioError("targets", "accuracy targets need a base scenario with a training: section")
    return tuple(targets)


def time_to_accuracy(curve: pd.DataFrame, target: float) -> float | None:
    """The simulated time of the first evaluation of a learning curve (training.csv) with test
    accuracy >= ``target``; None if none reaches it."""
    reached = curve.loc[curve["test_accuracy"] >= target, "sim_time"]
    return float(reached.iloc[0]) if len(reached) else None


def target_column(target: float) -> str:
    """The results.parquet column of an accuracy target: ``time_to_accuracy_0.75``."""
    return f"time_to_accuracy_{target:g}"


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep YAML file (its cells included)."""
    path = Path(path)
    raw = load_yaml_file(path, "sweep file")
    return parse_sweep(raw, base_dir=path.parent, source=path, default_name=path.stem)


# ---------------------------------------------------------------------------------------
# one cell


@dataclass(frozen=True)
class CellJob:
    """What a worker needs to run a cell (picklable; no paths of the driver's file system but
    base_dir and the folders of the plug-ins).

    ``plugins`` are the driver's modules that registered plug-ins, ``(module, folder)``
    (:func:`fedsim.plugins.registered_modules`); the worker imports them before parsing.
    """

    name: str
    scenario: Mapping[str, Any]
    base_dir: Path
    trace: bool
    plugins: tuple[tuple[str, Path | None], ...] = ()


@dataclass(frozen=True)
class CellOutcome:
    """A finished cell: its run folder's files, or the error that stopped it."""

    name: str
    files: Mapping[str, bytes]
    error: str | None


def run_cell(job: CellJob) -> CellOutcome:
    """Run one cell as ``fedsim run`` does (:func:`fedsim.run.run_scenario`) and return its run
    folder as bytes (summary.json included, no figures), or the error."""
    from fedsim.report import write_files
    from fedsim.run import run_scenario

    try:
        for module, folder in job.plugins:
            import_near(module, folder, "plugins")
        scenario = parse_scenario(job.scenario, base_dir=job.base_dir)
        with tempfile.TemporaryDirectory(prefix="fedsim-cell-") as tmp:
            folder = Path(tmp)
            run = run_scenario(scenario, trace=folder / "trace.parquet" if job.trace else False)
            write_files(run, folder, plots=False)
            files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    except Exception as exc:  # noqa: BLE001 -- a failing cell is recorded, the sweep goes on
        return CellOutcome(job.name, {}, f"{type(exc).__name__}: {exc}".splitlines()[0])
    return CellOutcome(job.name, files, None)


def cell_record(cell: Cell) -> dict[str, Any]:
    """The content of a cell folder's cell.json: what the cell was run from."""
    return json.loads(json.dumps({"cell": cell.name, "scenario": cell.scenario, "trace": cell.trace}))


def cell_complete(cell: Cell, folder: Path) -> bool:
    """The folder holds this cell's finished run: summary.json, and cell.json of the same input
    (scenario mapping and trace), and the trace when the cell has one."""
    try:
        if not (folder / SUMMARY_FILE).exists() or json.loads((folder / CELL_FILE).read_text()) != cell_record(cell):
            return False
    except (OSError, ValueError):
        return False
    return not cell.trace or (folder / "trace.parquet").exists()


def write_cell(outcome: CellOutcome, cell: Cell, folder: Path) -> None:
    """Write a cell's files atomically, then cell.json, summary.json last (it marks the folder complete)."""
    from fedsim.report import atomic_write, write_json

    folder.mkdir(parents=True, exist_ok=True)
    for name, data in outcome.files.items():
        if name != SUMMARY_FILE:
            atomic_write(folder / name, lambda tmp, data=data: tmp.write_bytes(data))
    write_json(folder / CELL_FILE, cell_record(cell))
    atomic_write(folder / SUMMARY_FILE, lambda tmp: tmp.write_bytes(outcome.files[SUMMARY_FILE]))


# ---------------------------------------------------------------------------------------
# executors: each calls run_cell on every job and hands each outcome to ``done`` as it arrives


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _run_in_process(jobs: list[CellJob], done: Callable[[CellOutcome], None]) -> None:
    for job in jobs:
        done(run_cell(job))


def _run_pool(jobs: list[CellJob], workers: int, done: Callable[[CellOutcome], None], trains: bool = False) -> None:
    """A local process pool. Workers fork from a fresh server process that has fedsim imported
    (and torch with the training modules when a cell ``trains``)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["fedsim.sweep", "fedsim.run", "fedsim.report"]
                                       + (["fedsim.training.session"] if trains else []))
    else:
        context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context)
    try:
        futures = {pool.submit(run_cell, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 -- a worker died (BrokenProcessPool, ...)
                outcome = CellOutcome(futures[future].name, {}, f"{type(exc).__name__}: {exc}".splitlines()[0])
            done(outcome)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def ray_session(address: str | None, workers: int | None) -> Iterator[Any]:
    """The ``ray`` module, connected to the cluster at ``address`` (None: no Ray, yields None).

    ``address`` is Ray's: ``auto`` (the cluster this machine belongs to), ``HOST:PORT``,
    ``ray://HOST:10001``, or ``local`` (start a private local instance with ``workers`` CPUs,
    default all). A session already open in this process is used as it is and left open;
    one opened here is shut down on exit.
    """
    if address is None:
        yield None
        return
    try:
        import ray
    except ImportError:
        raise ScenarioError("--ray", "Ray is not installed; pip install 'fedsim[ray]'") from None
    own = not ray.is_initialized()
    if own:
        try:
            if address == "local":
                ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address)
        except (ConnectionError, ValueError) as exc:
            raise ScenarioError("--ray", f"cannot connect to Ray at {address!r} "
                                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    try:
        yield ray
    finally:
        if own:
            ray.shutdown()


def _run_ray(ray: Any, jobs: list[CellJob], done: Callable[[CellOutcome], None]) -> None:
    """One Ray task (1 CPU) per cell on the session's cluster, outcomes handed over as they finish."""
    remote = ray.remote(num_cpus=1)(run_cell)
    pending = {remote.remote(job): job for job in jobs}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        try:
            outcome = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 -- the worker or its node died
            outcome = CellOutcome(job.name, {}, f"{type(exc).__name__}: {exc}".splitlines()[0])
        done(outcome)


def run_jobs(jobs: list[CellJob], done: Callable[[CellOutcome], None], *, workers: int | None = None,
             ray: Any = None) -> None:
    """Run every job with :func:`run_cell` and hand each outcome to ``done`` as it arrives: as Ray
    tasks when ``ray`` is a session's module (:func:`ray_session`), else in ``workers`` local
    processes (default: the available cores), in this process when that is 1 or there is one job."""
    if not jobs:
        return
    if ray is not None:
        _run_ray(ray, jobs, done)
    elif (workers or available_cores()) == 1 or len(jobs) == 1:
        _run_in_process(jobs, done)
    else:
        _run_pool(jobs, workers or available_cores(), done,
                  trains=any(job.scenario.get("training") is not None for job in jobs))


# ---------------------------------------------------------------------------------------
# the sweep as a whole


@dataclass(frozen=True)
class SweepReport:
    """What a call of :func:`run_sweep` did."""

    cells: int
    skipped: int  # complete before the call
    ran: int
    failed: dict[str, str]  # cell name -> error
    results: Path
    training: Path | None  # training.parquet, when a cell trains
    wall_seconds: float


def run_sweep(sweep: Sweep, out: Path, *, workers: int | None = None, ray: str | None = None,
              progress: bool = False) -> SweepReport:
    """Run every incomplete cell of ``sweep`` into ``out`` and write results.parquet.

    ``workers``: local processes (default: the available cores; 1 runs the cells one after
    another in this process). ``ray``: a Ray address (see :func:`ray_session`); the cells then
    run as Ray tasks. ``progress``: a tqdm bar over cells on stderr.
    """
    start = time.perf_counter()
    if workers is not None:
        check_int(workers, "--workers", 1)
    out = Path(out)
    with ray_session(ray, workers) as ray_module:  # a bad address fails here, before anything is written
        cells_dir = out / CELLS_DIR
        cells_dir.mkdir(parents=True, exist_ok=True)
        from fedsim.report import atomic_write, write_json

        write_json(out / MANIFEST_FILE, sweep.manifest())
        todo = [c for c in sweep.cells if not cell_complete(c, cells_dir / c.name)]
        for c in todo:  # a stale summary.json must not mark a half-rewritten folder complete
            (cells_dir / c.name / SUMMARY_FILE).unlink(missing_ok=True)
        plugins = registered_modules()
        jobs = [CellJob(c.name, c.scenario, sweep.base_dir, c.trace, plugins) for c in todo]
        by_name = {c.name: c for c in todo}
        failed: dict[str, str] = {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(sweep.cells), initial=len(sweep.cells) - len(todo), unit="cell", desc=sweep.name,
                       file=sys.stderr)

        def done(outcome: CellOutcome) -> None:
            if outcome.error is None:
                write_cell(outcome, by_name[outcome.name], cells_dir / outcome.name)
            else:
                failed[outcome.name] = outcome.error
            if bar is not None:
                bar.update(1)

        try:
            run_jobs(jobs, done, workers=workers, ray=ray_module)
        finally:
            if bar is not None:
                bar.close()
    table = collect_results(sweep, out, failed)
    atomic_write(out / RESULTS_FILE, lambda tmp: table.to_parquet(tmp, index=False))
    curves = collect_training(sweep, out, failed)
    if curves is not None:
        atomic_write(out / TRAINING_FILE, lambda tmp: curves.to_parquet(tmp, index=False))
    else:
        (out / TRAINING_FILE).unlink(missing_ok=True)
    return SweepReport(cells=len(sweep.cells), skipped=len(sweep.cells) - len(todo), ran=len(todo),
                       failed={c.name: failed[c.name] for c in sweep.cells if c.name in failed},
                       results=out / RESULTS_FILE, training=out / TRAINING_FILE if curves is not None else None,
                       wall_seconds=time.perf_counter() - start)


def _cell_columns(cell: Cell) -> dict[str, Any]:
    """The columns every row of a cell starts with: the cell, its grid values and its seed."""
    return {"cell": cell.name, **dict(cell.values), "seed_index": cell.seed_index, "seed": cell.seed}


def _repeated(columns: Mapping[str, Any], n: int) -> pd.DataFrame:
    """n rows holding the same values."""
    return pd.DataFrame({k: [v] * n for k, v in columns.items()})


def cell_rows(cell: Cell, folder: Path, targets: tuple[float, ...] = ()) -> pd.DataFrame:
    """The rows of a complete cell: clients.csv, its group's figures and the summary's scalars,
    the concurrency and routing it ran with, and the time its training reached each target.

    ``concurrency`` and ``routing`` (unless they are grid paths) are those of the scenario as
    run, so the ones the optimiser chose under ``routing: optimal-*``; ``optimized_for`` is the
    objective that chose them (null otherwise). ``time_to_accuracy_<a>``: the simulated time
    of the first evaluation with test accuracy >= a (null if never reached).
    """
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    rows = pd.read_csv(folder / "clients.csv")
    if "groups" in summary:  # FedAvg runs rounds, not the network: no per-group staleness
        groups = pd.DataFrame(summary["groups"])
        groups = groups.rename(columns={c: f"group_{c.removesuffix('_group')}" for c in groups.columns
                                        if c != "group"})
        rows = rows.merge(groups, on="group", how="left", sort=False)
    scenario = summary["scenario"]
    ran = {key: scenario[key] for key in ("concurrency", "routing") if key not in dict(cell.values)}
    ran["optimized_for"] = (scenario.get("optimization") or {}).get("objective")
    scalars = {k: v for k, v in summary.items() if k not in ("scenario", "seed")
               and (v is None or isinstance(v, (bool, int, float, str)))}
    if targets:
        curve = pd.read_csv(folder / CURVE_FILE)
        for target in targets:
            scalars[target_column(target)] = time_to_accuracy(curve, target)
    head = _cell_columns(cell) | {"status": "ok", "error": None} | ran
    return pd.concat([_repeated(head, len(rows)), rows, _repeated(scalars, len(rows))], axis=1)


def collect_results(sweep: Sweep, out: Path, failed: Mapping[str, str]) -> pd.DataFrame:
    """results.parquet: the rows of every cell in the sweep's order (a failed cell: one row with its error)."""
    frames = []
    for cell in sweep.cells:
        folder = out / CELLS_DIR / cell.name
        if cell.name not in failed and (folder / SUMMARY_FILE).exists():
            frames.append(cell_rows(cell, folder, sweep.targets))
        else:
            error = failed.get(cell.name, "no result (the cell did not run)")
            frames.append(pd.DataFrame([_cell_columns(cell) | {"status": "error", "error": error}]))
    return pd.concat(frames, ignore_index=True)


def collect_training(sweep: Sweep, out: Path, failed: Mapping[str, str]) -> pd.DataFrame | None:
    """training.parquet: every successful cell's learning curve (its training.csv), one row per
    evaluation: the cell, its grid values and seed, ``update``, ``time`` (simulated),
    ``accuracy`` (test), ``loss`` (training loss (1/n) sum_i f_i), ``test_loss``. None when no
    cell trains."""
    frames = []
    for cell in sweep.cells:
        path = out / CELLS_DIR / cell.name / CURVE_FILE
        if cell.name in failed or not path.exists():
            continue
        curve = pd.read_csv(path)
        frames.append(pd.concat([_repeated(_cell_columns(cell), len(curve)),
                                 pd.DataFrame({"update": curve["update"], "time": curve["sim_time"],
                                               "accuracy": curve["test_accuracy"], "loss": curve["train_loss"],
                                               "test_loss": curve["test_loss"]})], axis=1))
    return pd.concat(frames, ignore_index=True) if frames else None


def load_results(out: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """results.parquet and sweep.json of a sweep folder."""
    out = Path(out)
    return pd.read_parquet(out / RESULTS_FILE), json.loads((out / MANIFEST_FILE).read_text())


def load_training(out: str | Path) -> pd.DataFrame | None:
    """training.parquet of a sweep folder, or None when no cell trains."""
    path = Path(out) / TRAINING_FILE
    return pd.read_parquet(path) if path.exists() else None


make_callable(__name__)  # fedsim.sweep(...) is fedsim.api.sweep (see fedsim.entry)
