"""The outputs of client behaviour in a run folder: clients.csv columns, summary.json keys, and
the timeline figure ``behaviour.png``.

``clients.csv`` adds, per client: ``availability_sim`` (fraction of the window it was online),
``availability_analytic`` (E[on] / (E[on] + E[off]), or the trace's on-time over its period),
``capacity_analytic`` (the time-average of online x speed factor, :mod:`fedsim.behaviour_analytic`),
``lost_tasks`` (tasks it lost in the window, offline or dropout), ``loss_fraction_sim`` (lost over
lost + completed in the window) and ``loss_fraction_analytic`` (1 - s_i). There ``queue_sim``
counts the lost tasks' time at the client too (every task present).

``summary.json`` adds ``exact_case`` (the exact case, or null: the effective-rate
approximation), ``tasks_dispatched``, ``tasks_applied``, ``tasks_lost``, ``tasks_lost_dropout``,
``tasks_lost_offline`` and ``tasks_in_flight`` (the whole run: dispatched = applied + lost + in
flight), ``throughput_always_on_analytic`` (the same network with every client always online
at full speed, no loss), and ``throughput_lost_sim`` / ``throughput_lost_analytic``, the
fraction of that always-on throughput the behaviour costs, ``1 - throughput / always-on``.

``timeline.csv`` (:func:`timeline_table`) holds the run's timeline, one row per time bin:
``start``, ``end``, ``applied`` (updates applied in the bin), ``lost`` (tasks lost), and per
group ``online_<group>`` (mean clients online) and ``in_flight_<group>`` (mean tasks in flight,
anywhere in the network); ``behaviour.png`` (:func:`timeline_figure`) draws it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fedsim.run import RunResult

BEHAVIOUR_COLUMNS = ("availability_sim", "availability_analytic", "capacity_analytic", "lost_tasks",
                     "loss_fraction_sim", "loss_fraction_analytic")
SLIDING_WINDOW_BINS = 15
"""Width of the throughput's sliding window, in timeline bins (a 512-bin timeline has 256 to 512)."""


def behaviour_columns(result: RunResult) -> dict[str, np.ndarray]:
    """The behaviour columns of clients.csv, and ``queue_sim`` with the lost tasks' time."""
    b, m, st = result.behaviour, result.behaviour_model, result.stats
    completions = st.clients.completions
    duration = st.sim_time - st.window_start
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = b.lost / (b.lost + completions)
        queue = st.clients.queue_mean + (b.lost_presence / duration if duration > 0 else np.nan)
    return {"availability_sim": b.availability, "availability_analytic": m.availability,
            "capacity_analytic": m.capacity, "lost_tasks": b.lost, "loss_fraction_sim": loss,
            "loss_fraction_analytic": m.loss_fraction, "queue_sim": queue}


def behaviour_summary(result: RunResult) -> dict[str, Any]:
    """The behaviour keys of summary.json (module docstring)."""
    b, m, st = result.behaviour, result.behaviour_model, result.stats
    always_on = m.always_on_throughput
    return {
        "exact_case": m.case,
        "tasks_dispatched": b.dispatched_total,
        "tasks_applied": b.applied_total,
        "tasks_lost": sum(b.lost_total.values()),
        "tasks_lost_dropout": b.lost_total["dropout"],
        "tasks_lost_offline": b.lost_total["offline"],
        "tasks_in_flight": b.in_flight_total,
        "throughput_always_on_analytic": always_on,
        "throughput_lost_sim": 1.0 - st.throughput / always_on,
        "throughput_lost_analytic": 1.0 - result.analytic.throughput / always_on,
    }


def timeline_table(result: RunResult) -> pd.DataFrame:
    """timeline.csv: the run's timeline bins (module docstring)."""
    t = result.behaviour.timeline
    table = pd.DataFrame({"start": t.starts, "end": t.starts + t.width, "applied": t.applied, "lost": t.lost})
    for g, group in enumerate(result.scenario.groups):
        table[f"online_{group.name}"] = t.online[g]
    for g, group in enumerate(result.scenario.groups):
        table[f"in_flight_{group.name}"] = t.in_flight[g]
    return table


