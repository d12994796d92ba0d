"""``fedsim optimize``: the optima of a scenario, compared with AsyncSGD's usual setting.

Output folder:

* ``<scenario>-<objective>.yaml``: the scenario with ``routing: weights``, every group's
  optimal per-client probability as ``routing_weight``, the optimal ``concurrency`` and the
  ``optimization:`` section with its constants (estimated ones included) and target: ``fedsim
  run`` loads it as it is. Relative file names in it (empirical service times, dataset
  folders) are those of the original scenario, so write the folder next to it or use absolute
  names.
* ``comparison.csv``: one row per setting: ``AsyncSGD (uniform, C = n)``, ``max-throughput
  routing (C = n)`` (the routing that maximises lambda with one task per client), the scenario
  as given, then the optimum of every objective: per-update, wall-clock, time and, when the
  scenario gives power, energy and time-energy. Columns: ``setting``, ``concurrency``,
  ``throughput`` (lambda, updates per unit time), ``updates_in_budget`` (lambda T),
  ``mean_staleness`` (update-weighted, ``C - 1``), ``variance_factor`` (``sum_i 1 / (n^2 p_i)``),
  ``staleness_factor`` (``sum_i E[tau_i] / (n^2 p_i)``), ``optimisation_per_update``
  (``A / (eta K)``), ``optimisation_wall_clock`` (``A / (eta lambda T)``), ``variance`` and
  ``drift`` (the two other terms), ``bound_per_update`` and ``bound_wall_clock`` (the totals),
  ``updates_to_target`` (``K_eps``) and ``time_to_target`` (``T_eps = K_eps / lambda``, ``inf``
  where the bound cannot reach the target); with power also ``power`` (watts),
  ``energy_per_update`` (joules), ``energy_to_target`` (``E_eps``) and ``time_energy``
  (``rho E_eps / E* + (1 - rho) T_eps / T*``); then per group ``p[<group>]`` (per client) and
  ``staleness[<group>]`` (``E[tau_i]``).
* ``objective_vs_C.png``: every objective against ``C``, best routing and uniform routing.
* ``optimization.json``: constants (and how they were estimated), budget, target, weight, the optima.
* with ``--calibrate``: ``calibration.csv`` (estimated and fitted constants with their standard
  errors), ``calibration_runs.csv`` (every evaluation of every pilot) and ``calibration`` in
  optimization.json (:mod:`fedsim.optimize.calibrate`); the optima then use the fitted constants.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fedsim import __version__
from fedsim.errors import ScenarioError
from fedsim.optimize.config import (
    OptimizationSpec,
    complete_constants,
    group_network,
    parse_optimization,
    with_default_target,
)
from fedsim.optimize.objective import (
    ENERGY_OBJECTIVES,
    OBJECTIVES,
    BoundConstants,
    GroupNetwork,
    bound_terms,
    objective_profile,
)
from fedsim.optimize.solver import Optimum, max_throughput_routing, optimise
from fedsim.scenario import Scenario

__all__ = ["ASYNCSGD", "MAX_THROUGHPUT", "Comparison", "Setting", "check_request", "compare", "comparison_table",
           "objective_figure", "with_budget", "write_comparison"]

ASYNCSGD = "AsyncSGD (uniform, C = n)"
MAX_THROUGHPUT = "max-throughput routing (C = n)"
#: What each objective's figure panel shows on its y axis.
VALUE_LABELS = {"per-update": "bound B(p, C)", "wall-clock": "bound B(p, C)", "time": "time to target T_eps",
                "energy": "energy to target E_eps", "time-energy": "rho E/E* + (1 - rho) T/T*"}


@dataclass(frozen=True)
class Setting:
    """A routing (per-client ``q`` of each group) and a concurrency, compared in the table."""

    label: str
    concurrency: int
    q: np.ndarray


@dataclass(frozen=True)
class Comparison:
    """What ``fedsim optimize`` computes for a scenario. ``optima`` maps each objective to its
    optimum (the energy objectives only when the scenario gives power)."""

    scenario: Scenario
    spec: OptimizationSpec
    estimates: Any
    network: GroupNetwork
    optima: dict[str, Optimum]
    settings: tuple[Setting, ...]


def check_request(scenario: Scenario, budget: float | None = None, target: float | None = None,
                  weight: float | None = None, objective: str | None = None) -> None:
    """Refuse bad ``budget``, ``target`` and ``weight`` values, and an energy ``objective`` on a
    scenario without power, before anything is computed."""
    if objective in ENERGY_OBJECTIVES and group_network(scenario.groups, scenario.server,
                                                        scenario.server_power).power is None:
        raise ScenarioError("clients", f"the {objective} objective needs power: give clients[k].power "
                            "(and server_power with a server), not all 0 W")
    _check_values(budget, target, weight)


def compare(scenario: Scenario, budget: float | None = None, target: float | None = None,
            weight: float | None = None, objective: str | None = None,
            constants: BoundConstants | None = None) -> Comparison:
    """Every optimum of ``scenario`` (constants from its ``optimization:`` section, or estimated).

    ``budget``, ``target`` and ``weight`` override the section's ``T``, ``eps`` and ``rho``;
    ``objective``, the one the caller wants, is checked first (the energy objectives need power).
    ``constants`` (calibrated ones, :mod:`fedsim.optimize.calibrate`) replace the section's
    ``A, L, S, eta``; nothing is estimated then.
    """
    check_request(scenario, budget, target, weight, objective)
    spec = scenario.optimization
    if spec is None:
        spec = parse_optimization(None, scenario.groups, scenario.horizon, scenario.server)
    if constants is not None:
        spec = dataclasses.replace(spec, **constants.to_dict())
    spec, estimates = complete_constants(spec, scenario.training, scenario.groups, scenario.seed)
    return _optimise_all(scenario, spec, estimates, budget, target, weight)


def with_budget(comparison: Comparison, budget: float) -> Comparison:
    """The same comparison for another wall-clock budget (the constants are not estimated again;
    a default target follows the budget)."""
    given = comparison.scenario.optimization
    spec = dataclasses.replace(comparison.spec, target=None if given is None else given.target)
    return _optimise_all(comparison.scenario, spec, comparison.estimates, budget, None, None)


def _check_values(budget: float | None, target: float | None, weight: float | None) -> None:
    for flag, value, high in (("--budget", budget, math.inf), ("--target", target, math.inf), ("--weight", weight, 1.0)):
        if value is not None and not (np.isfinite(value) and (value >= 0 if flag == "--weight" else value > 0)
                                      and value <= high):
            allowed = "a number in [0, 1]" if flag == "--weight" else "a positive number"
            raise ScenarioError(flag, f"must be {allowed}, got {value}")


def _optimise_all(scenario: Scenario, spec: OptimizationSpec, estimates: Any, budget: float | None,
                  target: float | None, weight: float | None) -> Comparison:
    _check_values(budget, target, weight)
    overrides = {k: float(v) for k, v in (("budget", budget), ("target", target), ("weight", weight)) if v is not None}
    network = group_network(scenario.groups, scenario.server, scenario.server_power)
    spec = with_default_target(dataclasses.replace(spec, **overrides), network)
    optima: dict[str, Optimum] = {}
    names = ["time"] + (["energy", "time-energy"] if network.power is not None else []) + ["per-update", "wall-clock"]
    for name in names:  # those with a target first: they fail if it is out of reach
        scales = {}
        if name == "time-energy":
            scales = {"time_scale": optima["time"].terms.value, "energy_scale": optima["energy"].terms.value}
        try:
            optima[name] = optimise(network, spec.constants, spec.objective_named(name, **scales),
                                    c_min=spec.c_min, c_max=spec.c_max)
        except ValueError as err:
            raise ScenarioError("optimization.target", str(err)) from None
    optima = {name: optima[name] for name in OBJECTIVES if name in optima}
    first = np.cumsum([0] + [g.count for g in scenario.groups[:-1]])
    settings = (
        Setting(ASYNCSGD, network.n, network.uniform()),
        Setting(MAX_THROUGHPUT, network.n, max_throughput_routing(network, network.n).q),
        Setting(f"scenario ({scenario.routing}, C = {scenario.concurrency})", scenario.concurrency, scenario.p[first]),
        *(Setting(f"{name} optimum", opt.concurrency, opt.q) for name, opt in optima.items()),
    )
    return Comparison(scenario=scenario, spec=spec, estimates=estimates, network=network, optima=optima,
                      settings=settings)


def comparison_table(comparison: Comparison) -> pd.DataFrame:
    """The comparison table (columns in the module docstring), one row per setting."""
    c = comparison
    per_update, wall_clock, time = (c.spec.objective_named(name) for name in ("per-update", "wall-clock", "time"))
    joint = c.optima["time-energy"].objective if "time-energy" in c.optima else None
    rows = []
    for s in c.settings:
        pu = bound_terms(c.network, s.q, s.concurrency, c.spec.constants, per_update)
        wc = bound_terms(c.network, s.q, s.concurrency, c.spec.constants, wall_clock)
        tt = bound_terms(c.network, s.q, s.concurrency, c.spec.constants, time)
        row: dict[str, Any] = {
            "setting": s.label, "concurrency": s.concurrency, "throughput": wc.throughput,
            "updates_in_budget": wc.updates, "mean_staleness": float(c.network.counts * s.q @ wc.staleness),
            "variance_factor": wc.variance_factor, "staleness_factor": wc.staleness_factor,
            "optimisation_per_update": pu.optimisation, "optimisation_wall_clock": wc.optimisation,
            "variance": wc.variance, "drift": wc.drift, "bound_per_update": pu.total, "bound_wall_clock": wc.total,
            "updates_to_target": tt.updates, "time_to_target": tt.time_to_target,
        }
        if joint is not None:
            row |= {"power": tt.power, "energy_per_update": tt.energy_per_update,
                    "energy_to_target": tt.energy_to_target,
                    "time_energy": bound_terms(c.network, s.q, s.concurrency, c.spec.constants, joint).value}
        for g, q, tau in zip(c.scenario.groups, s.q, wc.staleness):
            row[f"p[{g.name}]"] = q
            row[f"staleness[{g.name}]"] = tau
        rows.append(row)
    return pd.DataFrame(rows)


def optimised_document(comparison: Comparison, objective: str) -> dict[str, Any]:
    """The scenario document with the optimum of ``objective`` filled in (for YAML)."""
    c = comparison
    opt = c.optima[objective]
    doc = dict(c.scenario.raw)
    doc["routing"] = "weights"
    doc["concurrency"] = opt.concurrency
    doc["clients"] = [dict(item) | {"routing_weight": float(q)} for item, q in zip(doc["clients"], opt.q)]
    doc["optimization"] = dataclasses.replace(c.spec, objective=objective).to_dict()
    order = ["name", "seed", "concurrency", "horizon", "routing", "statistics", "clients", "training", "optimization"]
    return {k: doc[k] for k in order if k in doc} | {k: v for k, v in doc.items() if k not in order}


def objective_figure(comparison: Comparison):
    """Every objective against ``C``: best routing found, uniform routing, the optimum marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    c = comparison
    sns.set_theme(style="whitegrid", context="notebook")
    cols = min(3, len(c.optima))
    rows = -(-len(c.optima) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.8 * rows), squeeze=False)
    palette = sns.color_palette("deep")
    for ax in axes.flat[len(c.optima):]:
        ax.set_visible(False)
    for ax, (name, opt) in zip(axes.flat, c.optima.items()):
        Cs = np.arange(opt.c_min, opt.c_max + 1)
        uniform = objective_profile(c.network, c.network.uniform(), c.spec.constants, opt.objective,
                                    opt.c_max)[opt.c_min - 1:]
        ax.plot(Cs, uniform, color=palette[7], lw=1.5, label="uniform routing")
        ax.plot(Cs, opt.envelope, color=palette[0], lw=2, label="best routing (min over p)")
        solved = np.array(list(opt.solved))
        ax.scatter(solved, [opt.solved[k].value for k in solved], s=14, color=palette[0], zorder=3,
                   label="routing optimised at C")
        ax.scatter([opt.concurrency], [opt.terms.value], marker="*", s=220, color=palette[3], zorder=4,
                   label=f"optimum C = {opt.concurrency}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        objective = opt.objective
        if name == "per-update":
            what = f"K = {objective.updates:.4g} updates"
        elif name == "wall-clock":
            what = f"budget T = {objective.budget:.4g}"
        else:
            what = f"target eps = {objective.target:.4g}" + (f", rho = {objective.weight:g}" if objective.weight else "")
        ax.set(xlabel="concurrency C", ylabel=VALUE_LABELS[name], title=f"{name} objective ({what})")
        ax.legend(fontsize=8)
    fig.suptitle(f"{c.scenario.name}: the objectives against the concurrency (A={c.spec.A:.3g}, L={c.spec.L:.3g}, "
                 f"S={c.spec.S:.3g}, eta={c.spec.eta:.3g})")
    fig.tight_layout()
    return fig


def write_comparison(comparison: Comparison, objective: str, out: Path, calibration: Any = None) -> dict[str, Path]:
    """Write the output folder (module docstring); returns the paths by kind. With a
    :class:`~fedsim.optimize.calibrate.Calibration` (whose constants the comparison used), also
    ``calibration.csv`` (its table), ``calibration_runs.csv`` (its observations) and a
    ``calibration`` record in optimization.json."""
    from fedsim.report import atomic_write, write_csv, write_json

    c = comparison
    out.mkdir(parents=True, exist_ok=True)
    stem = c.scenario.source.stem if c.scenario.source is not None else c.scenario.name
    paths = {"scenario": out / f"{stem}-{objective}.yaml", "table": out / "comparison.csv",
             "figure": out / "objective_vs_C.png", "json": out / "optimization.json"}
    record: dict[str, Any] = {}
    if calibration is not None:
        paths |= {"calibration": out / "calibration.csv", "calibration_runs": out / "calibration_runs.csv"}
        write_csv(paths["calibration"], calibration.table())
        write_csv(paths["calibration_runs"], calibration.observations)
        fit = calibration.fit
        record["calibration"] = {
            "table": calibration.table().to_dict(orient="records"), "coefficients": fit.coefficients,
            "condition_number": fit.condition, "held_at_zero": list(fit.active), "r2": fit.r2, "rms": fit.rms,
            "pilots": fit.runs, "evaluations": fit.rows, "updates_per_pilot": calibration.budget,
            "seeds": list(calibration.seeds),
            "design": [{"point": p.label, "concurrency": p.concurrency,
                        "p": {g.name: float(q) for g, q in zip(c.scenario.groups, p.q)}} for p in calibration.design],
            "wall_seconds": calibration.wall_seconds, "table_file": paths["calibration"].name,
            "runs_file": paths["calibration_runs"].name}
    header = (f"# {c.scenario.name}: routing and concurrency of the {objective} optimum, written by fedsim "
              f"{__version__} (fedsim optimize)\n")
    text = header + yaml.safe_dump(optimised_document(c, objective), sort_keys=False)
    atomic_write(paths["scenario"], lambda tmp: tmp.write_text(text))
    write_csv(paths["table"], comparison_table(c))
    fig = objective_figure(c)
    atomic_write(paths["figure"], lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    write_json(paths["json"], {
        "scenario": c.scenario.name, "fedsim_version": __version__, "constants": c.spec.constants.to_dict(),
        "estimates": (c.estimates.to_dict() if c.estimates is not None else
                      calibration.estimates.to_dict() if calibration is not None and calibration.estimates is not None
                      else None),
        "budget": c.spec.budget, "updates": c.spec.updates, "target": c.spec.target, "weight": c.spec.weight,
        "concurrency_range": [c.spec.c_min, c.spec.c_max],
        "optima": {name: {"concurrency": o.concurrency, "value": o.terms.value, "bound": o.terms.total,
                          "throughput": o.terms.throughput, "p": {g.name: q for g, q in zip(c.scenario.groups, o.q)}}
                         | ({"time_to_target": o.terms.time_to_target, "energy_to_target": o.terms.energy_to_target}
                            if o.objective.targets else {})
                   for name, o in c.optima.items()},
    } | record)
    return paths
