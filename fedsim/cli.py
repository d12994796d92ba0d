"""Command line: ``fedsim run | analytic | validate | sweep | plot | optimize``.

Bad input (a ScenarioError) prints one line, ``error: <field path>: <what is allowed>``, on
stderr, writes nothing, and exits with status 2. A run that stops early (RunStopped: training
that diverged) prints one line too, keeps what it wrote, and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fedsim import __version__
from fedsim.errors import RunStopped, ScenarioError
from fedsim.optimize.objective import OBJECTIVES
from fedsim.scenario import Scenario, load_scenario

EXIT_USAGE = 2
EXIT_STOPPED = 1

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def decorate(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return decorate


def _fmt(x: float, ci: float | None = None) -> str:
    if not np.isfinite(x):
        return "-"
    return f"{x:.4g}" if ci is None or not np.isfinite(ci) else f"{x:.4g} ± {ci:.2g}"


def print_groups(groups: list[dict], exact: bool) -> None:
    """The closing table of `fedsim run`: per-group staleness, simulated vs analytical."""
    head = f"{'group':<16}{'clients':>8}{'p(group)':>10}{'staleness sim':>22}{'analytic':>12}{'rel. err':>10}"
    print(head)
    for g in groups:
        rel = (g["staleness_sim"] - g["staleness_analytic"]) / g["staleness_analytic"] \
            if g["staleness_analytic"] else float("nan")
        print(f"{g['group']:<16}{g['clients']:>8}{g['p_group']:>10.4f}"
              f"{_fmt(g['staleness_sim'], g['staleness_ci']):>22}{_fmt(g['staleness_analytic']):>12}"
              f"{format(100 * rel, '+.2f') + '%' if np.isfinite(rel) else '-':>10}")
    if not exact:
        print("(non-exponential services: the analytical values are the product-form approximation)")


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    from fedsim.report import summary, write_run
    from fedsim.run import simulate

    scenario = load_scenario(args.scenario)
    resume = Path(args.resume) if args.resume else None
    out = Path(args.out) if args.out else resume or Path("results") / Path(args.scenario).stem
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ScenarioError("--checkpoint-every", f"must be a positive number of updates, got {args.checkpoint_every}")
    if scenario.training is None and (args.checkpoint_every or resume):
        raise ScenarioError("--resume" if resume else "--checkpoint-every", "only for scenarios with a training: section")
    out.mkdir(parents=True, exist_ok=True)
    training = None
    if scenario.training is not None:
        from fedsim.training.session import TrainingSession

        training = TrainingSession(scenario, out, checkpoint_every=args.checkpoint_every, resume=resume)
        if training.synchronous:
            s = training.write_rounds(training.run_rounds())
            print(f"{scenario.name}: fedavg, {s['rounds']} rounds ({s['updates']} client updates) in "
                  f"{s['sim_time']:.6g} time units ({s['wall_seconds']:.2f} s wall); results in {out}")
            print(f"final test accuracy {s['final_accuracy']:.4f} (best {s['best_accuracy']:.4f})")
            return 0
    result = simulate(scenario, observers=[training.observer] if training else [],
                      trace=out / "trace.parquet" if args.trace else None,
                      progress=not args.quiet and sys.stderr.isatty())
    extra = training.finish() if training else None
    write_run(result, out, extra=extra, columns=training.client_columns() if training else None)
    s = summary(result)
    print(f"{scenario.name}: {s['updates']} updates in {s['sim_time']:.6g} time units "
          f"({s['wall_seconds']:.2f} s wall); results in {out}")
    print(f"throughput {_fmt(s['throughput_sim'], s['throughput_ci'])} (analytic {s['throughput_analytic']:.4g}); "
          f"mean staleness {_fmt(s['mean_staleness_sim'], s['mean_staleness_ci'])} "
          f"(analytic {s['mean_staleness_analytic']:.4g})")
    if "server_queue_sim" in s:
        print(f"server utilisation {_fmt(s['server_utilisation_sim'], s['server_utilisation_ci'])} "
              f"(analytic {s['server_utilisation_analytic']:.4g}); power {_fmt(s['power_sim'], s['power_ci'])} W "
              f"(analytic {s['power_analytic']:.4g}); energy per update "
              f"{_fmt(s['energy_per_update_sim'], s['energy_per_update_ci'])} J "
              f"(analytic {s['energy_per_update_analytic']:.4g}); time_breakdown.png")
    print_groups(s["groups"], scenario.exact)
    if extra:
        print(f"training: final test accuracy {extra['final_accuracy']:.4f} (best {extra['best_accuracy']:.4f} at "
              f"update {extra['best_accuracy_update']}); training.csv, training.png, model.pt in {out}")
    return 0


@command("analytic")
def cmd_analytic(args: argparse.Namespace) -> int:
    from fedsim.report import analytic_table, write_analytic
    from fedsim.run import analyse

    scenario = load_scenario(args.scenario)
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
    if args.out:
        write_analytic(scenario, solution, Path(args.out))
    return 0


@command("validate")
def cmd_validate(args: argparse.Namespace) -> int:
    scenario: Scenario = load_scenario(args.scenario)  # imports the plug-ins
    notes = [f"plugins {', '.join(scenario.plugins)}"] if scenario.plugins else []
    training = scenario.training
    if training is not None and ":" in training.model.name:  # a factory: its module must import
        from fedsim.plugins import resolve_callable

        resolve_callable(training.model.name, training.base_dir, "training.model")
        notes.append(f"model factory {training.model.name}")
    print(f"{args.scenario}: valid ({scenario.n_clients} clients in {len(scenario.groups)} groups, "
          f"C = {scenario.concurrency}, routing {scenario.routing}" + "".join(f"; {n}" for n in notes) + ")")
    return 0


@command("sweep")
def cmd_sweep(args: argparse.Namespace) -> int:
    from fedsim.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep)  # every cell is validated here, before anything is written
    out = Path(args.out) if args.out else Path("results") / Path(args.sweep).stem
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
    out = Path(args.out) if args.out else results / "figures"
    if out.exists() and not out.is_dir():
        raise ScenarioError("--out", f"{out} is a file, not a folder")
    written = make_figures(results, out, args.prefix, args.cell)
    if not written:
        print(f"{results}: no figure fits this sweep (figures need a grid over concurrency with 3 values or more, "
              "a grid over a clients[k].service.cv, a traced cell, or cells that train)")
    for path in written:
        print(path)
    return 0


@command("optimize")
def cmd_optimize(args: argparse.Namespace) -> int:
    from fedsim.optimize.report import compare, comparison_table, write_comparison

    scenario = load_scenario(args.scenario)
    comparison = compare(scenario, budget=args.budget, target=args.target, weight=args.weight,
                         objective=args.objective)
    spec = comparison.spec
    if comparison.estimates is not None:
        print(f"constants estimated from the training section: {comparison.estimates.describe()}")
    print(f"{scenario.name}: A = {spec.A:.4g}, L = {spec.L:.4g}, S = {spec.S:.4g}, eta = {spec.eta:.4g}; "
          f"K = {spec.updates:.6g} updates (per-update), budget T = {spec.budget:.6g} (wall-clock), "
          f"target eps = {spec.target:.6g} (time, energy; weight rho = {spec.weight:g}); "
          f"C in [{spec.c_min}, {spec.c_max}]")
    out = Path(args.out) if args.out else Path("results") / f"{Path(args.scenario).stem}-optimize"
    paths = write_comparison(comparison, args.objective, out)
    table = comparison_table(comparison).set_index("setting").T
    print(table.to_string(float_format=lambda x: f"{x:.5g}"))
    print(f"{args.objective} optimum: C = {comparison.optima[args.objective].concurrency}; "
          f"scenario {paths['scenario']}; table {paths['table']}; figure {paths['figure']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsim", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fedsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="simulate a scenario and compare with the analytical model")
    run.add_argument("scenario", help="scenario YAML file")
    run.add_argument("--out", help="output folder (default results/<scenario file name>)")
    run.add_argument("--trace", action="store_true", help="also write trace.parquet, one row per completed task")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--checkpoint-every", type=int, metavar="N",
                     help="training: write checkpoint.pt to the output folder every N updates")
    run.add_argument("--resume", metavar="DIR", help="training: continue from DIR/checkpoint.pt (output "
                     "folder DIR unless --out is given)")
    analytic = sub.add_parser("analytic", help="the analytical table only, no simulation")
    analytic.add_argument("scenario")
    analytic.add_argument("--out", help="write clients.csv and summary.json to this folder")
    validate = sub.add_parser("validate", help="check a scenario file")
    validate.add_argument("scenario")
    sweep = sub.add_parser("sweep", help="run a grid of scenarios over seeds (resumable), write results.parquet")
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
    optimize = sub.add_parser("optimize", help="optimal routing and concurrency for the loss bound")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ScenarioError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RunStopped as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
