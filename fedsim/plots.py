"""Figures written into run folders (seaborn on a non-interactive backend)."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

PER_CLIENT_LIMIT = 200  # above this many clients the right panel summarises per group
LOG_SPAN = 30.0  # log axes when the positive values span more than this factor


def _interval(mean: pd.Series, half_width: pd.Series) -> np.ndarray:
    """Error-bar lengths (below, above) of mean +- half-width, the lower end clipped at zero
    (staleness is non-negative)."""
    hw = half_width.fillna(0.0).to_numpy()
    return np.vstack([np.minimum(hw, np.maximum(mean.to_numpy(), 0.0)), hw])


def _log_scale(values: np.ndarray) -> bool:
    positive = values[np.isfinite(values) & (values > 0)]
    return len(positive) > 1 and positive.max() / positive.min() > LOG_SPAN


def staleness_figure(clients: pd.DataFrame, title: str, warning: str | None = None) -> plt.Figure:
    """Simulated mean staleness per client (with CI bars) against the analytical value.

    Left: simulated vs analytical, one point per client, with the line y = x (log-log when the
    values span decades; bars only up to PER_CLIENT_LIMIT clients). Right: up to that many
    clients, every client's simulated mean with its CI and the analytical value, by group;
    beyond, the relative errors (sim - analytical) / analytical of each group's clients as a
    box plot, with the group's median relative CI half-width as a band around zero.
    Intervals never extend below zero. ``warning`` (why the intervals are not to be trusted)
    is printed in red across the top. ``clients`` is the clients.csv table.
    """
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (ax_xy, ax_cl) = plt.subplots(1, 2, figsize=(13, 5.6), gridspec_kw={"width_ratios": [1, 1.6]})
    groups = list(clients["group"].unique())
    palette = dict(zip(groups, sns.color_palette("deep", len(groups))))
    few = len(clients) <= PER_CLIENT_LIMIT
    values = clients[["staleness_analytic", "staleness_sim"]].to_numpy(dtype=float)
    log = _log_scale(values.ravel())
    for group, part in clients.groupby("group", sort=False):
        color = palette[group]
        if few:
            ax_xy.errorbar(part["staleness_analytic"], part["staleness_sim"],
                           yerr=_interval(part["staleness_sim"], part["staleness_ci"]), fmt="o", ms=4, color=color,
                           ecolor=color, alpha=0.8, capsize=2, label=group)
        else:
            ax_xy.scatter(part["staleness_analytic"], part["staleness_sim"], s=4, color=color, alpha=0.3,
                          rasterized=True, label=group)
    finite = values[np.isfinite(values).all(axis=1)]
    if log:
        positive = finite[(finite > 0).all(axis=1)]
        bottom, top = positive.min() / 1.5, positive.max() * 1.5
        ax_xy.set(xscale="log", yscale="log")
    else:
        bottom, top = 0.0, (float(finite.max()) * 1.05 if len(finite) else 1.0) or 1.0
    ax_xy.plot([bottom, top], [bottom, top], color="grey", lw=1, ls="--", label="y = x")
    ax_xy.set(xlim=(bottom, top), ylim=(bottom, top), xlabel="analytical mean staleness E[τ_i] (updates)",
              ylabel="simulated mean staleness (updates)", title="simulated vs analytical, one point per client")
    ax_xy.legend(title="group", fontsize=8)
    if few:
        _per_client_panel(ax_cl, clients, palette, log)
    else:
        _relative_error_panel(ax_cl, clients, palette)
    lines = 0
    if warning:
        text = textwrap.fill(f"NOT TO BE TRUSTED: {warning}", 140)
        lines = text.count("\n") + 1
        fig.text(0.5, 0.99, text, ha="center", va="top", color="#b00000", fontsize=9, fontweight="bold")
        for ax in (ax_xy, ax_cl):
            for spine in ax.spines.values():
                spine.set(color="#b00000", linewidth=2)
    top = 1.0 - 0.035 * lines
    fig.suptitle(title, y=top - 0.005, va="top")
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def _per_client_panel(ax: plt.Axes, clients: pd.DataFrame, palette: dict, log: bool) -> None:
    for group, part in clients.groupby("group", sort=False):
        ax.errorbar(part["client"], part["staleness_sim"], yerr=_interval(part["staleness_sim"], part["staleness_ci"]),
                    fmt="o", ms=3, color=palette[group], alpha=0.85, capsize=1.5, label=f"{group} (simulated)")
        ax.scatter(part["client"], part["staleness_analytic"], marker="_", s=120, color="black", zorder=3)
    ax.scatter([], [], marker="_", s=120, color="black", label="analytical")
    if log:  # bars that reach zero run off the bottom, which stays near the smallest value
        values = clients[["staleness_analytic", "staleness_sim"]].to_numpy(dtype=float).ravel()
        ax.set_yscale("log")
        ax.set_ylim(bottom=values[np.isfinite(values) & (values > 0)].min() / 3)
    ax.set(xlabel="client", ylabel="mean staleness (updates)", title="per client (bars: confidence interval)")
    ax.legend(fontsize=8)


def _relative_error_panel(ax: plt.Axes, clients: pd.DataFrame, palette: dict) -> None:
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = pd.DataFrame({"group": clients["group"], "error": clients["staleness_rel_error"],
                            "half": clients["staleness_ci"] / clients["staleness_analytic"]})
    rel = rel.replace([np.inf, -np.inf], np.nan)
    order = list(palette)
    sns.boxplot(data=rel.dropna(subset=["error"]), x="group", y="error", hue="group", order=order, hue_order=order,
                palette=palette, fliersize=1.5, legend=False, ax=ax)
    for k, group in enumerate(order):
        half = rel.loc[rel["group"] == group, "half"].median()
        if np.isfinite(half):
            ax.fill_between([k - 0.45, k + 0.45], -half, half, color="grey", alpha=0.25, lw=0,
                            label="median CI half-width (relative)" if k == 0 else None)
    ax.axhline(0.0, color="black", lw=1)
    ax.set(xlabel="client group", ylabel="(simulated - analytical) / analytical",
           title=f"relative error per client, {len(clients):,} clients (boxes: quartiles by group)")
    ax.legend(fontsize=8)
