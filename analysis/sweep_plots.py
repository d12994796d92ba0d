"""Figures of a sweep folder (``fedsim sweep ... --out RESULTS``), as seaborn PNGs.

    python analysis/sweep_plots.py RESULTS [--out DIR] [--prefix NAME_] [--cell CELL]

reads ``RESULTS/results.parquet`` and ``RESULTS/sweep.json`` and writes into DIR (default
``RESULTS/figures``) the figures the sweep supports:

* ``throughput_staleness.png`` (grid over ``concurrency``, 3 values or more): throughput and
  update-weighted mean staleness against C, simulated (mean over seeds, 95% t-interval over
  seeds) and analytical (:func:`fedsim.analytic.solve` at every integer C), with the heavy-load
  limit ``1 / max_i(p_i / mu_i)``;
* ``group_staleness.png`` (same condition): per-group mean staleness against C, simulated vs
  analytical, and their relative difference;
* ``staleness_distribution.png`` (a cell with ``trace.parquet``, see ``trace:`` in the sweep
  file): the per-update staleness of each group in one cell, violins and ECDFs, over the
  statistics window;
* ``approximation_error.png`` (a grid over some ``clients[k].service.cv``): relative error of
  the product-form approximation, ``(analytical - simulated) / simulated``, of the throughput
  and of each group's mean staleness, against the coefficient of variation.

Every other grid column splits the points into series (one colour or line style per
combination of values). Seeds are independent replications, so the intervals are
``mean +- t_{k-1, 0.975} sd / sqrt(k)`` over the k seeds of a grid point.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from scipy import stats  # noqa: E402

from fedsim.analytic import solve, throughput_curve  # noqa: E402
from fedsim.sweep import CELLS_DIR, SUMMARY_FILE, load_results  # noqa: E402

LEVEL = 0.95
DPI = 100


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


def _note(fig: plt.Figure, text: str) -> None:
    fig.text(0.5, 0.005, text, ha="center", va="bottom", fontsize=8.5, color="0.3")


# ---------------------------------------------------------------------------------------


def throughput_staleness_figure(df: pd.DataFrame, grid: list[str], name: str) -> plt.Figure:
    """Throughput and update-weighted mean staleness against C, simulated and analytical."""
    others = [p for p in grid if p != "concurrency"]
    cells = with_series(cells_of(df), others)
    palette = dict(zip(cells["series"].unique(), sns.color_palette("deep", cells["series"].nunique())))
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12.5, 5))
    for series, part in cells.groupby("series", sort=False):
        color = palette[series]
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
    ax_t.legend(fontsize=8, loc="lower right")
    ax_s.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{name}: throughput and staleness against concurrency")
    _note(fig, f"points: mean over {seeds} seeds; bars: {LEVEL:.0%} t-interval over seeds; "
               "lines: product-form model (fedsim.analytic.solve at every integer C)")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def group_staleness_figure(df: pd.DataFrame, grid: list[str], name: str) -> plt.Figure:
    """Per-group mean staleness against C (left) and sim-vs-analytical relative difference (right)."""
    others = [p for p in grid if p != "concurrency"]
    ok = df[df["status"] == "ok"]
    groups_rows = with_series(ok.drop_duplicates(["cell", "group"]).reset_index(drop=True), others)
    group_names = list(groups_rows["group"].unique())
    palette = dict(zip(group_names, sns.color_palette("deep", len(group_names))))
    series_names = list(groups_rows["series"].unique())
    styles = dict(zip(series_names, ["-", "--", ":", "-."] * len(series_names)))
    markers = dict(zip(series_names, ["o", "s", "^", "D", "v", "P"] * len(series_names)))
    fig, (ax_g, ax_e) = plt.subplots(1, 2, figsize=(12.5, 5))
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
            ax_g.plot(grid_c[1:], curves[g][1:], color=palette[g], ls=styles[series], lw=1.4)
            ax_g.errorbar(sim["concurrency"], sim["mean"], yerr=sim["ci"], fmt=markers[series], ms=5, capsize=3,
                          color=palette[g], label=f"{g}{suffix}")
            rel = rows.assign(rel=(rows["group_staleness_sim"] - rows["group_staleness_analytic"])
                              / rows["group_staleness_analytic"])
            err = over_seeds(rel[rel["concurrency"] > 1], ["concurrency"], "rel")
            ax_e.errorbar(err["concurrency"], 100 * err["mean"], yerr=100 * err["ci"], fmt=markers[series],
                          ms=5, capsize=3, color=palette[g], ls=styles[series], lw=1, label=f"{g}{suffix}")
    ax_g.plot([], [], color="0.3", lw=1.4, label="analytical (lines)")
    ax_g.set(xscale="log", yscale="log", xlabel="concurrency C (staleness is 0 at C = 1)",
             ylabel="mean staleness of the group's updates (updates)",
             title="mean staleness per group: slope 1 = linear growth in C")
    ax_g.legend(title="group (points: simulated)", fontsize=8)
    ax_e.axhline(0, color="0.4", lw=1)
    ax_e.set(xscale="log", xlabel="concurrency C", ylabel="(simulated − analytical) / analytical (%)",
             title="relative difference, simulated vs analytical")
    ax_e.legend(title="group", fontsize=8)
    exact = bool(ok["exact"].all())
    fig.suptitle(f"{name}: staleness by client group against concurrency"
                 + ("" if exact else " (non-exponential: analytical = product-form approximation)"))
    _note(fig, f"points: mean over seeds; bars: {LEVEL:.0%} t-interval over seeds; group staleness is the "
               "update-weighted mean Σ_(i in g) p_i E[τ_i] / Σ_(i in g) p_i")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def staleness_distribution_figure(results: Path, df: pd.DataFrame, cell: str) -> plt.Figure:
    """Per-update staleness by group in one traced cell: violins (left), ECDFs (right)."""
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
    palette = dict(zip(order, sns.color_palette("deep", len(order))))
    groups = pd.DataFrame(summary["groups"]).set_index("group")
    fig, (ax_v, ax_e) = plt.subplots(1, 2, figsize=(12.5, 5.3))
    # violins of log10(1 + tau): the tails span decades, and quartiles survive a monotone map
    sns.violinplot(x=data["group"], y=np.log10(1 + data["staleness"]), hue=data["group"], order=order,
                   hue_order=order, palette=palette, cut=0, inner="quartile", density_norm="width", legend=False,
                   ax=ax_v)
    for k, g in enumerate(order):
        ax_v.scatter([k], [np.log10(1 + groups.loc[g, "staleness_sim"])], marker="o", color="white",
                     edgecolor="black", zorder=4, label="simulated mean" if k == 0 else None)
        ax_v.scatter([k], [np.log10(1 + groups.loc[g, "staleness_analytic"])], marker="_", s=400, color="black",
                     zorder=4, label="analytical mean" if k == 0 else None)
    top = int(data["staleness"].max())
    ticks = [v for v in (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000) if v <= 3 * top]
    ax_v.set_yticks(np.log10(1 + np.array(ticks)), [str(v) for v in ticks])
    ax_v.set(xlabel="client group", ylabel="staleness of an update (updates, log scale of 1 + τ)",
             title="distribution per group (dashed lines: quartiles)")
    ax_v.legend(fontsize=8)
    sns.ecdfplot(data=data, x="staleness", hue="group", hue_order=order, palette=palette, ax=ax_e)
    for g in order:
        ax_e.axvline(groups.loc[g, "staleness_analytic"], color=palette[g], ls=":", lw=1.2)
    ax_e.set_xscale("symlog", linthresh=1)
    ax_e.set_xlim(0, 1.2 * top + 1)
    ax_e.set(xlabel="staleness of an update (updates; linear below 1, logarithmic above)",
             ylabel="fraction of the group's updates ≤ x", title="empirical CDF per group (dotted: analytical mean)")
    fig.suptitle(f"{summary['scenario']['name']}: staleness distribution per group in one cell\n"
                 + cell.replace("__", ", "), fontsize=12)
    _note(fig, f"{len(data):,} updates of the statistics window (after a warm-up of {first:,} updates); "
               "from the cell's trace.parquet, one row per applied update")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def approximation_error_figure(df: pd.DataFrame, grid: list[str], cv_path: str, name: str) -> plt.Figure:
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
    palette = dict(zip(series_names, sns.color_palette("deep", len(series_names))))
    k = int(re.match(r"clients\[(\d+)\]", cv_path).group(1))
    cv_group = list(dict.fromkeys(ok.loc[ok["cell"] == ok["cell"].iloc[0], "group"]))[k]
    fig, axes = plt.subplots(1, 1 + len(group_names), figsize=(5.2 * (1 + len(group_names)), 5), squeeze=False)
    panels = [(axes[0, 0], cells, "throughput")] + [
        (axes[0, 1 + k], per_group[per_group["group"] == g], f"mean staleness of group {g}")
        for k, g in enumerate(group_names)]
    for ax, table, what in panels:
        for series in series_names:
            err = over_seeds(table[table["series"] == series], [cv_path], "err")
            err = err.sort_values(cv_path)
            ax.errorbar(err[cv_path], 100 * err["mean"], yerr=100 * err["ci"], fmt="o-", ms=5, lw=1.2, capsize=3,
                        color=palette[series], label=series)
        ax.axhline(0, color="0.4", lw=1)
        ax.axvline(1, color="0.6", lw=1, ls=":")
        ax.set(xlabel=f"service-time cv of {cv_group} ({cv_path.removesuffix('.service.cv')})",
               ylabel="(product form − simulated) / simulated (%)", title=what)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{name}: error of the product-form approximation against the service-time variability")
    _note(fig, f"points: mean over seeds; bars: {LEVEL:.0%} t-interval over seeds; dotted line: cv = 1 "
               "(exponential services, where the product form is exact for gamma; lognormal with cv 1 is not "
               "exponential)")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


# ---------------------------------------------------------------------------------------


def make_figures(results: Path, out: Path, prefix: str = "", cell: str | None = None) -> list[Path]:
    """Write every figure the sweep in ``results`` supports; return their paths."""
    df, manifest = load_results(results)
    grid = list(manifest["grid"])
    name = manifest["name"]
    sns.set_theme(style="whitegrid", context="notebook")
    figures: dict[str, plt.Figure] = {}
    if "concurrency" in grid and len(manifest["grid"]["concurrency"]) >= 3:
        figures["throughput_staleness"] = throughput_staleness_figure(df, grid, name)
        figures["group_staleness"] = group_staleness_figure(df, grid, name)
    traced = [c["name"] for c in manifest["cells"] if c["trace"]
              and (results / CELLS_DIR / c["name"] / "trace.parquet").exists()]
    if cell is not None or traced:
        figures["staleness_distribution"] = staleness_distribution_figure(results, df, cell or traced[0])
    cv_paths = [p for p in grid if p.endswith(".service.cv")]
    if cv_paths:
        figures["approximation_error"] = approximation_error_figure(df, grid, cv_paths[0], name)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, fig in figures.items():
        path = out / f"{prefix}{key}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a sweep folder (fedsim sweep --out)")
    parser.add_argument("--out", type=Path, help="where to write the PNGs (default RESULTS/figures)")
    parser.add_argument("--prefix", default="", help="prefix of the file names, e.g. concurrency_")
    parser.add_argument("--cell", help="cell (folder name) of the staleness distribution; it needs trace.parquet")
    args = parser.parse_args(argv)
    if not (args.results / "results.parquet").exists():
        print(f"error: {args.results}: no results.parquet (run fedsim sweep first)", file=sys.stderr)
        return 2
    if args.cell and not (args.results / CELLS_DIR / args.cell / "trace.parquet").exists():
        print(f"error: --cell: {args.cell} has no trace.parquet; name it in the sweep file's trace: and rerun "
              "the sweep", file=sys.stderr)
        return 2
    for path in make_figures(args.results, args.out or args.results / "figures", args.prefix, args.cell):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
