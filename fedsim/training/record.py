"""The learning curve of a run: ``training.csv`` (written row by row) and ``training.png``.

``training.csv`` has one row per evaluation: ``update`` (updates applied so far; for FedAvg,
client updates aggregated so far), ``sim_time`` (simulated time of that update), ``wall_seconds``
(wall-clock seconds of training so far), ``train_loss`` ((1/n) sum_i f_i(w)), ``test_loss`` and
``test_accuracy``. Each row is flushed when written, so a run that stops (divergence, a crash)
leaves its curve up to that point.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.errors import RunStopped

COLUMNS = ("update", "sim_time", "wall_seconds", "train_loss", "test_loss", "test_accuracy")

Row = tuple[int, float, float, float, float, float]


class TrainingDiverged(RunStopped):
    """The training loss became NaN or infinite."""


class TrainingRecord:
    """Rows of ``training.csv``, kept in memory and appended to the file (when one is given)."""

    def __init__(self, path: Path | None, rows: list[Row] | None = None) -> None:
        self.path = path
        self.rows: list[Row] = list(rows or [])
        self._file = None
        if path is not None:
            self._file = open(path, "w", newline="")  # noqa: SIM115 -- kept open while the run writes
            self._writer = csv.writer(self._file)
            self._writer.writerow(COLUMNS)
            for row in self.rows:
                self._writer.writerow(_fmt(row))
            self._file.flush()

    def append(self, row: Row) -> None:
        self.rows.append(row)
        if self._file is not None:
            self._writer.writerow(_fmt(row))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def summary(self) -> dict[str, Any]:
        """What summary.json reports of the curve: final and best test accuracy, final losses."""
        if not self.rows:
            return {}
        last = self.rows[-1]
        accuracies = [(r[5], r[0]) for r in self.rows if not math.isnan(r[5])]
        best, best_update = max(accuracies, key=lambda a: (a[0], -a[1])) if accuracies else (float("nan"), None)
        return {"final_accuracy": last[5], "best_accuracy": best, "best_accuracy_update": best_update,
                "final_train_loss": last[3], "final_test_loss": last[4], "evaluations": len(self.rows)}


class Monitor:
    """Evaluates the global model every ``every`` updates and appends the row to the record.

    Evaluations happen at update 0, at the first update reaching each multiple of ``every``,
    and at the end of the run (:meth:`finish`). A NaN or infinite train loss raises
    :class:`TrainingDiverged` once its row is written. ``evaluate()`` returns an object with
    ``train_loss``, ``test_loss`` and ``test_accuracy``.
    """

    def __init__(self, evaluate: Callable[[], Any], record: TrainingRecord, every: int) -> None:
        self.evaluate = evaluate
        self.record = record
        self.every = every
        self.next = 0
        self.last = -1
        self.wall_offset = 0.0
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        """Wall-clock seconds of training so far (across resumptions)."""
        return self.wall_offset + time.perf_counter() - self.t0

    def __call__(self, update: int, now: float) -> None:
        ev = self.evaluate()
        self.record.append((update, now, self.wall(), ev.train_loss, ev.test_loss, ev.test_accuracy))
        self.last = update
        self.next = (update // self.every + 1) * self.every
        if not math.isfinite(ev.train_loss):
            raise TrainingDiverged(
                f"training diverged: train loss {ev.train_loss} at update {update} (simulated time {now:.6g}); "
                f"training.csv keeps the curve up to there; try a smaller training.algorithm.lr")

    def finish(self, update: int, now: float) -> None:
        """Evaluate the final model unless that update was just evaluated."""
        if self.last != update:
            self(update, now)

    def state_dict(self) -> dict[str, Any]:
        return {"next": self.next, "last": self.last, "wall_seconds": self.wall()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next, self.last = state["next"], state["last"]
        self.wall_offset, self.t0 = state["wall_seconds"], time.perf_counter()


def _fmt(row: Row) -> list[str]:
    return [str(row[0])] + [repr(float(x)) for x in row[1:]]  # shortest text that reads back exactly


def training_figure(curve: pd.DataFrame, title: str) -> Any:
    """Test accuracy (top) and train/test loss (bottom) against simulated time (left) and
    against updates (right): a pyplot-free ``Figure`` in fedsim's style
    (:func:`fedsim.plots.figure_style`)."""
    from matplotlib.figure import Figure

    from fedsim.plots import figure_style

    with figure_style():
        fig = Figure(figsize=(12, 7.5))
        _curves(fig.subplots(2, 2, sharex="col"), curve)
        fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.9, wspace=0.18, hspace=0.25)
    return fig


def _curves(axes: Any, curve: pd.DataFrame) -> None:
    for col, x, label in ((0, "sim_time", "simulated time"), (1, "update", "updates applied")):
        axes[0, col].plot(curve[x], curve["test_accuracy"], marker="o", ms=3, color="C0")
        axes[0, col].set(ylabel="test accuracy", title=f"accuracy vs {label}")
        axes[1, col].plot(curve[x], curve["train_loss"], marker="o", ms=3, color="C1", label="train (objective)")
        axes[1, col].plot(curve[x], curve["test_loss"], marker="o", ms=3, color="C2", label="test")
        axes[1, col].set(xlabel=label, ylabel="cross-entropy loss", title=f"loss vs {label}")
        axes[1, col].legend(fontsize=8)
