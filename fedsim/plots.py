"""Figures written into run folders.

Figures are ``matplotlib.figure.Figure`` objects built without pyplot, so they need no GUI
backend and leave the user's matplotlib alone (no ``matplotlib.use``, no pyplot figure
manager). The seaborn look is applied only inside :func:`figure_style`, a context that
restores every rc setting on exit; build and save fedsim's figures inside it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


@contextmanager
def figure_style() -> Iterator[None]:
    """seaborn's ``whitegrid`` style and ``notebook`` context, for the duration of the block
    (and no warning for a character of a user's group name that the font lacks)."""
    import matplotlib
    import seaborn as sns

    with matplotlib.rc_context(), sns.axes_style("whitegrid"), sns.plotting_context("notebook"), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from", category=UserWarning)
        yield


def staleness_figure(clients: pd.DataFrame, title: str) -> Figure:
    """Simulated mean staleness per client (with CI bars) against the analytical value.

    Left: simulated vs analytical, one point per client, with the line y = x.
    Right: per client, the simulated mean with its CI and the analytical value, by group.
    ``clients`` is the clients.csv table.
    """
    import seaborn as sns

    fig = Figure(figsize=(13, 5.2))
    ax_xy, ax_cl = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    palette = dict(zip(clients["group"].unique(), sns.color_palette("deep", clients["group"].nunique())))
    ci = clients["staleness_ci"].fillna(0.0)
    for group, part in clients.groupby("group", sort=False):
        color = palette[group]
        ax_xy.errorbar(part["staleness_analytic"], part["staleness_sim"], yerr=ci[part.index], fmt="o", ms=4,
                       color=color, ecolor=color, alpha=0.8, capsize=2, label=group)
        ax_cl.errorbar(part["client"], part["staleness_sim"], yerr=ci[part.index], fmt="o", ms=3, color=color,
                       alpha=0.85, capsize=1.5, label=f"{group} (simulated)")
        ax_cl.scatter(part["client"], part["staleness_analytic"], marker="_", s=120, color="black", zorder=3)
    finite = clients[["staleness_analytic", "staleness_sim"]].replace([np.inf, -np.inf], np.nan).dropna()
    top = float(finite.to_numpy().max()) * 1.05 if len(finite) else 1.0
    top = top if top > 0 else 1.0
    ax_xy.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="y = x")
    ax_xy.set(xlim=(0, top), ylim=(0, top), xlabel="analytical mean staleness E[τ_i] (updates)",
              ylabel="simulated mean staleness (updates)", title="simulated vs analytical, one point per client")
    ax_xy.legend(title="group", fontsize=8, loc="upper left")  # a fixed place: "best" is slow for many clients
    ax_cl.scatter([], [], marker="_", s=120, color="black", label="analytical")
    ax_cl.set(xlabel="client", ylabel="mean staleness (updates)", title="per client (bars: confidence interval)")
    ax_cl.legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
