"""The command line: run folders, reproducibility, and one-line errors on bad input."""

from __future__ import annotations

import copy
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    """`fedsim validate` loads datasets: a shipped scenario whose dataset is not on this
    machine must say so in one line, and every other one must be valid."""
    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        proc = fedsim("validate", str(path), cwd=REPO)
        if "not found under" in proc.stderr and not (REPO / "scenarios" / "data").exists():
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (path, proc.stderr)
            continue
        assert proc.returncode == 0, (path, proc.stderr)


# ---------------------------------------------------------------------------------------
# clean runs: the output folder, overrides, provenance


SMALL = BASE | {"horizon": {"updates": 2_000, "warmup": 200}}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_set_overrides_fields_by_path_and_keeps_validation(write_yaml, tmp_path, capsys):
    path = write_yaml(SMALL)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--set", "concurrency=3",
                 "--set", "clients[1].service.cv=2", "--set", "routing=uniform", "--set",
                 "clients[0]={group: fast, count: 3, service: {dist: exponential, rate: 4.0}}"]) == 0
    scenario = json.loads((out / "summary.json").read_text())["scenario"]
    assert scenario["concurrency"] == 3 and scenario["clients"][1]["service"]["cv"] == 2.0
    capsys.readouterr()
    for value, fragment in (("concurrency=0", "error: --set concurrency: must be an integer >= 1, got 0"),
                            ("clients[7].count=1", "error: --set clients[7].count: no such field"),
                            ("concurrency", "error: --set: expected PATH=VALUE"),
                            ("a..b=1", "is not a field path"),
                            ("concurrency=[1", "error: --set concurrency: ")):
        assert main(["run", str(path), "--out", str(tmp_path / "bad"), "--set", value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: --set") and fragment in err, err
    assert not (tmp_path / "bad").exists()


def test_out_naming_a_file_is_one_line_for_every_command(write_yaml, tmp_path, capsys):
    path = write_yaml(SMALL)
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    sweep = write_yaml({"scenario": "scenario.yaml", "grid": {"concurrency": [1, 2]}}, "sweep.yaml")
    for args in (["run", str(path)], ["analytic", str(path)], ["sweep", str(sweep)],
                 ["optimize", str(REPO / "scenarios" / "heterogeneous.yaml"), "--objective", "per-update"]):
        for out in (taken, taken / "sub"):
            assert main([*args, "--out", str(out)]) == 2, args
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("error: --out: ") and "Traceback" not in err, err
    assert taken.read_text() == "keep me" and hidden(tmp_path) == []
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    for args in (["run", str(path)], ["analytic", str(path)]):  # these replace their folder whole
        assert main([*args, "--out", str(work)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds files that are not a fedsim run (notes.txt)" in err
    assert [p.name for p in work.iterdir()] == ["notes.txt"]


def test_a_run_replaces_the_folder_whole_and_only_when_it_succeeds(write_yaml, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["run", str(write_yaml(SMALL)), "--out", str(out), "--quiet", "--trace"]) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(first) == {"clients.csv", "summary.json", "staleness.png", "trace.parquet"}
    other = write_yaml(SMALL | {"seed": 99}, "other.yaml")

    import fedsim.report

    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fedsim.report, "write_csv", full)
    assert main(["run", str(other), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --out: cannot write" in err and "no space left" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # the old run, untouched
    monkeypatch.undo()

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fedsim.run.simulate", interrupted)
    assert main(["run", str(other), "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted: nothing written to")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    monkeypatch.undo()

    (tmp_path / ".out.partial-stale").mkdir()  # left by a killed run
    assert main(["run", str(other), "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clients.csv", "staleness.png", "summary.json"]  # no old trace
    assert json.loads((out / "summary.json").read_text())["seed"] == 99
    assert hidden(tmp_path) == []


def test_a_second_writer_of_the_same_folder_is_refused(write_yaml, tmp_path):
    """This process holds the folder as a run would; a `fedsim run` started meanwhile stops
    at once with one line, and writes nothing."""
    from fedsim.folders import OutputFolder

    path = write_yaml(SMALL)
    out = tmp_path / "out"
    with OutputFolder(out) as folder:
        (folder.staging / "clients.csv").write_text("mine")
        proc = fedsim("run", str(path), "--out", str(out), "--quiet")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "is being written by another fedsim run (process" in proc.stderr
        assert not out.exists()
        folder.publish()
    assert (out / "clients.csv").read_text() == "mine" and hidden(tmp_path) == []
    proc = fedsim("run", str(path), "--out", str(out), "--quiet")
    assert proc.returncode == 0 and (out / "summary.json").exists() and hidden(tmp_path) == []


def test_ctrl_c_is_one_line_exit_130_and_no_folder(write_yaml, tmp_path):
    path = write_yaml(SMALL | {"horizon": {"updates": 10**9}})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "run", str(path), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.partial-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr.count("\n") == 1 and stderr.startswith("interrupted"), stderr
    assert not out.exists() and hidden(tmp_path) == [] and stdout == ""


def test_a_group_without_updates_prints_dashes(write_yaml, tmp_path, capsys):
    doc = copy.deepcopy(SMALL)
    doc["clients"][1]["routing_weight"] = 0.0  # never routed: no staleness, null in summary.json
    assert main(["run", str(write_yaml(doc)), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.splitlines()[-2].split()[-3:] == ["-", "-", "-"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["groups"][1]["staleness_sim"] is None


def test_summary_records_provenance(write_yaml, tmp_path):
    (tmp_path / "durations.csv").write_text("0.5\n1.5\n2.0\n")
    doc = SMALL | {"clients": [SMALL["clients"][0], {"group": "slow", "count": 4,
                                                     "service": {"dist": "empirical", "file": "durations.csv"}}]}
    path = write_yaml(doc)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    p = json.loads((tmp_path / "out" / "summary.json").read_text())["provenance"]
    assert p["command"] == f"fedsim run {path} --out {tmp_path / 'out'} --quiet"
    assert p["python"] == sys.version.split()[0] and p["numpy"] == np.__version__ and p["simpy"]
    assert p["fedsim_version"] and p["started"].endswith("+00:00")
    assert p["inputs"] == {str(path): "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(),
                           str(tmp_path / "durations.csv"):
                               "sha256:" + hashlib.sha256(b"0.5\n1.5\n2.0\n").hexdigest()}


def test_ctrl_c_keeps_the_checkpoint_and_resume_finishes_the_run(write_yaml, tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    import fedsim.training.session as session

    doc = SMALL | {"horizon": {"updates": 600, "warmup": 60},
                   "training": {"dataset": {"name": "synthetic", "dim": 5, "classes": 3, "samples": 30},
                                "model": "logistic", "algorithm": {"name": "async_sgd", "lr": 0.05, "batch_size": 4},
                                "eval": {"every_updates": 200}}}
    path, out = write_yaml(doc), tmp_path / "out"
    assert main(["run", str(path), "--out", str(tmp_path / "full"), "--quiet"]) == 0
    save = session.save_checkpoint

    def save_then_interrupt(*args):
        save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(session, "save_checkpoint", save_then_interrupt)
    assert main(["run", str(path), "--out", str(out), "--quiet", "--checkpoint-every", "300"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"but checkpoint.pt; continue with --resume {out}" in err
    assert [p.name for p in out.iterdir()] == ["checkpoint.pt"] and hidden(tmp_path) == []
    monkeypatch.undo()
    assert main(["run", str(path), "--resume", str(out), "--quiet"]) == 0
    a, b = torch.load(tmp_path / "full" / "model.pt"), torch.load(out / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "summary.json").read_text())["resumed_from_update"] == 300
