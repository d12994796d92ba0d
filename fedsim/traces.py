"""Device traces: when each client was online, and how long each of its tasks took.

Two CSV formats (UTF-8, comma-separated, a header row naming the columns; blank lines and
lines starting with ``#`` are skipped; columns may come in any order, others are ignored):

- **on-intervals** (``availability: {trace: FILE}``): ``client,start,end``, one row per
  interval during which device ``client`` was online, ``0 <= start < end <= period``. A
  device's intervals must not overlap (touching ones are joined). The trace covers one
  ``period`` (the scenario's ``availability.period``, default the largest ``end`` in the file)
  and **repeats**: a device is online at time t when ``t mod period`` lies in one of its
  intervals, so a one-day trace drives a run of any length.
- **compute durations** (``service: {dist: trace, file: FILE}``): ``client,duration``, one row
  per task in the order the device ran them, every duration positive. Each client replays its
  device's durations in order and **starts again from the first** when they run out.

``client`` is any label (FedScale's numeric ids, names). Client k of a group (0-based, clients
numbered within the group) follows the k-th distinct label in order of first appearance, and
the labels are reused cyclically when the group has more clients than the file has devices
(client k follows label ``k mod L``). A file is read once, when the scenario is loaded, with
the checks every input file gets (:func:`fedsim.inputs.read_text`: a regular file of at most
:data:`~fedsim.inputs.MAX_DATA_BYTES`, UTF-8).

This module is part of the core schema: it depends on :mod:`fedsim.errors` and
:mod:`fedsim.inputs` only. The law that
replays compute durations is :class:`fedsim.distributions.ReplayDurations` (``dist: trace``).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import ScenarioError
from fedsim.inputs import MAX_DATA_BYTES, read_text

def _locate(file: Any, field: str, base_dir: Path | None) -> Path:
    if not isinstance(file, str) or not file.strip():
        raise ScenarioError(field, f"must be the path of a CSV trace file, got {file!r}")
    location = Path(file).expanduser()
    if not location.is_absolute() and base_dir is not None:
        location = Path(base_dir) / location
    return location


def read_columns(file: Any, field: str, base_dir: Path | None, columns: tuple[str, ...]
                 ) -> tuple[list[str], dict[str, list[float]], list[int]]:
    """Rows of a trace file: the ``client`` labels, the other ``columns`` as numbers, and each
    row's line number. Errors name the file and the line."""
    location = _locate(file, field, base_dir)
    if not os.path.lexists(location):
        where = "" if str(location) == file else f" (looked for {location.absolute()})"
        raise ScenarioError(field, f"no such file {file!r}{where}")
    text = read_text(location, field, repr(file), MAX_DATA_BYTES)
    try:
        rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), start=1)
                if any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")]
    except csv.Error as exc:
        raise ScenarioError(field, f"cannot read {file!r} as a CSV file: {exc}") from None
    wanted = ("client", *columns)
    if not rows:
        raise ScenarioError(field, f"{file!r} is empty; expected a header {','.join(wanted)} and rows")
    header = [cell.strip() for cell in rows[0][1]]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ScenarioError(field, f"{file!r} needs the columns {', '.join(wanted)} in its header line "
                            f"{rows[0][0]}; missing {', '.join(missing)}")
    index = {c: header.index(c) for c in wanted}
    labels: list[str] = []
    values: dict[str, list[float]] = {c: [] for c in columns}
    lines: list[int] = []
    for line, row in rows[1:]:
        cells = {c: row[i].strip() if i < len(row) else "" for c, i in index.items()}
        if not cells["client"]:
            raise ScenarioError(field, f"{file!r} line {line}: no client label")
        labels.append(cells["client"])
        for c in columns:
            try:
                x = float(cells[c])
            except ValueError:
                raise ScenarioError(field, f"{file!r} line {line}: {c} {cells[c]!r} is not a number") from None
            if not math.isfinite(x):
                raise ScenarioError(field, f"{file!r} line {line}: {c} must be finite, got {cells[c]}")
            values[c].append(x)
        lines.append(line)
    if not labels:
        raise ScenarioError(field, f"{file!r} has a header and no rows")
    return labels, values, lines


