"""The command line: run folders, reproducibility, and one-line errors on bad input."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from fedsim.cli import main

BASE = {
    "name": "cli-test",
    "seed": 4,
    "concurrency": 5,
    "horizon": {"updates": 20_000, "warmup": 1_000},
    "routing": "weights",
    "clients": [
        {"group": "fast", "count": 3, "service": {"dist": "exponential", "rate": 4.0}, "routing_weight": 2.0},
        {"group": "slow", "count": 4, "service": {"dist": "gamma", "mean": 1.0, "cv": 0.5}},
    ],
}


def fedsim(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed `fedsim` entry point as a user would."""
    return subprocess.run([sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_run_writes_the_output_contract(write_yaml, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(write_yaml(BASE)), "--out", str(out), "--quiet", "--trace"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("scenario", "seed", "fedsim_version", "exact", "updates", "sim_time", "wall_seconds",
                "throughput_sim", "throughput_ci", "throughput_analytic", "mean_staleness_sim",
                "mean_staleness_analytic"):
        assert key in summary
    assert summary["exact"] is False and summary["updates"] == 20_000 and summary["seed"] == 4
    assert summary["scenario"]["clients"][1]["service"]["dist"] == "gamma"
    clients = pd.read_csv(out / "clients.csv")
    for col in ("client", "group", "p", "mean_service", "completions", "staleness_sim", "staleness_ci",
                "staleness_analytic", "staleness_p50", "staleness_p90", "staleness_p99", "staleness_max",
                "sojourn_sim", "sojourn_analytic", "queue_sim", "queue_analytic"):
        assert col in clients.columns
    assert len(clients) == 7 and clients["p"].sum() == pytest.approx(1.0)
    assert clients.loc[0, "p"] == pytest.approx(2 * clients.loc[6, "p"])
    assert (out / "staleness.png").stat().st_size > 10_000
    trace = pd.read_parquet(out / "trace.parquet")
    assert len(trace) == 20_000
    assert list(trace.columns) == ["client", "dispatch_update", "apply_update", "staleness", "dispatch_time",
                                   "completion_time"]


def test_same_seed_is_byte_identical_and_another_seed_is_not(write_yaml, tmp_path):
    path = write_yaml(BASE)
    other = write_yaml(BASE | {"seed": 5}, "other.yaml")
    for name, scenario in (("a", path), ("b", path), ("c", other)):
        assert main(["run", str(scenario), "--out", str(tmp_path / name), "--quiet"]) == 0
    a, b, c = ((tmp_path / x / "clients.csv").read_bytes() for x in "abc")
    assert a == b
    assert a != c


def test_analytic_and_validate(write_yaml, tmp_path, capsys):
    path = write_yaml(BASE)
    assert main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["analytic", str(path), "--out", str(tmp_path / "an")]) == 0
    table = pd.read_csv(tmp_path / "an" / "clients.csv")
    summary = json.loads((tmp_path / "an" / "summary.json").read_text())
    assert (table["p"] * table["staleness_analytic"]).sum() == pytest.approx(BASE["concurrency"] - 1)
    assert summary["mean_staleness_analytic"] == pytest.approx(4.0)


def mutate(path: str, value):
    """BASE with the field at ``path`` (dotted, [k] for lists) set to ``value`` (or removed)."""
    doc = copy.deepcopy(BASE)
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
    node = doc
    for k in keys[:-1]:
        node = node[k]
    if value is REMOVE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


REMOVE = object()

BAD = [
    # (field path in the message, mutation)
    ("concurrency", mutate("concurrency", 0)),
    ("concurrency", mutate("concurrency", 2.5)),
    ("concurrency", mutate("concurrency", "ten")),
    ("seed", mutate("seed", -1)),
    ("colour", BASE | {"colour": "red"}),
    ("name", mutate("name", REMOVE)),
    ("horizon", mutate("horizon", {"updates": 10, "time": 5.0})),
    ("horizon.warmup", mutate("horizon", {"updates": 100, "warmup": 100})),
    ("horizon.time", mutate("horizon", {"time": -5.0})),
    ("horizon.steps", mutate("horizon", {"steps": 10})),
    ("routing", mutate("routing", "round-robin")),
    ("clients", mutate("clients", [])),
    ("clients[0].count", mutate("clients[0].count", 0)),
    ("clients[1].speed", mutate("clients[1].speed", 3)),
    ("clients[0].service.rate", mutate("clients[0].service.rate", -1.0)),
    ("clients[0].service.rate", mutate("clients[0].service.rate", 0)),
    ("clients[1].service.dist", mutate("clients[1].service.dist", "cauchy")),
    ("clients[1].service.cv", mutate("clients[1].service", {"dist": "hyperexponential", "mean": 1.0, "cv": 0.5})),
    ("clients[1].service.cv", mutate("clients[1].service", {"dist": "uniform", "mean": 1.0, "cv": 0.9})),
    ("clients[0].routing_weight", mutate("clients[0].routing_weight", -2.0)),
    ("clients", BASE | {"clients": [dict(c, routing_weight=0.0) for c in BASE["clients"]]}),
    ("clients[0].routing_weight", mutate("routing", "uniform")),
    ("clients[1].service.file", mutate("clients[1].service", {"dist": "empirical", "file": "nowhere.csv"})),
    ("statistics.batches", BASE | {"statistics": {"batches": 1}}),
    ("server.service", BASE | {"server": {}}),
    ("server.speed", BASE | {"server": {"speed": 2.0}}),
    ("server.service.rate", BASE | {"server": {"service": {"dist": "exponential", "rate": -1.0}}}),
    ("server_power", BASE | {"server_power": {"busy": 100.0}}),
    ("server_power.busy", BASE | {"server": {"service": {"dist": "exponential", "rate": 9.0}},
                                  "server_power": {"busy": "lots"}}),
    ("clients[0].uplink.station", mutate("clients[0].uplink", {"dist": "exponential", "mean": 1.0, "station": "ps"})),
    ("clients[0].downlink.dist", mutate("clients[0].downlink", {"mean": 1.0})),
    ("clients[0].downlink", mutate("clients[0].downlink", 0.5)),
    ("clients[1].power.compute", mutate("clients[1].power", {"compute": -3.0})),
    ("clients[1].power.gpu", mutate("clients[1].power", {"gpu": 3.0})),
]


@pytest.mark.parametrize(("field", "doc"), BAD, ids=[f"{i}-{f}" for i, (f, _) in enumerate(BAD)])
def test_bad_input_is_one_line_naming_the_field(field, doc, write_yaml, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(write_yaml(doc)), "--out", str(out), "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"error: {field}"), lines[0]
    assert captured.out == ""
    assert not out.exists()


@pytest.mark.parametrize("case", [0, 14, 16])
def test_bad_input_from_the_shell_exits_2_without_traceback(case, write_yaml, tmp_path):
    field, doc = BAD[case]
    proc = fedsim("run", str(write_yaml(doc)), "--out", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {field}") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_unreadable_or_invalid_yaml_file(tmp_path):
    proc = fedsim("validate", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot read" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    proc = fedsim("validate", str(bad))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "line" in proc.stderr
    bad.write_text("- just\n- a list\n")
    proc = fedsim("validate", str(bad))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "mapping" in proc.stderr


def test_shipped_scenarios_are_valid():
    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        proc = fedsim("validate", str(path), cwd=REPO)
        assert proc.returncode == 0, (path, proc.stderr)
