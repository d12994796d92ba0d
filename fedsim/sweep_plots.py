"""Figures of a sweep folder (``fedsim sweep ... --out RESULTS``), as PNGs.

    fedsim plot RESULTS [--out DIR] [--prefix NAME_] [--cell CELL]

reads ``RESULTS/results.parquet``, ``RESULTS/sweep.json`` (and ``RESULTS/training.parquet``)
and writes into DIR (default ``RESULTS/figures``) the figures the sweep supports:

* ``throughput_staleness.png`` (grid over ``concurrency``, 3 values or more, cells that run the
  asynchronous network): throughput and update-weighted mean staleness against C, simulated
  (mean over seeds, 95% t-interval over seeds) and analytical (:func:`fedsim.analytic.solve`
  at every integer C), with the heavy-load limit ``1 / max_i(p_i / mu_i)``;
* ``group_staleness.png`` (same condition): per-group mean staleness against C, simulated vs
  analytical, and their relative difference;
* ``staleness_distribution.png`` (a cell with ``trace.parquet``, see ``trace:`` in the sweep
  file): the per-update staleness of each group in one cell over the statistics window, as a
  histogram on integer bins (staleness is an integer: no smoothing) and as ECDFs;
* ``approximation_error.png`` (a grid over some ``clients[k].service.cv``): relative error of
  the product-form approximation, ``(analytical - simulated) / simulated``, of the throughput
  and of each group's mean staleness, against the coefficient of variation;
* ``accuracy_vs_time.png`` (cells that train): test accuracy and training loss against
  simulated time, one line per grid point (mean over seeds, 95% t-band over seeds);
* ``time_to_target.png`` (cells that train and ``targets:`` in the sweep file): simulated time
  to reach each target accuracy, per grid point (mean and t-interval over the seeds that
  reached it; the bars say how many did).

Every other grid column splits the points into series (one colour or line style per
combination of values); with several series the legends sit outside the axes, so they never
cover data. Seeds are independent replications, so the intervals are
``mean +- t_{k-1, 0.975} sd / sqrt(k)`` over the k seeds of a grid point. The figures are
drawn on their own ``Figure`` objects inside :func:`fedsim.plots.figure_style`, as the run
folders' figures: nothing of matplotlib's global state is changed, and neither pyplot nor
seaborn is imported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from fedsim.analytic import solve, throughput_curve
from fedsim.plots import figure_style, palette
from fedsim.sweep import CELLS_DIR, SUMMARY_FILE, load_results, load_training, target_column

LEVEL = 0.95
DPI = 100
FIGURES = ("throughput_staleness", "group_staleness", "staleness_distribution", "approximation_error",
           "accuracy_vs_time", "time_to_target")


def seed_interval(values: pd.Series) -> tuple[float, float]:
    """Mean over seeds and the half-width of its t-interval (nan with one seed)."""
    x = values.dropna().to_numpy(dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    return float(x.mean()), float(stats.t.ppf(0.5 + LEVEL / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))


def over_seeds(rows: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean and CI half-width of ``value`` for every combination of ``keys`` (seeds pooled)."""
    out = []
    for key, part in rows.groupby(keys, sort=False, dropna=False):
        mean, ci = seed_interval(part[value])
        out.append(dict(zip(keys, key if isinstance(key, tuple) else (key,))) | {"mean": mean, "ci": ci,
                                                                                  "seeds": len(part)})
    return pd.DataFrame(out)


def series_label(row: pd.Series, paths: list[str]) -> str:
    """``clients[1].service.dist=gamma, concurrency=5`` for the series a row belongs to."""
    return ", ".join(f"{p}={row[p]}" for p in paths) or "all"


def with_series(table: pd.DataFrame, paths: list[str]) -> pd.DataFrame:
    return table.assign(series=[series_label(r, paths) for _, r in table.iterrows()])


