"""Figures written into run folders (matplotlib on a non-interactive backend).

They use seaborn's look (white grid, notebook sizes, the "deep" palette) through the style
sheets matplotlib ships, so writing a figure imports neither seaborn nor scipy.stats.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

STYLE = ("seaborn-v0_8-whitegrid", "seaborn-v0_8-notebook", "seaborn-v0_8-deep")


def palette(k: int) -> list[str]:
    """The first ``k`` colours of the current colour cycle (repeated if needed)."""
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [colors[i % len(colors)] for i in range(k)]


def staleness_figure(clients: pd.DataFrame, title: str) -> plt.Figure:
    """Simulated mean staleness per client (with CI bars) against the analytical value.

    Left: simulated vs analytical, one point per client, with the line y = x.
    Right: per client, the simulated mean with its CI and the analytical value, by group.
    ``clients`` is the clients.csv table.
    """
    with plt.style.context(STYLE):
        return _staleness_figure(clients, title)


def _staleness_figure(clients: pd.DataFrame, title: str) -> plt.Figure:
    fig, (ax_xy, ax_cl) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.6]})
    colors = dict(zip(clients["group"].unique(), palette(clients["group"].nunique())))
    ci = clients["staleness_ci"].fillna(0.0)
    for group, part in clients.groupby("group", sort=False):
        color = colors[group]
        ax_xy.errorbar(part["staleness_analytic"], part["staleness_sim"], yerr=ci[part.index], fmt="o", ms=4,
                       color=color, ecolor=color, alpha=0.8, capsize=2, label=group)
        ax_cl.errorbar(part["client"], part["staleness_sim"], yerr=ci[part.index], fmt="o", ms=3, color=color,
                       alpha=0.85, capsize=1.5, label=f"{group} (simulated)")
        ax_cl.scatter(part["client"], part["staleness_analytic"], marker="_", s=120, color="black", zorder=3)
    finite = clients[["staleness_analytic", "staleness_sim"]].replace([np.inf, -np.inf], np.nan).dropna()
    top = float(finite.to_numpy().max()) * 1.05 if len(finite) else 1.0
    ax_xy.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="y = x")
    ax_xy.set(xlim=(0, top), ylim=(0, top), xlabel="analytical mean staleness E[τ_i] (updates)",
              ylabel="simulated mean staleness (updates)", title="simulated vs analytical, one point per client")
    ax_xy.legend(title="group", fontsize=8)
    ax_cl.scatter([], [], marker="_", s=120, color="black", label="analytical")
    ax_cl.set(xlabel="client", ylabel="mean staleness (updates)", title="per client (bars: confidence interval)")
    ax_cl.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
