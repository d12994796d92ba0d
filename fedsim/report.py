"""The output contract of a run folder: ``summary.json``, ``clients.csv`` and the figures.

``clients.csv`` has one row per client: client, group, p, mean_service, service_cv,
completions, staleness_sim, staleness_ci (CI half-width), staleness_analytic,
staleness_rel_error, staleness_p50, staleness_p90, staleness_p99, staleness_max, sojourn_sim,
sojourn_ci, sojourn_analytic, queue_sim, queue_ci, queue_analytic. Every ``*_ci`` is the
half-width of the batch-means confidence interval at the scenario's level.

``summary.json`` holds the scenario as parsed, the seed, the fedsim version, ``exact`` (every
service exponential, so the analytical values are exact), the run totals and the simulated
and analytical throughput and mean staleness, with per-group figures, and how the statistics
were made: the window (``window_first_update``, the warm-up method and its MSER truncation
points, ``stationary`` and why not), the batch means' independence test (``batch_test_*``)
and ``warning``, the reasons not to trust the intervals (null when there are none).

Every file is written to a temporary name and renamed, and ``summary.json`` is written last:
a folder with a ``summary.json`` is complete.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim import __version__
from fedsim.analytic import NetworkSolution
from fedsim.run import RunResult
from fedsim.scenario import Scenario


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _json_value(x: Any) -> Any:
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


def analytic_table(scenario: Scenario, solution: NetworkSolution) -> pd.DataFrame:
    """The analytical per-client figures of a scenario, one row per client."""
    return pd.DataFrame({
        "client": np.arange(scenario.n_clients),
        "group": [scenario.groups[g].name for g in scenario.client_group],
        "p": scenario.p,
        "mean_service": scenario.mean_service,
        "service_cv": np.array([g.service.cv for g in scenario.groups])[scenario.client_group],
        "staleness_analytic": solution.staleness,
        "sojourn_analytic": solution.sojourn,
        "queue_analytic": solution.mean_queue,
    })


def clients_table(result: RunResult) -> pd.DataFrame:
    """clients.csv: simulated figures next to the analytical ones, one row per client."""
    c = result.stats.clients
    base = analytic_table(result.scenario, result.analytic)
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
        "groups": groups_table(result).to_dict(orient="records"),
    } | (extra or {})


def write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.10g"))


def write_run(result: RunResult, out: Path, *, plots: bool = True, extra: dict[str, Any] | None = None,
              columns: dict[str, Any] | None = None) -> None:
    """Write the run folder: clients.csv, staleness.png, then summary.json (last).

    ``columns`` are appended to clients.csv (one value per client), ``extra`` to summary.json.
    """
    out.mkdir(parents=True, exist_ok=True)
    table = clients_table(result).assign(**(columns or {}))
    write_csv(out / "clients.csv", table)
    if plots:
        import matplotlib.pyplot as plt

        from fedsim.plots import staleness_figure

        fig = staleness_figure(table, title=f"{result.scenario.name}: staleness, simulated vs analytical"
                               + ("" if result.scenario.exact else " (product-form approximation)"),
                               warning=result.stats.warning)
        atomic_write(out / "staleness.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
        plt.close(fig)
    write_json(out / "summary.json", summary(result, extra))


def write_analytic(scenario: Scenario, solution: NetworkSolution, out: Path) -> None:
    """`fedsim analytic --out`: the analytical clients.csv and summary.json (no simulation)."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "clients.csv", analytic_table(scenario, solution))
    write_json(out / "summary.json", {
        "scenario": scenario.to_dict(),
        "seed": scenario.seed,
        "fedsim_version": __version__,
        "exact": scenario.exact,
        "throughput_analytic": solution.throughput,
        "mean_staleness_analytic": solution.mean_staleness,
    })