def network(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, p, group of every client) of one cell, from its clients.csv rows."""
    rows = rows.sort_values("client")
    p = rows["p"].to_numpy(float)
    return 1.0 / rows["mean_service"].to_numpy(float), p / p.sum(), rows["group"].to_numpy()


def concurrency_grid(c_max: int) -> np.ndarray:
    """The integers C at which analytical curves are drawn (dense on a log axis)."""
    return np.unique(np.round(np.geomspace(1, c_max, 160)).astype(int))


def cells_of(df: pd.DataFrame) -> pd.DataFrame:
    """One row per successful cell (its scalar columns)."""
    ok = df[df["status"] == "ok"]
    return ok.drop_duplicates("cell").reset_index(drop=True)


def legend(ax: Axes, several: bool, **kwargs) -> None:
    """The axes' legend: inside at matplotlib's best place for one series, outside the axes
    (on the right) when there are several, where it cannot cover data."""
    if several:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, **kwargs)
    else:
        ax.legend(loc="best", fontsize=8, **kwargs)


def _note(fig: Figure, text: str) -> None:
    fig.supxlabel(text, fontsize=8.5, color="0.3")


# ---------------------------------------------------------------------------------------
# queueing figures


def throughput_staleness_figure(df: pd.DataFrame, grid: list[str], name: str) -> Figure:
    """Throughput and update-weighted mean staleness against C, simulated and analytical."""
    others = [p for p in grid if p != "concurrency"]
    cells = with_series(cells_of(df), others)
    series_names = list(cells["series"].unique())
    colors = dict(zip(series_names, palette(len(series_names))))
    several = len(series_names) > 1
    fig = Figure(figsize=(12.5 + 3 * several, 5), layout="constrained")
    ax_t, ax_s = fig.subplots(1, 2)
    for series, part in cells.groupby("series", sort=False):
        color = colors[series]
        label = "" if series == "all" else f" ({series})"
        thr = over_seeds(part, ["concurrency"], "throughput_sim")
        sta = over_seeds(part, ["concurrency"], "mean_staleness_sim")
        mu, p, _ = network(df[df["cell"] == part["cell"].iloc[0]])
        c_max = int(part["concurrency"].max())
        cs = np.arange(1, c_max + 1)
        ax_t.plot(cs, throughput_curve(mu, p, c_max), color=color, lw=1.5, label=f"analytical{label}")
        ax_t.errorbar(thr["concurrency"], thr["mean"], yerr=thr["ci"], fmt="o", ms=5, capsize=3, color=color,
                      label=f"simulated{label}")
        limit = 1.0 / np.max(p / mu)
        ax_t.axhline(limit, color=color, ls="--", lw=1,
                     label=f"heavy-load limit 1/max_i(p_i/μ_i) = {limit:.4g}{label}")
        grid_c = concurrency_grid(c_max)
        ax_s.plot(grid_c, [solve(mu, p, int(c)).mean_staleness for c in grid_c], color=color, lw=1.5,
                  label=f"analytical Σ p_i E[τ_i] = C − 1{label}")
        ax_s.errorbar(sta["concurrency"], sta["mean"], yerr=sta["ci"], fmt="o", ms=5, capsize=3, color=color,
                      label=f"simulated{label}")
    seeds = int(cells.groupby(grid)["seed"].count().min())
    ax_t.set(xscale="log", xlabel="concurrency C (tasks in circulation)", ylabel="throughput (updates per unit time)",
             title="throughput against concurrency")
    ax_s.set(xlabel="concurrency C (tasks in circulation)",
             ylabel="mean staleness over updates (updates)", title="update-weighted mean staleness against C")
    ax_t.set_ylim(bottom=0)
    ax_s.set_ylim(bottom=0)
    legend(ax_t, several)
    legend(ax_s, several)
    fig.suptitle(f"{name}: throughput and staleness against concurrency")
    _note(fig, f"points: mean over {seeds} seeds; bars: {LEVEL:.0%} t-interval over seeds; "
               "lines: product-form model (fedsim.analytic.solve at every integer C)")
    return fig


def group_staleness_figure(df: pd.DataFrame, grid: list[str], name: str) -> Figure:
    """Per-group mean staleness against C (left) and sim-vs-analytical relative difference (right)."""
    others = [p for p in grid if p != "concurrency"]
    ok = df[df["status"] == "ok"]
    groups_rows = with_series(ok.drop_duplicates(["cell", "group"]).reset_index(drop=True), others)
    group_names = list(groups_rows["group"].unique())
    colors = dict(zip(group_names, palette(len(group_names))))
    series_names = list(groups_rows["series"].unique())
    several = len(series_names) > 1
    styles = dict(zip(series_names, ["-", "--", ":", "-."] * len(series_names)))
    markers = dict(zip(series_names, ["o", "s", "^", "D", "v", "P"] * len(series_names)))
    fig = Figure(figsize=(12.5 + 3 * several, 5), layout="constrained")
    ax_g, ax_e = fig.subplots(1, 2)
    for series in series_names:
        part = groups_rows[groups_rows["series"] == series]
        mu, p, group = network(ok[ok["cell"] == part["cell"].iloc[0]])
        grid_c = concurrency_grid(int(part["concurrency"].max()))
        curves = {g: [] for g in group_names}
        for c in grid_c:
            tau = np.nan_to_num(solve(mu, p, int(c)).staleness)
            for g in group_names:
                mask = group == g
                curves[g].append(float(np.sum(p[mask] * tau[mask]) / np.sum(p[mask])))
        suffix = "" if series == "all" else f" ({series})"
        for g in group_names:
            rows = part[part["group"] == g]
            sim = over_seeds(rows[rows["concurrency"] > 1], ["concurrency"], "group_staleness_sim")  # 0 at C = 1
            ax_g.plot(grid_c[1:], curves[g][1:], color=colors[g], ls=styles[series], lw=1.4)
            ax_g.errorbar(sim["concurrency"], sim["mean"], yerr=sim["ci"], fmt=markers[series], ms=5, capsize=3,
                          color=colors[g], label=f"{g}{suffix}")
            rel = rows.assign(rel=(rows["group_staleness_sim"] - rows["group_staleness_analytic"])
                              / rows["group_staleness_analytic"])
            err = over_seeds(rel[rel["concurrency"] > 1], ["concurrency"], "rel")
            ax_e.errorbar(err["concurrency"], 100 * err["mean"], yerr=100 * err["ci"], fmt=markers[series],
                          ms=5, capsize=3, color=colors[g], ls=styles[series], lw=1, label=f"{g}{suffix}")
    for series in series_names:  # the line style of each series' analytical curves
        suffix = "" if series == "all" else f" ({series})"
        ax_g.plot([], [], color="0.3", ls=styles[series], lw=1.4, label=f"analytical{suffix}")
    ax_g.set(xscale="log", yscale="log", xlabel="concurrency C (staleness is 0 at C = 1)",
             ylabel="mean staleness of the group's updates (updates)",
             title="mean staleness per group: slope 1 = linear growth in C")
    legend(ax_g, several, title="points: simulated")
    ax_e.axhline(0, color="0.4", lw=1)
    ax_e.set(xscale="log", xlabel="concurrency C", ylabel="(simulated − analytical) / analytical (%)",
             title="relative difference, simulated vs analytical")
    legend(ax_e, several, title="group")
    exact = bool(ok["exact"].all())
    fig.suptitle(f"{name}: staleness by client group against concurrency"
                 + ("" if exact else " (non-exponential: analytical = product-form approximation)"))
    _note(fig, f"points: mean over seeds; bars: {LEVEL:.0%} t-interval over seeds; group staleness is the "
               "update-weighted mean Σ_(i in g) p_i E[τ_i] / Σ_(i in g) p_i")
    return fig


def staleness_bins(top: int) -> np.ndarray:
    """Edges of integer histogram bins for staleness 0..top: one bin per value up to 10, then
    about 12 bins per decade; every edge is a half-integer, so each bin holds whole values."""
    lows = np.arange(min(top, 10) + 1)  # the smallest value of each bin
    if top > 10:
        count = max(2, int(12 * np.log10((top + 1) / 11)) + 1)
        lows = np.concatenate([lows, np.round(np.geomspace(11, top + 1, count))])
    edges = np.unique(lows) - 0.5
    return np.append(edges[edges < top + 0.5], top + 0.5)


def staleness_distribution_figure(results: Path, df: pd.DataFrame, cell: str, name: str) -> Figure:
    """Per-update staleness by group in one traced cell: a histogram on integer bins (left)
    and ECDFs (right), over the statistics window."""
    folder = results / CELLS_DIR / cell
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    trace = pd.read_parquet(folder / "trace.parquet", columns=["client", "apply_update", "staleness",
                                                               "completion_time"])
    first = summary["window_first_update"]  # the statistics window: updates from this index on
    in_window = trace["apply_update"] >= first
    rows = df[df["cell"] == cell].sort_values("client")
    group_of = rows["group"].to_numpy()
    data = pd.DataFrame({"group": group_of[trace.loc[in_window, "client"].to_numpy()],
                         "staleness": trace.loc[in_window, "staleness"].to_numpy()})
    order = list(dict.fromkeys(group_of))
    colors = dict(zip(order, palette(len(order))))
    groups = pd.DataFrame(summary["groups"]).set_index("group")
    top = int(data["staleness"].max())
    edges = staleness_bins(top)
    widths = np.diff(edges)
    fig = Figure(figsize=(15, 5.6), layout="constrained")
    ax_h, ax_e = fig.subplots(1, 2)
    for g in order:
        values = data.loc[data["group"] == g, "staleness"].to_numpy()
        counts, _ = np.histogram(values, bins=edges)
        # per unit of staleness, so that wide bins are not inflated: a density over the integers
        ax_h.stairs(counts / (len(values) * widths), edges + 1, color=colors[g], lw=1.6, label=g)
        ax_e.ecdf(values + 1, color=colors[g], lw=1.6, label=g)
        for ax in (ax_h, ax_e):
            ax.axvline(1 + groups.loc[g, "staleness_sim"], color=colors[g], ls="--", lw=1.1)
            ax.axvline(1 + groups.loc[g, "staleness_analytic"], color=colors[g], ls=":", lw=1.5)
    means = [Line2D([], [], color="0.3", ls="--", lw=1.1, label="simulated mean"),
             Line2D([], [], color="0.3", ls=":", lw=1.5, label="analytical mean")]
    ticks = [v for v in (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000) if v <= 3 * top]
    for ax in (ax_h, ax_e):
        ax.set_xscale("log")
        ax.set_xticks([1 + v for v in ticks], [str(v) for v in ticks])
        ax.set_xlim(0.9, 1.5 * (top + 1))
        ax.set_xlabel("staleness τ of an update (updates; axis at 1 + τ, logarithmic)")
    handles, _ = ax_h.get_legend_handles_labels()  # one legend for both panels, beside them: it covers nothing
    fig.legend(handles=handles + means, loc="outside right upper", fontsize=9, title="group")
    ax_h.set_yscale("log")
    ax_h.set(ylabel="fraction of the group's updates per unit of staleness",
             title="histogram per group (integer bins, no smoothing)")
    ax_e.set(ylabel="fraction of the group's updates ≤ τ", title="empirical CDF per group")
    fig.suptitle(f"{name}: staleness distribution per group in one cell\n" + cell.replace("__", ", "))
    _note(fig, f"{len(data):,} updates of the statistics window (after a warm-up of {first:,} updates); "
               "from the cell's trace.parquet, one row per applied update")
    return fig


def approximation_error_figure(df: pd.DataFrame, grid: list[str], cv_path: str, name: str) -> Figure:
    """Relative error of the product-form approximation against a service cv."""
    others = [p for p in grid if p != cv_path]
    ok = df[df["status"] == "ok"]
    per_group = with_series(ok.drop_duplicates(["cell", "group"]).reset_index(drop=True), others)
    group_names = list(per_group["group"].unique())
    cells = with_series(cells_of(df), others)
    cells = cells.assign(err=(cells["throughput_analytic"] - cells["throughput_sim"]) / cells["throughput_sim"])
    per_group = per_group.assign(err=(per_group["group_staleness_analytic"] - per_group["group_staleness_sim"])
                                 / per_group["group_staleness_sim"])
    series_names = list(cells["series"].unique())
    colors = dict(zip(series_names, palette(len(series_names))))
    k = int(re.match(r"clients\[(\d+)\]", cv_path).group(1))
    cv_group = list(dict.fromkeys(ok.loc[ok["cell"] == ok["cell"].iloc[0], "group"]))[k]
    fig = Figure(figsize=(5.2 * (1 + len(group_names)) + 3, 5.4), layout="constrained")
    axes = fig.subplots(1, 1 + len(group_names), squeeze=False)
    panels = [(axes[0, 0], cells, "throughput")] + [
        (axes[0, 1 + k], per_group[per_group["group"] == g], f"mean staleness of group {g}")
        for k, g in enumerate(group_names)]
    for ax, table, what in panels:
        for series in series_names:
            err = over_seeds(table[table["series"] == series], [cv_path], "err")
            err = err.sort_values(cv_path)
            ax.errorbar(err[cv_path], 100 * err["mean"], yerr=100 * err["ci"], fmt="o-", ms=5, lw=1.2, capsize=3,
                        color=colors[series], label=series)
        ax.axhline(0, color="0.4", lw=1)
        ax.axvline(1, color="0.6", lw=1, ls=":")
        ax.set(xlabel=f"service-time cv of {cv_group} ({cv_path.removesuffix('.service.cv')})",
               ylabel="(product form − simulated) / simulated (%)", title=what)
    if len(series_names) > 1:  # one legend for every panel, beside them: it covers nothing
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.suptitle(f"{name}: error of the product-form approximation against the service-time variability")
    _note(fig, f"points: mean over seeds; bars: {LEVEL:.0%} t-interval over seeds; dotted line: cv = 1 "
               "(exponential services, where the product form is exact for gamma; lognormal with cv 1 is not "
               "exponential)")
    return fig


# ---------------------------------------------------------------------------------------
# training figures


def curve_band(curves: pd.DataFrame, value: str, points: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, mean, half-width) of ``value`` over the seeds of one grid point, against simulated
    time: each seed's curve is interpolated linearly between its evaluations onto a common
    grid of times from 0 to the earliest end among the seeds (so every seed counts at every t)."""
    per_seed = [part.sort_values("time") for _, part in curves.groupby("seed", sort=True)]
    end = min(float(part["time"].iloc[-1]) for part in per_seed)
    t = np.linspace(0.0, end, points)
    values = np.array([np.interp(t, part["time"].to_numpy(float), part[value].to_numpy(float)) for part in per_seed])
    mean = values.mean(axis=0)
    if len(per_seed) < 2:
        return t, mean, np.full_like(t, np.nan)
    half = stats.t.ppf(0.5 + LEVEL / 2, len(per_seed) - 1) * values.std(axis=0, ddof=1) / np.sqrt(len(per_seed))
    return t, mean, half


