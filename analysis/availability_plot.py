"""Figure of an availability sweep (sweeps/availability.yaml): what offline clients cost.

    python analysis/availability_plot.py RESULTS [--out DIR] [--group devices]

reads ``RESULTS/results.parquet`` (``fedsim sweep ... --out RESULTS``) and writes
``DIR/availability_sweep.png`` (default DIR: ``RESULTS/figures``): against the availability
fraction of the group that switches (``availability_analytic`` of its clients), the throughput
of applied updates, the update-weighted mean staleness and the fraction of tasks lost, one
series per value of ``clients[k].availability.offline``. Simulated values are the mean over
seeds with a 95% t-interval over seeds (seeds are independent replications); the
lines are the analysis fedsim reports next to them (the effective-rate approximation:
compute rate times availability, and the loss and thinning of :mod:`fedsim.behaviour_analytic`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from fedsim.sweep import load_results

LEVEL = 0.95


def seed_means(values: pd.Series) -> tuple[float, float]:
    """Mean over seeds and the half-width of its t-interval (nan with one seed)."""
    x = values.dropna().to_numpy(dtype=float)
    if x.size < 2:
        return (float(x[0]) if x.size else float("nan")), float("nan")
    return float(x.mean()), float(stats.t.ppf(0.5 + LEVEL / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))


def points(results: pd.DataFrame, group: str) -> pd.DataFrame:
    """One row per cell: availability of ``group``, throughput, staleness, loss (simulated and analytical)."""
    ok = results[results["status"] == "ok"]
    offline = next(c for c in ok.columns if c.endswith(".availability.offline"))
    rows = []
    for cell, part in ok.groupby("cell", sort=False):
        mine = part[part["group"] == group]
        lost = mine["lost_tasks"].sum()
        rows.append({
            "offline": part[offline].iloc[0], "seed_index": part["seed_index"].iloc[0],
            "availability": float(mine["availability_analytic"].iloc[0]),
            "availability_sim": float(mine["availability_sim"].mean()),
            "throughput_sim": part["throughput_sim"].iloc[0], "throughput_analytic": part["throughput_analytic"].iloc[0],
            "staleness_sim": part["mean_staleness_sim"].iloc[0],
            "staleness_analytic": part["mean_staleness_analytic"].iloc[0],
            "loss_sim": lost / (lost + mine["completions"].sum()),
            "loss_analytic": float(mine["loss_fraction_analytic"].mean()),
        })
    return pd.DataFrame(rows)


def availability_figure(table: pd.DataFrame, title: str) -> Figure:
    """Throughput, mean staleness and loss fraction against availability (module docstring)."""
    fig = Figure(figsize=(13, 4.4))
    axes = fig.subplots(1, 3)
    panels = (("throughput", "applied updates per unit time"), ("staleness", "mean staleness (updates)"),
              ("loss", "fraction of the group's tasks lost"))
    for k, (offline, part) in enumerate(table.groupby("offline", sort=False)):
        color = f"C{k}"
        grid = part.groupby("availability", sort=True)
        a = np.array(list(grid.groups))
        for ax, (name, label) in zip(axes, panels):
            mean_ci = np.array([seed_means(g[f"{name}_sim"]) for _, g in grid])
            ax.errorbar(a, mean_ci[:, 0], yerr=np.nan_to_num(mean_ci[:, 1]), fmt="o", ms=4, capsize=3,
                        color=color, label=f"{offline}: simulated (95% CI over seeds)")
            ax.plot(a, grid[f"{name}_analytic"].mean().to_numpy(), color=color, lw=1.2, ls="--",
                    label=f"{offline}: effective-rate approximation")
            ax.set(xlabel="availability fraction of the devices", ylabel=label)
    for ax, (_, label) in zip(axes, panels):
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--group", default="devices", help="the group whose availability varies")
    args = parser.parse_args()
    results, manifest = load_results(args.results)
    out = args.out or args.results / "figures"
    out.mkdir(parents=True, exist_ok=True)
    table = points(results, args.group)
    fig = availability_figure(table, f"{manifest.get('name', 'sweep')}: throughput, staleness and losses "
                              f"against availability ({args.group})")
    fig.savefig(out / "availability_sweep.png", dpi=100)
    print(f"wrote {out / 'availability_sweep.png'}")


if __name__ == "__main__":
    main()
