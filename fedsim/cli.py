"""Command line: ``fedsim run | analytic | validate | sweep | plot | optimize | tune``.

Bad input (a ScenarioError) prints one line, ``error: <field path>: <what is allowed>``, on
stderr, writes nothing, and exits with status 2; every check that can be made before a run
is made before its output folder is touched. A run that stops early (RunStopped: training
that diverged) prints one line, publishes what it wrote (without summary.json), and exits
with status 1; a run that fails part-way (a user's model raising) prints one line naming the
component, publishes nothing and exits with status 1 (``--debug`` adds the traceback).
Ctrl-C prints one line and exits with status 130, leaving the output folder as it was.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from fedsim import __version__
from fedsim.errors import RunFailed, RunStopped, ScenarioError
from fedsim.inputs import one_line
from fedsim.optimize.objective import OBJECTIVES
from fedsim.paths import parse_assignment
from fedsim.scenario import Scenario, load_scenario
from fedsim.tune import DEFAULT_BATCH, DEFAULT_SEEDS, DEFAULT_TRIALS, FAMILIES, TUNE_SEED_BASE
from fedsim.tune import OBJECTIVES as TUNE_OBJECTIVES

EXIT_USAGE = 2
EXIT_STOPPED = 1
EXIT_INTERRUPTED = 130
CHECKPOINT = "checkpoint.pt"  # fedsim.training.checkpoint.FILENAME, without importing torch

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def decorate(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return decorate


def _num(x: Any) -> float:
    """A number of summary.json (null where it is not finite) as a float."""
    return float("nan") if x is None else float(x)


def _fmt(x: Any, ci: Any = None) -> str:
    x, ci = _num(x), _num(ci)
    if not np.isfinite(x):
        return "-"
    return f"{x:.4g}" if not np.isfinite(ci) else f"{x:.4g} ± {ci:.2g}"


def print_groups(groups: list[dict], exact: bool, behaves: bool = False) -> None:
    """The closing table of `fedsim run`: per-group staleness, simulated vs analytical."""
    head = f"{'group':<16}{'clients':>8}{'p(group)':>10}{'staleness sim':>22}{'analytic':>12}{'rel. err':>10}"
    print(head)
    for g in groups:
        sim, analytic = _num(g["staleness_sim"]), _num(g["staleness_analytic"])
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = (sim - analytic) / analytic if analytic else float("nan")
        print(f"{g['group']:<16}{g['clients']:>8}{_num(g['p_group']):>10.4f}"
              f"{_fmt(sim, g['staleness_ci']):>22}{_fmt(analytic):>12}"
              f"{format(100 * rel, '+.2f') + '%' if np.isfinite(rel) else '-':>10}")
    if not exact:
        print("(client behaviour: the analytical values are the effective-rate approximation)" if behaves else
              "(non-exponential services: the analytical values are the product-form approximation)")


def _scenario(args: argparse.Namespace) -> Scenario:
    """The command's scenario file with its ``--set PATH=VALUE`` overrides."""
    overrides = dict(parse_assignment(text) for text in args.set or ())
    return load_scenario(args.scenario, overrides, where="--set ")