def accuracy_time_figure(curves: pd.DataFrame, grid: list[str], targets: list[float], name: str) -> Figure:
    """Test accuracy (left) and training loss (right) against simulated time, one line per
    grid point with its t-band over seeds."""
    curves = with_series(curves, grid)
    series_names = list(curves["series"].unique())
    colors = dict(zip(series_names, palette(len(series_names))))
    several = len(series_names) > 1
    fig = Figure(figsize=(12.5 + 2 * several, 5), layout="constrained")
    ax_a, ax_l = fig.subplots(1, 2)
    seeds = int(curves.groupby("series")["seed"].nunique().min())
    loss_range = [np.inf, 0.0]
    for series in series_names:
        part = curves[curves["series"] == series]
        for ax, value in ((ax_a, "accuracy"), (ax_l, "loss")):
            t, mean, half = curve_band(part, value)
            ax.plot(t, mean, color=colors[series], lw=1.6, label=series)
            if np.isfinite(half).any():  # drawn within what the quantity can be: [0, 1], or > 0
                low, high = mean - half, mean + half
                low = np.clip(low, 0.0, 1.0) if value == "accuracy" else np.maximum(low, mean / 10)
                ax.fill_between(t, low, np.clip(high, 0.0, 1.0) if value == "accuracy" else high,
                                color=colors[series], alpha=0.2, lw=0)
            if value == "loss":
                loss_range = [min(loss_range[0], mean.min()), max(loss_range[1], mean.max())]
    for target in targets:
        ax_a.axhline(target, color="0.5", ls=":", lw=1)
    ax_a.set(xlabel="simulated time", ylabel="test accuracy", title="test accuracy against simulated time",
             ylim=(0, 1))
    ax_l.set(xlabel="simulated time", ylabel="training loss (1/n) Σ_i f_i(w)", yscale="log",
             title="training loss against simulated time", ylim=(loss_range[0] / 2, loss_range[1] * 2))
    if several:  # the same series in both panels: one legend beside them
        fig.legend(*ax_a.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    else:
        legend(ax_a, several)
    fig.suptitle(f"{name}: learning curves against simulated time")
    _note(fig, f"lines: mean over {seeds} seeds of the curves interpolated between evaluations; bands: "
               f"{LEVEL:.0%} t-interval over seeds" + ("; dotted: the accuracy targets" if targets else ""))
    return fig


def time_to_target_figure(df: pd.DataFrame, grid: list[str], targets: list[float], name: str) -> Figure:
    """Simulated time to reach each accuracy target, per grid point: mean and t-interval over
    the seeds that reached it, with how many of them did."""
    cells = with_series(cells_of(df), grid)
    series_names = list(cells["series"].unique())
    colors = dict(zip([f"{t:g}" for t in targets], palette(len(targets))))
    fig = Figure(figsize=(max(7.0, 1.3 * len(series_names) * len(targets) + 3), 5.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(targets)
    top = 0.0
    for j, target in enumerate(targets):
        column = target_column(target)
        for i, series in enumerate(series_names):
            times = cells.loc[cells["series"] == series, column]
            reached, total = int(times.notna().sum()), len(times)
            x = i + (j - (len(targets) - 1) / 2) * width
            if reached == 0:
                ax.text(x, 0, "not\nreached", ha="center", va="bottom", fontsize=8, color="0.3")
                continue
            mean, half = seed_interval(times)
            ax.bar(x, mean, width * 0.9, color=colors[f"{target:g}"], label=f"accuracy {target:g}" if i == 0 else None)
            half = half if np.isfinite(half) else 0.0
            if half > 0:  # a time is >= 0: the whisker stops there
                ax.errorbar(x, mean, yerr=[[min(half, mean)], [half]], color="0.2", capsize=3, lw=1)
            top = max(top, mean + half)
            ax.annotate(f"{reached}/{total}", (x, mean + half), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8, color="0.3")
    ax.set_xticks(range(len(series_names)), [s.replace(", ", "\n") for s in series_names], fontsize=9)
    ax.set_ylim(0, 1.15 * top if top > 0 else 1.0)
    ax.set(ylabel="simulated time to reach the target", title="time to reach each target test accuracy")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, title="target")
    fig.suptitle(f"{name}: time to target accuracy")
    _note(fig, f"bars: mean over the seeds that reached the target (k/n above each bar); whiskers: {LEVEL:.0%} "
               "t-interval over them")
    return fig


# ---------------------------------------------------------------------------------------


def make_figures(results: Path, out: Path, prefix: str = "", cell: str | None = None) -> list[Path]:
    """Write every figure the sweep in ``results`` supports; return their paths (none when no
    figure fits the sweep)."""
    df, manifest = load_results(results)
    curves = load_training(results)
    grid = list(manifest["grid"])
    name = manifest["name"]
    targets = list(manifest.get("targets", []))
    queueing = "mean_staleness_sim" in df.columns  # cells that ran the asynchronous network
    figures: dict[str, Figure] = {}
    with figure_style():
        if queueing and "concurrency" in grid and len(manifest["grid"]["concurrency"]) >= 3:
            figures["throughput_staleness"] = throughput_staleness_figure(df, grid, name)
            figures["group_staleness"] = group_staleness_figure(df, grid, name)
        traced = [c["name"] for c in manifest["cells"] if c["trace"]
                  and (results / CELLS_DIR / c["name"] / "trace.parquet").exists()]
        if cell is not None or traced:
            figures["staleness_distribution"] = staleness_distribution_figure(results, df, cell or traced[0], name)
        cv_paths = [p for p in grid if p.endswith(".service.cv")]
        if queueing and cv_paths:
            figures["approximation_error"] = approximation_error_figure(df, grid, cv_paths[0], name)
        if curves is not None:
            figures["accuracy_vs_time"] = accuracy_time_figure(curves, grid, targets, name)
            if targets:
                figures["time_to_target"] = time_to_target_figure(df, grid, targets, name)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for key, fig in figures.items():
            path = out / f"{prefix}{key}.png"
            fig.savefig(path, dpi=DPI)
            written.append(path)
    return written
