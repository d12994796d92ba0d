"""The input contract under fuzzing: valid scenario and sweep files, mutated (types, ranges,
keys, encodings, sizes), either run (exit 0 and a complete output folder) or are refused
(exit 2, one line on stderr, no traceback, nothing written). `fedsim.cli.main` runs
in-process, on tiny horizons; the examples are derandomised so that CI sees the same ones."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedsim.cli import main

SCENARIO = {
    "name": "fuzz", "seed": 2, "concurrency": 3, "horizon": {"updates": 300, "warmup": 30}, "routing": "weights",
    "statistics": {"batches": 4, "confidence": 0.9},
    "clients": [{"group": "fast", "count": 2, "service": {"dist": "exponential", "rate": 2.0}, "routing_weight": 2.0},
                {"group": "slow", "count": 3, "service": {"dist": "gamma", "mean": 1.0, "cv": 0.5}},
                {"group": "measured", "count": 1, "service": {"dist": "empirical", "file": "durations.csv"}}],
}
SWEEP = {"name": "fuzz-sweep", "scenario": "base.yaml", "overrides": {"horizon": {"updates": 200, "warmup": 20}},
         "grid": {"concurrency": [1, 2], "clients[1].service.cv": [0.5, 1.0]}, "seeds": 1, "seed": 5,
         "trace": {"concurrency": 2}}
FUZZ = settings(max_examples=45, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

small_ints = st.integers(-3, 12)
extreme_ints = st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, 10**400])
floats = st.one_of(st.floats(-5, 50, allow_nan=False),
                   st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324, -0.0, 1e-300]))
strings = st.one_of(st.text(max_size=8), st.sampled_from([
    "exponential", "gamma", "lognormal", "pareto", "hyperexponential", "deterministic", "empirical", "uniform",
    "proportional", "weights", "optimal-wall-clock", "durations.csv", "/dev/zero", "base.yaml", "..", "\x00",
    "é\u202e", "a" * 5_000, "1e3", "yes", "~", "concurrency", "clients[0].count"]))
keys = st.text(alphabet="abcxyz_[]0.", min_size=1, max_size=4)  # never a horizon field


def values(horizon: bool) -> st.SearchStrategy[Any]:
    """Values to put anywhere; under ``horizon`` only small numbers (a valid huge horizon
    would be a long run, not a contract failure)."""
    ints = small_ints if horizon else st.one_of(small_ints, extreme_ints)
    scalars = st.one_of(ints, floats, strings, st.none(), st.booleans())
    return st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(keys, scalars, max_size=2))


def locations(doc: Any, path: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and indices) into ``doc``, itself included."""
    found = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += locations(value, (*path, key))
    elif isinstance(doc, list):
        for k, value in enumerate(doc):
            found += locations(value, (*path, k))
    return found


def mutate(data: st.DataObject, doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        where = data.draw(st.sampled_from(locations(doc)[1:]), label="path")
        parent = doc
        for step in where[:-1]:
            parent = parent[step]
        last = where[-1]
        kind = data.draw(st.sampled_from(["set", "set", "set", "delete", "add key", "repeat", "nest"]), label="kind")
        if kind == "set":
            parent[last] = data.draw(values("horizon" in where), label="value")
        elif kind == "delete":
            del parent[last]
        elif kind == "add key" and isinstance(parent[last], dict):
            parent[last][data.draw(keys, label="key")] = data.draw(values(True), label="value")
        elif kind == "repeat" and isinstance(parent[last], list):
            parent[last] = parent[last] * data.draw(st.sampled_from([0, 2, 40]), label="times")
        elif kind == "nest":
            for _ in range(data.draw(st.sampled_from([1, 3, 70]), label="depth")):
                parent[last] = [parent[last]]
    return doc


def encode(data: st.DataObject, doc: Any) -> bytes:
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    how = data.draw(st.sampled_from(["utf-8"] * 4 + ["latin-1", "utf-16", "bom", "bytes", "truncate"]), label="enc")
    raw = text.encode("utf-8")
    if how == "latin-1":
        raw = text.encode("latin-1", errors="replace")
    elif how == "utf-16":
        raw = text.encode("utf-16")
    elif how == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif how == "bytes":
        at = data.draw(st.integers(0, len(raw)), label="at")
        raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=4), label="junk") + raw[at:]
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)), label="length")]
    return raw


def check_contract(args: list[str], folder: Path, inputs: set[str], complete: tuple[str, ...]) -> int:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    stderr = err.getvalue()
    event(f"exit {status}")  # pytest --hypothesis-show-statistics: the share of runs and refusals
    assert "Traceback" not in stderr, stderr
    if status == 0:
        assert stderr == "", stderr  # --quiet: no progress bar, and no warning either
        target = folder / "out"
        assert all((target / name).is_file() for name in complete), sorted(target.iterdir())
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging, no lock left
    else:
        assert status == 2, (status, stderr)
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        assert {p.name for p in folder.iterdir()} == inputs  # nothing written
    return status


@contextlib.contextmanager
def fresh_folder() -> Any:
    """A new folder holding the empirical durations file the scenario reads, removed after."""
    folder = Path(tempfile.mkdtemp(prefix="fedsim-fuzz-"))
    try:
        (folder / "durations.csv").write_text("seconds\n0.5\n1.25\n2.0\n")
        yield folder
    finally:
        shutil.rmtree(folder)


@FUZZ
@given(st.data())
def test_mutated_scenarios_run_or_are_refused_in_one_line(data):
    with fresh_folder() as folder:
        (folder / "s.yaml").write_bytes(encode(data, mutate(data, SCENARIO)))
        check_contract(["run", str(folder / "s.yaml"), "--out", str(folder / "out"), "--quiet"], folder,
                       {"s.yaml", "durations.csv"}, ("summary.json", "clients.csv", "staleness.png"))


@FUZZ
@given(st.data())
def test_mutated_sweeps_run_or_are_refused_in_one_line(data):
    with fresh_folder() as folder:
        (folder / "base.yaml").write_text(yaml.safe_dump(SCENARIO))
        (folder / "sweep.yaml").write_bytes(encode(data, mutate(data, SWEEP)))
        check_contract(["sweep", str(folder / "sweep.yaml"), "--out", str(folder / "out"), "--workers", "1",
                        "--quiet"], folder, {"sweep.yaml", "base.yaml", "durations.csv"},
                       ("sweep.json", "results.parquet"))