def sliding_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Centred moving average over ``k`` bins (fewer at the ends)."""
    kernel = np.ones(k)
    return np.convolve(x, kernel, "same") / np.convolve(np.ones_like(x), kernel, "same")


def timeline_figure(timeline: pd.DataFrame, summary: dict[str, Any]) -> Figure:
    """One run over simulated time, from timeline.csv and summary.json: clients online per
    group (speed factors dashed), tasks in flight per group (stacked: they add up to C), and
    the throughput of applied updates and the rate of lost tasks in a sliding window, with the
    analytical throughput and the always-on network's."""
    from matplotlib.figure import Figure

    from fedsim.plots import palette

    scenario = summary["scenario"]
    groups = scenario["clients"]
    start, end = timeline["start"].to_numpy(), timeline["end"].to_numpy()
    width = float(end[0] - start[0])
    x = (start + end) / 2
    last = min(float(end[-1]), float(summary["sim_time"]))
    fig = Figure(figsize=(11, 8.5))
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1, 1.1]})
    colors = palette(len(groups))
    ax = axes[0]
    top = 1.0
    for g, group in enumerate(groups):
        always = "" if "availability" in group else ", always on"
        ax.plot(x, timeline[f"online_{group['group']}"] / group["count"], color=colors[g], lw=1.2,
                label=f"{group['group']} ({group['count']} clients{always})")
        if "speed_profile" in group:
            profile = group["speed_profile"]
            factors = profile["factors"]
            edges = np.arange(0.0, last + profile["period"], profile["period"] / len(factors))
            ax.step(edges, np.resize(factors, len(edges)), where="post", color=colors[g], lw=1, ls="--",
                    label=f"{group['group']}: speed factor")
            top = max(top, max(factors))
    ax.set(ylabel="fraction online", ylim=(-0.03, top * 1.05),
           title="clients online per group (mean over each bin); speed factors dashed")
    ax = axes[1]
    ax.stackplot(x, [timeline[f"in_flight_{g['group']}"] for g in groups], colors=colors,
                 labels=[g["group"] for g in groups], alpha=0.85)
    C = scenario["concurrency"]
    ax.set(ylabel="tasks", ylim=(0, C * 1.05), title=f"tasks in flight per group (stacked; they add up to C = {C})")
    ax = axes[2]
    k = min(SLIDING_WINDOW_BINS, len(x))
    ax.plot(x, sliding_mean(timeline["applied"].to_numpy(float), k) / width, color="black", lw=1.3,
            label=f"applied updates / time (sliding window {k * width:.3g})")
    ax.plot(x, sliding_mean(timeline["lost"].to_numpy(float), k) / width, color="#b2182b", lw=1.1, ls="--",
            label="lost tasks / time")
    approx = "" if summary["exact"] else " (approximation)"
    ax.axhline(summary["throughput_analytic"], color="grey", lw=1, ls=":", label=f"analytical throughput{approx}")
    ax.axhline(summary["throughput_always_on_analytic"], color="0.25", lw=1, ls="-.",
               label="always-on network (analytical)")
    ax.set(xlabel="simulated time", ylabel="per unit of time", title="throughput and losses")
    ax.set_ylim(bottom=0)
    warmup = summary["window_start"]
    for ax in axes:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.axvspan(0, warmup, color="0.85", zorder=0)
        ax.set_xlim(0, last)
    axes[0].text(warmup / 2, 1.0, "warm-up", ha="center", va="top", fontsize=8, color="0.4")
    fig.suptitle(f"{scenario['name']}: client behaviour over simulated time (one run, seed {scenario['seed']})")
    fig.tight_layout()
    return fig