def by_label(labels: list[str]) -> tuple[tuple[str, ...], list[list[int]]]:
    """Distinct labels in order of first appearance, and the rows of each."""
    rows: dict[str, list[int]] = {}
    for r, label in enumerate(labels):
        rows.setdefault(label, []).append(r)
    return tuple(rows), list(rows.values())


class OnIntervals:
    """The on-intervals of a trace's devices over one period; the schedule repeats.

    ``starts[d]``, ``ends[d]`` are device d's sorted, disjoint intervals (touching ones joined)
    within ``[0, period]``. Client k of a group follows device ``k mod len(labels)``.
    """

    def __init__(self, file: str, period: float, labels: tuple[str, ...], starts: list[np.ndarray],
                 ends: list[np.ndarray]) -> None:
        self.file = file
        self.period = period
        self.labels = labels
        self.starts = starts
        self.ends = ends

    def device(self, k: int) -> int:
        """The device client k of the group follows."""
        return k % len(self.labels)

    def intervals(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Client k's on-intervals in one period (starts, ends)."""
        d = self.device(k)
        return self.starts[d], self.ends[d]

    def fraction(self, k: int) -> float:
        """Fraction of the period client k is online."""
        s, e = self.intervals(k)
        return float(np.sum(e - s) / self.period)

    def mean_on(self, k: int) -> float:
        """Mean length of client k's on periods, an interval ending at the period's end and one
        starting at 0 being one period (the trace repeats)."""
        s, e = self.intervals(k)
        periods = len(s) - (1 if len(s) > 1 and s[0] == 0.0 and e[-1] == self.period else 0)
        return float(np.sum(e - s) / periods)

    def online_at(self, k: int, t: float) -> bool:
        """True when client k is online at time t."""
        s, e = self.intervals(k)
        x = t % self.period
        j = int(np.searchsorted(s, x, side="right")) - 1
        return j >= 0 and x < e[j]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OnIntervals):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def _identity(self) -> tuple[Any, ...]:
        return (self.file, self.period, self.labels, tuple(a.tobytes() for a in self.starts),
                tuple(a.tobytes() for a in self.ends))

    def __repr__(self) -> str:
        return f"OnIntervals(file={self.file!r}, period={self.period!r}, devices={len(self.labels)})"


def read_on_intervals(file: Any, field: str, base_dir: Path | None, period: float | None) -> OnIntervals:
    """The on-intervals of a trace file (see the module docstring); ``period`` defaults to the
    largest ``end``."""
    labels, values, lines = read_columns(file, field, base_dir, ("start", "end"))
    start, end = np.array(values["start"]), np.array(values["end"])
    for r in range(len(labels)):
        if not 0.0 <= start[r] < end[r]:
            raise ScenarioError(field, f"{file!r} line {lines[r]}: need 0 <= start < end, got start {start[r]:g}, "
                                f"end {end[r]:g}")
    if period is None:
        period = float(end.max())
    elif end.max() > period:
        r = int(np.argmax(end))
        raise ScenarioError(field, f"{file!r} line {lines[r]}: end {end[r]:g} is beyond the period {period:g}")
    names, rows = by_label(labels)
    starts, ends = [], []
    for label, r in zip(names, rows):
        order = sorted(r, key=lambda i: start[i])
        s, e = [start[order[0]]], [end[order[0]]]
        for i in order[1:]:
            if start[i] < e[-1]:
                raise ScenarioError(field, f"{file!r} line {lines[i]}: client {label!r} interval [{start[i]:g}, "
                                    f"{end[i]:g}) overlaps an earlier one ending at {e[-1]:g}")
            if start[i] == e[-1]:
                e[-1] = end[i]
            else:
                s.append(start[i])
                e.append(end[i])
        starts.append(np.array(s))
        ends.append(np.array(e))
    return OnIntervals(file, float(period), names, starts, ends)
