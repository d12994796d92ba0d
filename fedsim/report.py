"""The output contract of a run folder, and the in-memory :class:`Run` it stores.

A run folder holds

- ``summary.json``: the scenario as parsed, the seed, the fedsim version, ``exact`` (every
  FIFO station exponential, so the analytical values are exact), the run totals and the simulated
  and analytical throughput and mean staleness, with per-group figures, ``provenance``
  (:mod:`fedsim.provenance`), and how the statistics were made: the window
  (``window_first_update``, the warm-up method and its MSER truncation points, ``stationary``
  and why not), the batch means' independence test (``batch_test_*``) and ``warning``, the
  reasons not to trust the intervals (null when there are none);
- ``clients.csv``: one row per client: client, group, p, mean_service, service_cv,
  completions, staleness_sim, staleness_ci (CI half-width), staleness_analytic,
  staleness_rel_error, staleness_p50, staleness_p90, staleness_p99, staleness_max,
  sojourn_sim, sojourn_ci, sojourn_analytic, queue_sim, queue_ci, queue_analytic (every
  ``*_ci`` is the half-width of the batch-means confidence interval at the scenario's level);
- ``staleness.png``; with training ``training.csv``, ``training.png``, ``model.pt``; with a
  trace ``trace.parquet``.

A scenario with links, a server or powers (:func:`~fedsim.engine.has_stations`) adds, in
``clients.csv``, for each of downlink, compute, uplink: ``<station>_queue_sim``, ``_ci``,
``_analytic`` (mean tasks present) and ``<station>_time_sim``, ``_ci``, ``_analytic`` (mean time
per visit, waiting included), and ``energy_sim``, ``energy_ci``, ``energy_analytic`` (watts drawn
by the client); a link a client does not have takes no time and holds no task (0). There,
``sojourn_*`` is the whole round trip (dispatch to application) and ``queue_*`` counts the
client's tasks anywhere in the network, the server included. ``summary.json`` adds
``server_queue``, ``server_utilisation``, ``power`` (watts, clients and server) and
``energy_per_update`` (joules), each as ``_sim``, ``_ci`` and ``_analytic`` (0 where there is no
server or no power), the figure ``time_breakdown.png`` and its table ``time_breakdown.csv``
(:func:`time_breakdown_table`). A base scenario's files are
exactly those of the base model. A scenario with client behaviour adds the columns and keys of
:mod:`fedsim.behaviour_report`, ``timeline.csv`` and the figure ``behaviour.png``.

Numbers are written so that they read back exactly (shortest round-trip text in the CSV
files), so :func:`open_run` gives back the :class:`Run` that was saved. Every file is written
to a temporary name and renamed, and ``summary.json`` is written last: a folder with a
``summary.json`` is complete. :meth:`Run.save` writes a whole folder through
:class:`~fedsim.folders.OutputFolder` (staged, locked, published at once).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim import __version__
from fedsim.analytic import ROUTE_STATIONS, ExtendedSolution, NetworkSolution, PowerDraw
from fedsim.behaviour_report import (
    BEHAVIOUR_COLUMNS,
    behaviour_columns,
    behaviour_summary,
    timeline_figure,
    timeline_table,
)
from fedsim.run import RunResult, analyse_power, extended_model
from fedsim.scenario import Scenario

STATION_FIGURES = ("queue", "time")
"""What clients.csv reports for every route station (mean tasks present, mean time per visit)."""


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _json_value(x: Any) -> Any:
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, dict):
        return {k: _json_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_json_value(v) for v in x]
    return x


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(_json_value(data), indent=2) + "\n"))


def route_queue(solution: NetworkSolution | ExtendedSolution) -> np.ndarray:
    """Mean number of client i's tasks in the network: at its stations, and its share
    ``p_i E_C[X_s]`` of the server's queue (the routes of the tasks there are i.i.d. with
    weights p, see :mod:`fedsim.analytic`)."""
    if isinstance(solution, NetworkSolution):
        return solution.mean_queue
    return sum(solution.stations[name].mean_queue for name in ROUTE_STATIONS) + solution.p * solution.server.mean_queue


def analytic_table(scenario: Scenario, solution: NetworkSolution | ExtendedSolution,
                   power: PowerDraw | None = None) -> pd.DataFrame:
    """The analytical per-client figures of a scenario, one row per client (with the station
    and energy columns for an extended solution; ``power`` defaults to the product form's)."""
    table = pd.DataFrame({
        "client": np.arange(scenario.n_clients),
        "group": [scenario.groups[g].name for g in scenario.client_group],
        "p": scenario.p,
        "mean_service": scenario.mean_service,
        "service_cv": np.array([g.service.cv for g in scenario.groups])[scenario.client_group],
        "staleness_analytic": solution.staleness,
        "sojourn_analytic": solution.sojourn,
        "queue_analytic": route_queue(solution),
    })
    if isinstance(solution, ExtendedSolution):
        power = power or analyse_power(scenario, solution)
        for name, station in solution.stations.items():
            table[f"{name}_queue_analytic"] = station.mean_queue
            table[f"{name}_time_analytic"] = station.time
        table["energy_analytic"] = power.client
    return table


def station_column_order() -> list[str]:
    """The station and energy columns of clients.csv, in their order."""
    order = [f"{name}_{figure}_{kind}" for name in ROUTE_STATIONS for figure in STATION_FIGURES
             for kind in ("sim", "ci", "analytic")]
    return order + ["energy_sim", "energy_ci", "energy_analytic"]


def station_columns(result: RunResult) -> dict[str, np.ndarray]:
    """The simulated station and energy columns of clients.csv (the analytical ones come from
    :func:`analytic_table`)."""
    st = result.stations
    columns = {"energy_sim": st.client_power, "energy_ci": st.client_power_ci}
    for name in ROUTE_STATIONS:
        for figure in STATION_FIGURES:
            columns[f"{name}_{figure}_sim"] = getattr(st.stations[name], figure)
            columns[f"{name}_{figure}_ci"] = getattr(st.stations[name], f"{figure}_ci")
    return columns


def clients_table(result: RunResult) -> pd.DataFrame:
    """clients.csv: simulated figures next to the analytical ones, one row per client."""
    c = result.stats.clients
    base = analytic_table(result.scenario, result.analytic, result.power)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = (c.staleness_mean - base["staleness_analytic"].to_numpy()) / base["staleness_analytic"].to_numpy()
    sim = {
        "completions": c.completions,
        "staleness_sim": c.staleness_mean,
        "staleness_ci": c.staleness_ci,
        "staleness_rel_error": rel,
        "staleness_p50": c.staleness_p50,
        "staleness_p90": c.staleness_p90,
        "staleness_p99": c.staleness_p99,
        "staleness_max": c.staleness_max,
        "sojourn_sim": c.sojourn_mean,
        "sojourn_ci": c.sojourn_ci,
        "queue_sim": c.queue_mean,
        "queue_ci": c.queue_ci,
    }
    df = base.assign(**sim)
    order = ["client", "group", "p", "mean_service", "service_cv", "completions", "staleness_sim", "staleness_ci",
             "staleness_analytic", "staleness_rel_error", "staleness_p50", "staleness_p90", "staleness_p99",
             "staleness_max", "sojourn_sim", "sojourn_ci", "sojourn_analytic", "queue_sim", "queue_ci", "queue_analytic"]
    if result.stations is not None:
        df = df.assign(**station_columns(result))
        order += station_column_order()
    if result.behaviour is not None:
        df = df.assign(**behaviour_columns(result))
        order += list(BEHAVIOUR_COLUMNS)
    return df[order]


def groups_table(result: RunResult) -> pd.DataFrame:
    """Per-group update-weighted mean staleness, simulated (with CI) against analytical."""
    s = result.scenario
    g = result.stats.groups
    p, tau = s.p, result.analytic.staleness
    p_group = np.bincount(s.client_group, weights=p, minlength=len(s.groups))
    with np.errstate(invalid="ignore", divide="ignore"):
        analytic = np.bincount(s.client_group, weights=np.nan_to_num(p * tau), minlength=len(s.groups)) / p_group
    return pd.DataFrame({
        "group": [grp.name for grp in s.groups],
        "clients": [grp.count for grp in s.groups],
        "p_group": p_group,
        "completions": g.completions,
        "staleness_sim": g.staleness_mean,
        "staleness_ci": g.staleness_ci,
        "staleness_analytic": analytic,
    })


def summary(result: RunResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of summary.json (with ``extra`` keys appended, e.g. training results)."""
    s, st, an = result.scenario, result.stats, result.analytic
    with np.errstate(invalid="ignore", divide="ignore"):  # E[tau_i] = 0 when C = 1
        rel = (st.clients.staleness_mean - an.staleness) / an.staleness
    finite = rel[np.isfinite(rel)]
    return {
        "scenario": s.to_dict(),
        "seed": s.seed,
        "fedsim_version": __version__,
        "exact": s.exact,
        "updates": st.updates,
        "window_updates": st.window_updates,
        "window_start": st.window_start,
        "sim_time": st.sim_time,
        "wall_seconds": result.wall_seconds,
        "confidence": s.statistics.confidence,
        "batches": st.batches,
        "batch_size": st.batch_size,
        "window_first_update": st.window_first_update,
        "warmup_method": st.warmup.method,
        "warmup_resolution": st.warmup.resolution,
        "warmup_staleness_point": st.warmup.staleness_point,
        "warmup_throughput_point": st.warmup.throughput_point,
        "stationary": st.warmup.stationary,
        "stationary_reason": st.warmup.reason,
        "batch_test_level": st.batch_test.level,
        "batch_test_passed": st.batch_test.passed,
        "batch_test_batch_size": st.batch_test.batch_size,
        "batch_test_batches": st.batch_test.batches,
        "batch_test_statistic": st.batch_test.statistic,
        "batch_test_critical": st.batch_test.critical,
        "batch_test_series": st.batch_test.series,
        "quantile_first_update": st.quantile_first_update,
        "warning": st.warning,
        "throughput_sim": st.throughput,
        "throughput_ci": st.throughput_ci,
        "throughput_analytic": an.throughput,
        "throughput_rel_error": (st.throughput - an.throughput) / an.throughput,
        "mean_staleness_sim": st.mean_staleness,
        "mean_staleness_ci": st.mean_staleness_ci,
        "mean_staleness_analytic": an.mean_staleness,
        "staleness_max_abs_rel_error": float(np.abs(finite).max()) if finite.size else None,
    } | (station_summary(result) if result.stations is not None else {}) | (
        behaviour_summary(result) if result.behaviour is not None else {}) | {
        "groups": groups_table(result).to_dict(orient="records"),
    } | (extra or {})


def analytic_station_summary(solution: ExtendedSolution, power: PowerDraw) -> dict[str, float]:
    """The server and energy keys of summary.json, analytical side."""
    return {"server_queue_analytic": solution.server.mean_queue,
            "server_utilisation_analytic": solution.server.utilisation,
            "power_analytic": power.total, "energy_per_update_analytic": power.per_update}


def station_summary(result: RunResult) -> dict[str, float]:
    """The server and energy keys of summary.json: simulated (with CI) next to analytical."""
    st = result.stations
    analytic = analytic_station_summary(result.analytic, result.power)
    sim = {"server_queue": (st.server_queue, st.server_queue_ci),
           "server_utilisation": (st.server_utilisation, st.server_utilisation_ci),
           "power": (st.power, st.power_ci), "energy_per_update": (st.energy_per_update, st.energy_per_update_ci)}
    out: dict[str, float] = {}
    for key, (value, ci) in sim.items():
        out |= {f"{key}_sim": value, f"{key}_ci": ci, f"{key}_analytic": analytic[f"{key}_analytic"]}
    return out


def time_breakdown_table(result: RunResult) -> pd.DataFrame:
    """Per group and source (simulated, analytical): the mean time a task spends waiting and
    in service at each station of its route, the server included (``<station>_wait``,
    ``<station>_service``), and the group's power in watts (``power``, ``power_ci``).

    Groups average their clients weighted by completions (simulated) or by p (analytical).
    The server is shared by every route, so its times are the same for every group.
    """
    s, st, an = result.scenario, result.stations, result.analytic
    network = extended_model(s)[0]
    means = dict(zip(ROUTE_STATIONS, network.means()))
    counts = result.stats.clients.completions.astype(float)
    rows = []
    for source in ("simulated", "analytical"):
        weights = counts if source == "simulated" else s.p
        for g, group in enumerate(s.groups):
            mine = s.client_group == g
            w = weights[mine] / weights[mine].sum()
            row: dict[str, Any] = {"group": group.name, "source": source}
            for name in ROUTE_STATIONS:
                if source == "simulated":
                    time, service = st.stations[name].time, st.stations[name].service
                else:
                    time, service = an.stations[name].time, means[name]
                row[f"{name}_wait"] = float(np.nansum(w * (time[mine] - service[mine])))
                row[f"{name}_service"] = float(np.nansum(w * service[mine]))
            server_time = server_service = 0.0
            if s.server is not None:
                server_time, server_service = ((st.server_time, st.server_service) if source == "simulated"
                                               else (an.server.time, network.server))
            row["server_wait"], row["server_service"] = server_time - server_service, server_service
            if source == "simulated":
                row["power"], row["power_ci"] = st.group_power[g], st.group_power_ci[g]
            else:
                row["power"], row["power_ci"] = float(result.power.client[mine].sum()), float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """``df`` as CSV, numbers in the shortest text that reads back exactly (:func:`read_csv`)."""
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV file written by :func:`write_csv`, with its numbers exactly as they were."""
    return pd.read_csv(path)


def normalised(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` as summary.json stores it (numpy values to Python, non-finite to null)."""
    return json.loads(json.dumps(_json_value(summary)))


@dataclass(eq=False)
class Run:
    """A finished run in memory: what its run folder holds.

    ``summary`` is summary.json (a dict), ``clients`` clients.csv, ``training`` the learning
    curve of training.csv (None without training), ``trace`` trace.parquet (None unless the
    run kept its trace), ``model`` the final global model as a ``state_dict`` of CPU tensors
    (model.pt; None without training), ``breakdown`` time_breakdown.csv (runs with links, a
    server or powers; None otherwise), ``timeline`` timeline.csv (runs with client behaviour,
    :mod:`fedsim.behaviour_report`; None otherwise). :meth:`save` writes the run folder and
    :func:`open_run` reads it back into an equal Run.
    """

    summary: dict[str, Any]
    clients: pd.DataFrame
    training: pd.DataFrame | None = None
    trace: pd.DataFrame | None = None
    model: dict[str, Any] | None = None
    breakdown: pd.DataFrame | None = None
    timeline: pd.DataFrame | None = None

    @property
    def scenario(self) -> dict[str, Any]:
        """The scenario as parsed, defaults filled in (a mapping in the YAML schema)."""
        return self.summary["scenario"]

    @property
    def groups(self) -> pd.DataFrame:
        """Per group: clients, routing mass, completions, and (asynchronous runs) the
        update-weighted mean staleness simulated with its CI and analytical."""
        if "groups" in self.summary:
            return pd.DataFrame(self.summary["groups"])
        c = self.clients
        return c.groupby("group", sort=False).agg(clients=("client", "size"), p_group=("p", "sum"),
                                                  completions=("completions", "sum")).reset_index()

    def save(self, out: str | Path, *, plots: bool = True) -> Path:
        """Write the run folder ``out`` (replacing its content whole, see :mod:`fedsim.folders`)."""
        from fedsim.folders import OutputFolder

        with OutputFolder(out, where="out") as folder:
            try:
                write_files(self, folder.staging, plots=plots)
            except OSError as exc:
                from fedsim.folders import disk_error

                raise disk_error(exc, folder.out, "out") from None
            folder.publish()
        return Path(out)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Run):
            return NotImplemented
        frames = all(_same_frame(getattr(self, k), getattr(other, k))
                     for k in ("clients", "training", "trace", "breakdown", "timeline"))
        return frames and self.summary == other.summary and _same_model(self.model, other.model)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        s = self.summary
        kind = f"{s['rounds']} fedavg rounds" if "rounds" in s else "asynchronous"
        extra = "".join(f", {k}" for k in ("training", "trace") if getattr(self, k) is not None)
        return f"Run({s['scenario']['name']!r}: {kind}, {s['updates']} updates, {len(self.clients)} clients{extra})"


def _same_frame(a: pd.DataFrame | None, b: pd.DataFrame | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and list(a.columns) == list(b.columns) and a.equals(b)


def _same_model(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def async_run(result: RunResult, *, extra: dict[str, Any] | None = None, columns: dict[str, Any] | None = None,
              curve: pd.DataFrame | None = None, model: dict[str, Any] | None = None,
              trace: pd.DataFrame | None = None) -> Run:
    """The :class:`Run` of an asynchronous run: clients.csv (with ``columns`` appended, one
    value per client) and summary.json (with ``extra`` keys appended)."""
    breakdown = time_breakdown_table(result) if result.stations is not None else None
    timeline = timeline_table(result) if result.behaviour is not None else None
    return Run(summary=normalised(summary(result, extra)), clients=clients_table(result).assign(**(columns or {})),
               training=curve, trace=trace, model=model, breakdown=breakdown, timeline=timeline)


def write_files(run: Run, folder: Path, *, plots: bool = True) -> None:
    """Write ``run``'s files into the existing ``folder``, summary.json last (each atomically)."""
    write_csv(folder / "clients.csv", run.clients)
    if run.trace is not None:
        atomic_write(folder / "trace.parquet", lambda tmp: run.trace.to_parquet(tmp, index=False))
    if run.training is not None:
        write_csv(folder / "training.csv", run.training)
    if run.breakdown is not None:
        write_csv(folder / "time_breakdown.csv", run.breakdown)
    if run.timeline is not None:
        write_csv(folder / "timeline.csv", run.timeline)
    if run.model is not None:
        import torch

        atomic_write(folder / "model.pt", lambda tmp: torch.save(run.model, tmp))
    if plots:
        from fedsim.plots import figure_style, staleness_figure

        name = run.scenario["name"]
        approximate = "" if run.summary.get("exact", True) else " (product-form approximation)"
        with figure_style():
            if "staleness_analytic" in run.clients:
                fig = staleness_figure(run.clients, title=f"{name}: staleness, simulated vs analytical" + approximate,
                                       warning=run.summary.get("warning"))
                atomic_write(folder / "staleness.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
            if run.breakdown is not None:
                from fedsim.plots import time_breakdown_figure

                numbers = {k: float("nan") if v is None else v for k, v in run.summary.items()
                           if k.startswith(("server_", "power_", "energy_per_update_"))}
                fig = time_breakdown_figure(run.breakdown, numbers,
                                            title=f"{name}: where a task's time and the energy go" + approximate)
                atomic_write(folder / "time_breakdown.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
            if run.timeline is not None:
                fig = timeline_figure(run.timeline, run.summary)
                atomic_write(folder / "behaviour.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
            if run.training is not None and len(run.training):
                from fedsim.training.record import training_figure

                t = run.scenario["training"]
                fig = training_figure(run.training, f"{name}: {t['algorithm']['name']}, {t['model']['name']} on "
                                      f"{t['dataset']['name']}")
                atomic_write(folder / "training.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    write_json(folder / "summary.json", run.summary)


def write_run(result: RunResult, out: Path, *, plots: bool = True, extra: dict[str, Any] | None = None,
              columns: dict[str, Any] | None = None) -> None:
    """Write the files of a simulation (no training) into the folder ``out``, in place
    (sweep cells, whose folders are staged by the sweep)."""
    out.mkdir(parents=True, exist_ok=True)
    write_files(async_run(result, extra=extra, columns=columns), out, plots=plots)


def open_run(folder: str | Path) -> Run:
    """The :class:`Run` saved in ``folder`` (a complete run folder: it has summary.json)."""
    from fedsim.errors import ScenarioError

    folder = Path(folder)
    if not (folder / "summary.json").is_file():
        raise ScenarioError("run folder", f"{folder} is not a complete run folder (no summary.json)")
    summary_ = json.loads((folder / "summary.json").read_text())
    training = read_csv(folder / "training.csv") if (folder / "training.csv").is_file() else None
    trace = pd.read_parquet(folder / "trace.parquet") if (folder / "trace.parquet").is_file() else None
    breakdown = read_csv(folder / "time_breakdown.csv") if (folder / "time_breakdown.csv").is_file() else None
    timeline = read_csv(folder / "timeline.csv") if (folder / "timeline.csv").is_file() else None
    model = None
    if (folder / "model.pt").is_file():
        import torch

        model = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    return Run(summary=summary_, clients=read_csv(folder / "clients.csv"), training=training, trace=trace,
               model=model, breakdown=breakdown, timeline=timeline)


def write_analytic(scenario: Scenario, solution: NetworkSolution, out: Path) -> None:
    """`fedsim analytic --out`: the analytical clients.csv and summary.json (no simulation)."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "clients.csv", analytic_table(scenario, solution))
    stations = {}
    if isinstance(solution, ExtendedSolution):
        stations = analytic_station_summary(solution, analyse_power(scenario, solution))
    write_json(out / "summary.json", {
        "scenario": scenario.to_dict(),
        "seed": scenario.seed,
        "fedsim_version": __version__,
        "exact": scenario.exact,
        "throughput_analytic": solution.throughput,
        "mean_staleness_analytic": solution.mean_staleness,
    } | stations)
