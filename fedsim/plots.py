"""Figures written into run folders.

Figures are ``matplotlib.figure.Figure`` objects built without pyplot, so they need no GUI
backend and leave the user's matplotlib alone (no ``matplotlib.use``, no pyplot figure
manager, nothing shown in a notebook). They use seaborn's look (white grid, notebook sizes,
the "deep" palette) through the style sheets matplotlib ships, applied only inside
:func:`figure_style` (a context that restores every rc setting on exit), so writing a figure
imports neither seaborn nor scipy.stats.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

STYLE = ("seaborn-v0_8-whitegrid", "seaborn-v0_8-notebook", "seaborn-v0_8-deep")


@contextmanager
def figure_style() -> Iterator[None]:
    """fedsim's figure style for the duration of the block (and no warning for a character of
    a user's group name that the font lacks)."""
    with matplotlib.style.context(STYLE), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from", category=UserWarning)
        yield


def palette(k: int) -> list[str]:
    """The first ``k`` colours of the current colour cycle (repeated if needed)."""
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return [colors[i % len(colors)] for i in range(k)]


def staleness_figure(clients: pd.DataFrame, title: str) -> Figure:
    """Simulated mean staleness per client (with CI bars) against the analytical value.

    Left: simulated vs analytical, one point per client, with the line y = x.
    Right: per client, the simulated mean with its CI and the analytical value, by group.
    ``clients`` is the clients.csv table.
    """
    with figure_style():
        return _staleness_figure(clients, title)


def _staleness_figure(clients: pd.DataFrame, title: str) -> Figure:
    fig = Figure(figsize=(13, 5.2))
    ax_xy, ax_cl = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
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


BREAKDOWN = (  # (column, label, colour) in the order a task meets them
    ("downlink_wait", "downlink: waiting", "#9ecae1"), ("downlink_service", "downlink: transfer", "#3182bd"),
    ("compute_wait", "compute: queueing", "#fdbe85"), ("compute_service", "compute: service", "#e6550d"),
    ("uplink_wait", "uplink: waiting", "#a1d99b"), ("uplink_service", "uplink: transfer", "#31a354"),
    ("server_wait", "server: waiting", "#cbc9e2"), ("server_service", "server: service", "#756bb1"),
)


def time_breakdown_figure(table: pd.DataFrame, summary: dict, title: str) -> Figure:
    """Where a task's time and the energy go, per group, simulated next to analytical.

    Left: one pair of stacked bars per group (simulated above, hatched analytical below): the
    share of a task's mean time from dispatch to update spent waiting and in service at each
    station of its route, the server included; the mean time itself is written at the end of
    each bar (shares keep groups of very different speeds readable on one axis). Right: watts
    drawn by each group's clients and by the server, simulated (with CI bars) next to
    analytical; the title gives the energy per update. ``table`` is
    :func:`fedsim.report.time_breakdown_table`, ``summary`` the server and energy keys of
    summary.json.
    """
    with figure_style():
        return _time_breakdown_figure(table, summary, title)


def _time_breakdown_figure(table: pd.DataFrame, summary: dict, title: str) -> Figure:
    groups = list(dict.fromkeys(table["group"]))
    fig = Figure(figsize=(14, 0.8 * len(groups) + 4.2))
    ax_t, ax_e = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    scale = table[[col for col, _, _ in BREAKDOWN]].abs().to_numpy().max()
    # a component is shown where it is more than round-off (an analytical wait of 1e-17, say)
    shown = [(col, label, colour) for col, label, colour in BREAKDOWN if table[col].abs().max() > 1e-9 * scale]
    height = 0.38
    for source, offset, hatch in (("simulated", -height / 2, None), ("analytical", height / 2, "//")):
        part = table[table["source"] == source].set_index("group").loc[groups]
        total = part[[col for col, _, _ in shown]].sum(axis=1).to_numpy()
        left = np.zeros(len(groups))
        y = np.arange(len(groups)) + offset
        for col, label, colour in shown:
            width = 100 * part[col].to_numpy() / total
            ax_t.barh(y, width, height * 0.95, left=left, color=colour, hatch=hatch, edgecolor="white",
                      label=label if source == "simulated" else None)
            left += width
        for yy, t in zip(y, total):
            ax_t.text(100.5, yy, f"{t:.4g} ({source[:3]}.)", va="center", fontsize=8)
    ax_t.set_yticks(np.arange(len(groups)), groups)
    ax_t.invert_yaxis()
    ax_t.set(xlim=(0, 100), xlabel="share of the mean time per task, dispatch to update (%); "
             "at the right: that mean time (time units)",
             title="where a task's time goes (upper bar simulated, hatched lower bar analytical)")
    ax_t.title.set_fontsize(10)
    ax_t.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)

    sim = table[table["source"] == "simulated"].set_index("group").loc[groups]
    ana = table[table["source"] == "analytical"].set_index("group").loc[groups]
    names = groups + ["server"]
    server_sim = summary["power_sim"] - float(sim["power"].sum())
    server_ana = summary["power_analytic"] - float(ana["power"].sum())
    x = np.arange(len(names))
    ax_e.bar(x - 0.2, np.append(sim["power"], server_sim), 0.4, color="#4c72b0", label="simulated",
             yerr=np.append(sim["power_ci"].fillna(0.0), 0.0), capsize=3)
    ax_e.bar(x + 0.2, np.append(ana["power"], server_ana), 0.4, color="#c7c7c7", hatch="//", edgecolor="white",
             label="analytical")
    ax_e.set_xticks(x, names, rotation=20)
    epu_ci = summary["energy_per_update_ci"]
    ax_e.set(ylabel="power drawn (W = joules per time unit)",
             title=f"power per group (all its clients) and server\nenergy per update "
                   f"{summary['energy_per_update_sim']:.4g}"
                   f"{'' if epu_ci is None or not np.isfinite(epu_ci) else f' ± {epu_ci:.2g}'} J "
                   f"(analytical {summary['energy_per_update_analytic']:.4g} J)")
    ax_e.title.set_fontsize(10)
    ax_e.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