def _max_memory(args: argparse.Namespace) -> int | None:
    from fedsim.resources import parse_size

    return parse_size(args.max_memory) if args.max_memory is not None else None


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    from fedsim.folders import OutputFolder, check_out, disk_error
    from fedsim.report import write_files
    from fedsim.run import preflight, run_scenario

    scenario = _scenario(args)
    resume = Path(args.resume) if args.resume else None
    out = check_out(Path(args.out) if args.out else resume or Path("results") / Path(args.scenario).stem,
                    replace=True)
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ScenarioError("--checkpoint-every", f"must be a positive number of updates, got {args.checkpoint_every}")
    if scenario.training is None and (args.checkpoint_every or resume):
        raise ScenarioError("--resume" if resume else "--checkpoint-every", "only for scenarios with a training: section")
    if resume is not None:
        from fedsim.training.checkpoint import load_checkpoint

        load_checkpoint(resume, scenario)  # a wrong or unsafe checkpoint is refused before anything runs
    checked = preflight(scenario, trace=args.trace, max_memory=_max_memory(args))
    with OutputFolder(out) as folder:
        checkpoint = folder.ensure_out() / CHECKPOINT if args.checkpoint_every else None
        before = _signature(checkpoint) if checkpoint is not None else None
        try:
            run = run_scenario(scenario, trace=folder.staging / "trace.parquet" if args.trace else False,
                               progress=not args.quiet and sys.stderr.isatty(), checkpoint=checkpoint,
                               checkpoint_every=args.checkpoint_every, resume=resume,
                               curve=folder.staging / "training.csv" if scenario.training is not None else None,
                               command=["fedsim", *args.argv], checked=checked)
        except RunStopped:
            folder.publish()  # what the run wrote (the learning curve so far), without summary.json
            raise
        except KeyboardInterrupt:
            kept = checkpoint is not None and _signature(checkpoint) not in (None, before)
            print(f"interrupted: nothing written to {out}" + (f" but {CHECKPOINT}; continue with --resume {out}"
                                                             if kept else " (it is as it was)"), file=sys.stderr)
            return EXIT_INTERRUPTED
        except (ScenarioError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 -- a failure found only while running
            raise RunFailed(describe_failure(exc, scenario)) from exc
        try:
            write_files(run, folder.staging)
        except OSError as exc:
            raise disk_error(exc, out) from None
        written = checkpoint is not None and _signature(checkpoint) not in (None, before)
        folder.publish(carry=(CHECKPOINT,) if written else ())
    s = run.summary
    if "rounds" in s:
        print(f"{scenario.name}: fedavg, {s['rounds']} rounds ({s['updates']} client updates) in "
              f"{s['sim_time']:.6g} time units ({s['wall_seconds']:.2f} s wall); results in {out}")
        print(f"final test accuracy {_num(s['final_accuracy']):.4f} (best {_num(s['best_accuracy']):.4f})")
        return 0
    if s.get("warning") and not args.quiet:  # --quiet: the warning stays in summary.json and the figure
        print(f"warning: {s['warning']}", file=sys.stderr)
    print(f"{scenario.name}: {s['updates']} updates in {s['sim_time']:.6g} time units "
          f"({s['wall_seconds']:.2f} s wall); results in {out}")
    print(f"throughput {_fmt(s['throughput_sim'], s['throughput_ci'])} (analytic {_fmt(s['throughput_analytic'])}); "
          f"mean staleness {_fmt(s['mean_staleness_sim'], s['mean_staleness_ci'])} "
          f"(analytic {_fmt(s['mean_staleness_analytic'])})")
    if "server_queue_sim" in s:
        print(f"server utilisation {_fmt(s['server_utilisation_sim'], s['server_utilisation_ci'])} "
              f"(analytic {_fmt(s['server_utilisation_analytic'])}); power {_fmt(s['power_sim'], s['power_ci'])} W "
              f"(analytic {_fmt(s['power_analytic'])}); energy per update "
              f"{_fmt(s['energy_per_update_sim'], s['energy_per_update_ci'])} J "
              f"(analytic {_fmt(s['energy_per_update_analytic'])}); time_breakdown.png")
    print_groups(s["groups"], scenario.exact, scenario.behaves)
    if scenario.training is not None:
        print(f"training: final test accuracy {_num(s['final_accuracy']):.4f} (best {_num(s['best_accuracy']):.4f} at "
              f"update {s['best_accuracy_update']}); training.csv, training.png, model.pt in {out}")
    return 0


def describe_failure(exc: BaseException, scenario: Scenario) -> str:
    """One line for a failure found while running: the component (the user code, by its file
    and line, named ``training.model`` when it is the scenario's model factory), the error."""
    text = " ".join(str(exc).split())[:300]
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    package = os.path.dirname(os.path.abspath(__file__))
    libraries = {os.path.abspath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    user = [f for f in frames if not any(os.path.abspath(f.filename).startswith(root + os.sep)
                                         for root in (package, *libraries))]
    if user:
        frame = user[-1]
        component = "user code"
        cfg = scenario.training
        if cfg is not None:
            from fedsim.training.models import factory_source

            source = factory_source(cfg.model.name)
            if source is not None and os.path.abspath(frame.filename) == os.path.abspath(source):
                component = f"training.model ({cfg.model.name})"
        return one_line(f"{component} failed during the run at {frame.filename}:{frame.lineno} "
                        f"({frame.name}): {what}")
    inner = [f for f in frames if os.path.abspath(f.filename).startswith(package + os.sep)]
    where = Path(inner[-1].filename).stem if inner else "fedsim"
    return one_line(f"the run failed in fedsim ({where}): {what}; this is a bug, please report it")


@command("analytic")
def cmd_analytic(args: argparse.Namespace) -> int:
    from fedsim.folders import OutputFolder, check_out
    from fedsim.report import analytic_table, write_analytic
    from fedsim.run import analyse

    scenario = _scenario(args)
    out = check_out(args.out, replace=True) if args.out else None
    solution = analyse(scenario)
    table = analytic_table(scenario, solution)
    print(f"{scenario.name}: n = {scenario.n_clients}, C = {scenario.concurrency}, "
          f"throughput {solution.throughput:.6g} updates per unit time, "
          f"mean staleness {solution.mean_staleness:.6g}" + ("" if scenario.exact else " (approximation)"))
    per_group = table.groupby("group", sort=False).agg(
        clients=("client", "size"), p=("p", "first"), mean_service=("mean_service", "first"),
        staleness=("staleness_analytic", "mean"), sojourn=("sojourn_analytic", "mean"),
        queue=("queue_analytic", "mean"))
    print(per_group.to_string(float_format=lambda x: f"{x:.5g}"))
    if out is not None:
        with OutputFolder(out) as folder:
            write_analytic(scenario, solution, folder.staging)
            folder.publish()
    return 0


@command("validate")
def cmd_validate(args: argparse.Namespace) -> int:
    from fedsim.resources import available_memory, format_bytes
    from fedsim.run import preflight

    scenario = _scenario(args)
    limit = _max_memory(args)
    checked = preflight(scenario, trace=args.trace, max_memory=limit, solve_expensive=False)
    limit = limit if limit is not None else available_memory()
    plugins = f"; plugins {', '.join(scenario.plugins)}" if scenario.plugins else ""
    print(f"{args.scenario}: valid ({scenario.n_clients} clients in {len(scenario.groups)} groups, "
          f"C = {scenario.concurrency}, routing {scenario.routing}{plugins}); needs about "
          f"{checked.estimate.describe()} of memory" + (f" (limit {format_bytes(limit)})" if limit is not None else "")
          + (f", {checked.estimate.updates:.4g} updates" if checked.estimate.updates else ""))
    if checked.workload is not None:
        cfg = scenario.training
        print(f"training: {cfg.algorithm.name}, model {cfg.model.name} ({checked.workload.flat.size:,} parameters) "
              f"on {cfg.dataset.name} ({int(checked.workload.sizes.sum()):,} training samples): built and run on "
              f"a batch")
    return 0


@command("sweep")
def cmd_sweep(args: argparse.Namespace) -> int:
    from fedsim.folders import check_out
    from fedsim.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep)  # every cell is validated here, before anything is written
    out = check_out(Path(args.out) if args.out else Path("results") / Path(args.sweep).stem)
    try:
        report = run_sweep(sweep, out, workers=args.workers, ray=args.ray,
                           progress=not args.quiet and sys.stderr.isatty())
    except KeyboardInterrupt:
        print(f"interrupted: finished cells are kept in {out}; run the same command again to resume",
              file=sys.stderr)
        return 130
    print(f"{sweep.name}: {report.cells} cells ({report.skipped} already complete, {report.ran} run, "
          f"{len(report.failed)} failed) in {report.wall_seconds:.1f} s; results in {report.results}")
    for name, error in report.failed.items():
        print(f"failed cell {name}: {error}", file=sys.stderr)
    return 1 if report.failed else 0


@command("plot")
def cmd_plot(args: argparse.Namespace) -> int:
    from fedsim.sweep import CELLS_DIR, RESULTS_FILE
    from fedsim.sweep_plots import make_figures

    results = Path(args.results)
    if not (results / RESULTS_FILE).is_file():
        raise ScenarioError(str(results), f"no {RESULTS_FILE} in this folder; run fedsim sweep first")
    if args.cell and not (results / CELLS_DIR / args.cell / "trace.parquet").is_file():
        raise ScenarioError("--cell", f"{args.cell} has no trace.parquet; name it in the sweep file's trace: and "
                            "rerun the sweep")
    from fedsim.folders import check_out

    out = check_out(Path(args.out) if args.out else results / "figures")
    written = make_figures(results, out, args.prefix, args.cell)
    if not written:
        print(f"{results}: no figure fits this sweep (figures need a grid over concurrency with 3 values or more, "
              "a grid over a clients[k].service.cv, a traced cell, or cells that train)")
    for path in written:
        print(path)
    return 0


@command("optimize")
def cmd_optimize(args: argparse.Namespace) -> int:
    from fedsim.folders import check_out
    from fedsim.optimize.report import check_request, compare, comparison_table, write_comparison

    scenario = _scenario(args)
    if not args.calibrate:
        for flag in ("pilot_budget", "pilot_seeds", "workers", "ray"):
            if getattr(args, flag) is not None:
                raise ScenarioError(f"--{flag.replace('_', '-')}", "only with --calibrate")
    out = check_out(Path(args.out) if args.out else Path("results") / f"{Path(args.scenario).stem}-optimize")
    calibration = None
    if args.calibrate:
        from fedsim.optimize.calibrate import calibrate

        check_request(scenario, args.budget, args.target, args.weight, args.objective)  # before the pilots run
        calibration = calibrate(scenario, budget=args.pilot_budget,
                                seeds=3 if args.pilot_seeds is None else args.pilot_seeds,
                                workers=args.workers, ray=args.ray)
        if calibration.estimates is not None:
            print(f"constants estimated from the training section: {calibration.estimates.describe()}")
        print(f"constants calibrated on pilot training runs: {calibration.describe()}")
        print(calibration.table().to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    comparison = compare(scenario, budget=args.budget, target=args.target, weight=args.weight,
                         objective=args.objective, constants=None if calibration is None else calibration.constants)
    spec = comparison.spec
    if comparison.estimates is not None:
        print(f"constants estimated from the training section: {comparison.estimates.describe()}")
    print(f"{scenario.name}: A = {spec.A:.4g}, L = {spec.L:.4g}, S = {spec.S:.4g}, eta = {spec.eta:.4g}; "
          f"K = {spec.updates:.6g} updates (per-update), budget T = {spec.budget:.6g} (wall-clock), "
          f"target eps = {spec.target:.6g} (time, energy; weight rho = {spec.weight:g}); "
          f"C in [{spec.c_min}, {spec.c_max}]")
    paths = write_comparison(comparison, args.objective, out, calibration)
    table = comparison_table(comparison).set_index("setting").T
    print(table.to_string(float_format=lambda x: f"{x:.5g}"))
    print(f"{args.objective} optimum: C = {comparison.optima[args.objective].concurrency}; "
          f"scenario {paths['scenario']}; table {paths['table']}; figure {paths['figure']}")
    return 0


@command("tune")
def cmd_tune(args: argparse.Namespace) -> int:
    from fedsim.tune import tune

    scenario = _scenario(args)
    if args.seeds is not None and args.seeds < 1:
        raise ScenarioError("--seeds", f"must be a number of seeds >= 1, got {args.seeds}")
    seeds = (args.seed_list if args.seed_list is not None else
             range(TUNE_SEED_BASE + 1, TUNE_SEED_BASE + 1 + args.seeds) if args.seeds is not None else DEFAULT_SEEDS)
    out = Path(args.out) if args.out else Path("results") / f"{Path(args.scenario).stem}-tune"

    def progress(study: Any, done: int, total: int) -> None:
        if not args.quiet:
            complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
            best = max(complete, key=lambda t: t.value if args.objective == "accuracy" else -t.value, default=None)
            shown = f"; best so far {best.value:.4g} (trial {best.number})" if best is not None else ""
            print(f"{done}/{total} trials{shown}", file=sys.stderr)

    try:
        result = tune(scenario, out=out, trials=args.trials, objective=args.objective, budget=args.budget,
                      target=args.target, seeds=tuple(seeds), family=args.family, workers=args.workers, ray=args.ray,
                      sampler_seed=args.sampler_seed, batch=args.batch, progress=progress)
    except KeyboardInterrupt:
        print(f"interrupted: the study is kept in {out}; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    frame = result.trials
    counts = frame["state"].value_counts()
    what = ("final test accuracy" if result.objective == "accuracy" else f"time to test accuracy {result.target:g}")
    print(f"{scenario.name}: tune {what} at budget T = {result.budget:g}, seeds {', '.join(map(str, result.seeds))}, "
          f"family {result.family}: {len(frame)} trials ({counts.get('complete', 0)} complete, "
          f"{counts.get('pruned', 0)} pruned, {counts.get('fail', 0)} failed), {result.runs} runs of "
          f"{result.runs_unpruned} without pruning, {result.wall_seconds:.1f} s")
    for label, row in frame[frame["source"] != "tpe"].set_index("source").iterrows():
        print(f"warm start {label} (trial {row['number']}): {row['value']:.4g}")
    params = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                       for k, v in result.best_params.items())
    print(f"best trial {result.best_number}: {params}: {result.best_value:.4g} "
          f"(per seed {', '.join(f'{v:.4g}' for v in result.best_seed_values)})")
    print(f"best.yaml, trials.parquet, search.png and the study (study.db) in {result.out}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {one_line(message)} (see {self.prog} --help)\n")


def _scenario_options(parser: argparse.ArgumentParser, memory: bool = True) -> None:
    parser.add_argument("--set", action="append", metavar="PATH=VALUE",
                        help="set a scenario field before validation, e.g. --set concurrency=50 --set "
                        "clients[1].service.cv=2 (the value is read as YAML; repeatable)")
    if memory:
        parser.add_argument("--max-memory", metavar="SIZE", help="memory the run may use (e.g. 8G), instead of what "
                            "this machine has available: the resource check refuses a run estimated above it")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an unexpected failure")
    parser = _Parser(prog="fedsim", description=__doc__.splitlines()[0], parents=[common])
    parser.add_argument("--version", action="version", version=f"fedsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", parents=[common], help="simulate a scenario and compare with the analytical model")
    run.add_argument("scenario", help="scenario YAML file")
    run.add_argument("--out", help="output folder (default results/<scenario file name>); replaced whole when "
                     "the run succeeds")
    run.add_argument("--trace", action="store_true", help="also write trace.parquet, one row per completed task")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--checkpoint-every", type=int, metavar="N",
                     help="training: write checkpoint.pt to the output folder every N updates")
    run.add_argument("--resume", metavar="DIR", help="training: continue from DIR/checkpoint.pt (output "
                     "folder DIR unless --out is given)")
    _scenario_options(run)
    analytic = sub.add_parser("analytic", parents=[common], help="the analytical table only, no simulation")
    analytic.add_argument("scenario")
    analytic.add_argument("--out", help="write clients.csv and summary.json to this folder")
    _scenario_options(analytic, memory=False)
    validate = sub.add_parser("validate", parents=[common], help="check a scenario file and everything a run of "
                              "it needs (resources, dataset, model), without running it")
    validate.add_argument("scenario")
    validate.add_argument("--trace", action="store_true", help="check as for fedsim run --trace")
    _scenario_options(validate)
    sweep = sub.add_parser("sweep", parents=[common], help="run a grid of scenarios over seeds (resumable), write results.parquet")
    sweep.add_argument("sweep", help="sweep YAML file")
    sweep.add_argument("--out", help="output folder (default results/<sweep file name>)")
    sweep.add_argument("--workers", type=int, help="local worker processes (default: the available cores)")
    sweep.add_argument("--ray", metavar="ADDRESS", help="run the cells as Ray tasks: auto, HOST:PORT, ray://..., "
                       "or local (a private local instance)")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    plot = sub.add_parser("plot", help="the figures of a sweep folder (results.parquet) as PNGs")
    plot.add_argument("results", help="a sweep folder (fedsim sweep --out)")
    plot.add_argument("--out", help="folder of the PNGs (default RESULTS/figures)")
    plot.add_argument("--prefix", default="", help="prefix of the file names, e.g. concurrency_")
    plot.add_argument("--cell", help="the cell (folder name) of the staleness distribution; it needs trace.parquet")
    optimize = sub.add_parser("optimize", parents=[common], help="optimal routing and concurrency for the loss bound")
    optimize.add_argument("scenario")
    optimize.add_argument("--objective", choices=list(OBJECTIVES), required=True,
                          help="which optimum the written scenario gets (the table shows them all)")
    optimize.add_argument("--budget", type=float, metavar="T",
                          help="simulated-time budget of the wall-clock objective (default optimization.budget)")
    optimize.add_argument("--target", type=float, metavar="EPS",
                          help="bound value the time and energy objectives reach (default optimization.target, "
                          "else the bound of uniform routing with C = n at the budget)")
    optimize.add_argument("--weight", type=float, metavar="RHO",
                          help="rho of the time-energy objective rho E/E* + (1 - rho) T/T* "
                          "(default optimization.weight, 0.5)")
    optimize.add_argument("--out", help="output folder (default results/<scenario file name>-optimize)")
    optimize.add_argument("--calibrate", action="store_true",
                          help="fit A, L, S to pilot training runs at a few routings and concurrencies and "
                          "optimise with the fitted constants (writes calibration.csv, calibration_runs.csv)")
    optimize.add_argument("--pilot-budget", type=int, metavar="K",
                          help="updates per pilot run (default half of optimization.updates)")
    optimize.add_argument("--pilot-seeds", type=int, metavar="N",
                          help="pilot seeds, the scenario's seed and the next ones (default 3)")
    optimize.add_argument("--workers", type=int, help="local worker processes for the pilots (default: the "
                          "available cores)")
    optimize.add_argument("--ray", metavar="ADDRESS", help="run the pilots as Ray tasks: auto, HOST:PORT, "
                          "ray://..., or local")
    _scenario_options(optimize, memory=False)
    tune = sub.add_parser("tune", parents=[common], help="search routing, concurrency and learning rate by training "
                          "in the simulator (Optuna TPE; resumable)")
    tune.add_argument("scenario", help="scenario YAML file with a training: section")
    tune.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                      help=f"trials of the study (default {DEFAULT_TRIALS})")
    tune.add_argument("--objective", choices=list(TUNE_OBJECTIVES), default="accuracy",
                      help="accuracy: final test accuracy at the budget (maximised); time: simulated time to "
                      "--target (minimised)")
    tune.add_argument("--budget", type=float, metavar="T", help="simulated-time budget of a run (default horizon.time)")
    tune.add_argument("--target", type=float, metavar="A", help="test accuracy to reach (--objective time)")
    seeds = tune.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, metavar="K", help="seeds per trial: scenario seeds 101..100+K (default 3)")
    seeds.add_argument("--seed-list", type=int, nargs="+", metavar="SEED", help="the scenario seeds of every trial")
    tune.add_argument("--family", choices=list(FAMILIES), default="power",
                      help="routing searched: p_i proportional to mu_i^beta (power), or one weight per group (groups)")
    tune.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                      help=f"trials asked together (default {DEFAULT_BATCH}); the result depends on it, not on "
                      "--workers")
    tune.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    tune.add_argument("--workers", type=int, help="local worker processes (default: the available cores)")
    tune.add_argument("--ray", metavar="ADDRESS", help="run the trials' runs as Ray tasks: auto, HOST:PORT, "
                      "ray://..., or local")
    tune.add_argument("--out", help="output folder (default results/<scenario file name>-tune); holds the study")
    tune.add_argument("--quiet", action="store_true", help="no progress lines")
    _scenario_options(tune, memory=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except ScenarioError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except (RunStopped, RunFailed) as err:
        if args.debug and err.__cause__ is not None:
            traceback.print_exception(err.__cause__)
        hint = "; rerun with --debug for the traceback" if isinstance(err, RunFailed) and not args.debug else ""
        print(f"error: {one_line(err)}{hint}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("error: out of memory; make the scenario smaller (fedsim validate shows what it needs)",
              file=sys.stderr)
        return EXIT_STOPPED
    except Exception as exc:  # noqa: BLE001 -- one line instead of a traceback, unless --debug
        if args.debug:
            raise
        print(f"error: {one_line(f'{type(exc).__name__}: {exc}')}; this is a bug, rerun with --debug and report "
              "it", file=sys.stderr)
        return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
