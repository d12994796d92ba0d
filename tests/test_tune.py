"""fedsim tune: the search engine on synthetic objectives (TPE beats random search, a kill and a
resume end as an uninterrupted study), the trial scenarios, a small real tune, the CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from fedsim.api import load_scenario, run
from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.routing import routing_probabilities
from fedsim.tune import (ANALYTIC, ASYNCSGD, Param, group_weights, run_value, search, seed_rungs, trial_document,
                         trials_frame, tune, warm_starts)

optuna = pytest.importorskip("optuna")

# a known maximiser (1.3, -2.1, 40) on two float axes and a log-scale integer axis
SPACE = [Param("x", -5, 5), Param("y", -5, 5), Param("c", 1, 1000, log=True, integer=True)]
OPT = {"x": 1.3, "y": -2.1, "c": 40}


def bowl(params: dict, seed: int = 0) -> float:
    """-(squared distance to OPT), log scale in c, plus a per-seed offset (so seeds differ)."""
    return -((params["x"] - OPT["x"]) ** 2 + (params["y"] - OPT["y"]) ** 2
             + (math.log(params["c"]) - math.log(OPT["c"])) ** 2) + 0.05 * math.sin(seed)


def pointwise(f, calls=None, kill_after=None):
    """An evaluator computing f(params, seed) per request; with ``kill_after`` it raises
    KeyboardInterrupt instead of reporting result number kill_after + 1 (a kill mid-rung)."""
    def evaluate(requests, done):
        for r in requests:
            if calls is not None:
                if kill_after is not None and len(calls) >= kill_after:
                    raise KeyboardInterrupt
                calls.append((r.trial, r.seed))
            done(r, f(r.params, r.seed), 0.0, None)
    return evaluate


def outcome(study, seeds=(0,)):
    """The trials of a study without timings: what must not depend on kills and resumes."""
    return trials_frame(study, SPACE, seeds).drop(columns="wall_seconds")


def test_seed_rungs():
    assert seed_rungs(1) == [1] and seed_rungs(3) == [1, 3] and seed_rungs(5) == [1, 3, 5]
    assert seed_rungs(9) == [1, 3, 9] and seed_rungs(10) == [1, 3, 9, 10] and seed_rungs(4, 2) == [1, 2, 4]


def test_search_beats_random_search():
    """Five TPE studies of 100 trials: the median best value is above what the median of five
    random searches of 100 trials reaches with probability 0.001 (simulated below), and lands
    near the maximiser. A sampler that ignores the history (random search) fails this."""
    trials, studies = 100, 5
    found = []
    for seed in range(studies):
        study = search(SPACE, pointwise(lambda p, s: bowl(p)), optuna.storages.InMemoryStorage(), trials=trials,
                       seeds=[0], batch=5, sampler_seed=seed)
        found.append((study.best_value, study.best_trial.params))
    rng = np.random.default_rng(0)
    size = (20_000, studies, trials)
    x, y = rng.uniform(-5, 5, size), rng.uniform(-5, 5, size)
    c = np.clip(np.rint(np.exp(rng.uniform(np.log(0.5), np.log(1000.5), size))), 1, 1000)
    random_best = (-((x - OPT["x"]) ** 2 + (y - OPT["y"]) ** 2 + np.log(c / OPT["c"]) ** 2)).max(axis=2)
    threshold = np.quantile(np.median(random_best, axis=1), 0.999)
    found.sort(key=lambda v: v[0])
    value, params = found[studies // 2]
    assert value > threshold, (value, threshold)
    assert abs(params["x"] - OPT["x"]) < 0.3 and abs(params["y"] - OPT["y"]) < 0.3 and 28 <= params["c"] <= 57


def test_pruning_by_seeds_saves_runs_and_keeps_the_best_third(tmp_path):
    seeds = [0, 1, 2]
    calls = []
    study = search(SPACE, pointwise(bowl, calls), optuna.storages.InMemoryStorage(), trials=24, seeds=seeds,
                   batch=6, startup=6)
    frame = trials_frame(study, SPACE, seeds)
    assert len(calls) == frame["seeds_run"].sum() < 24 * 3
    assert set(frame["state"]) == {"complete", "pruned"}
    assert (frame.loc[frame["state"] == "pruned", "seeds_run"] == 1).all()
    assert (frame.loc[frame["state"] == "complete", "seeds_run"] == 3).all()
    for _, t in frame.iterrows():  # each trial against the ones that reached rung 1 up to the end of its batch
        end = (t["number"] // 6 + 1) * 6
        first = frame.loc[frame["number"] < end, "value[0]"].sort_values(ascending=False)
        kept = t["value[0]"] >= first.iloc[math.ceil(len(first) / 3) - 1]
        assert kept == (t["state"] == "complete"), t["number"]
    best = frame.loc[frame["state"] == "complete"].sort_values("value").iloc[-1]
    assert best["value"] == pytest.approx(np.mean([bowl(dict(best[["x", "y", "c"]]), s) for s in seeds]))


def test_kill_and_resume_end_as_uninterrupted(tmp_path):
    """Stopped mid-rung twice (the result in flight is lost) and resumed from SQLite: the same
    trials (parameters, states, per-seed values) and best trial as one uninterrupted study, and
    only the lost runs are made twice."""
    kwargs = dict(trials=8, seeds=[0, 1, 2], batch=4, startup=4, sampler_seed=7,
                  enqueue=[({"x": 0.0, "y": 0.0, "c": 10}, "origin")])
    calls_whole = []
    whole = search(SPACE, pointwise(bowl, calls_whole), f"sqlite:///{tmp_path / 'whole.db'}", **kwargs)
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    calls = []
    for kill_after in (3, 9):
        with pytest.raises(KeyboardInterrupt):
            search(SPACE, pointwise(bowl, calls, kill_after), storage, **kwargs)
        assert len(calls) == kill_after
    resumed = search(SPACE, pointwise(bowl, calls), storage, **kwargs)
    pd.testing.assert_frame_equal(outcome(resumed, kwargs["seeds"]), outcome(whole, kwargs["seeds"]))
    assert resumed.best_trial.number == whole.best_trial.number and resumed.best_value == whole.best_value
    assert sorted(set(calls)) == sorted(calls_whole) and len(calls) == len(calls_whole)
    assert outcome(whole, kwargs["seeds"])["source"].iloc[0] == "origin"
    with pytest.raises(ScenarioError, match=r"^storage: holds a study of other settings \(seeds differ\)"):
        search(SPACE, pointwise(bowl), storage, **(kwargs | {"seeds": [0, 1]}))


KILLED = """
import math, sys, time
sys.path.insert(0, {tests!r})
from test_tune import SPACE, bowl
from fedsim.tune import search

def slow(requests, done):
    for r in requests:
        time.sleep(0.05)  # slow enough that the kill lands mid-study on a loaded machine
        done(r, bowl(r.params, r.seed), 0.0, None)

search(SPACE, slow, {storage!r}, trials=12, seeds=[0, 1, 2], batch=4, startup=4)
"""


def test_killed_process_resumes(tmp_path):
    """A study whose process is killed (SIGKILL) part-way, then resumed, ends as an uninterrupted one."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    script = tmp_path / "killed.py"
    script.write_text(KILLED.format(tests=str(REPO / "tests"), storage=storage))
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            if len(optuna.load_study(study_name="fedsim-tune", storage=storage).get_trials()) >= 5:
                break
        except Exception:  # noqa: BLE001 -- the study is not created yet
            pass
    assert proc.poll() is None, "the study finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    states = {t.state.name for t in optuna.load_study(study_name="fedsim-tune", storage=storage).get_trials()}
    assert "RUNNING" in states
    kwargs = dict(trials=12, seeds=[0, 1, 2], batch=4, startup=4)
    resumed = search(SPACE, pointwise(bowl), storage, **kwargs)
    whole = search(SPACE, pointwise(bowl), optuna.storages.InMemoryStorage(), **kwargs)
    pd.testing.assert_frame_equal(outcome(resumed, [0, 1, 2]), outcome(whole, [0, 1, 2]))
    assert resumed.best_trial.params == whole.best_trial.params


# ---------------------------------------------------------------------------------------
# fedsim's side

TINY = {
    "name": "tiny", "seed": 3, "concurrency": 4, "horizon": {"time": 40.0}, "routing": "uniform",
    "clients": [{"group": "fast", "count": 3, "service": {"dist": "exponential", "rate": 3.0}},
                {"group": "slow", "count": 3, "service": {"dist": "exponential", "rate": 0.3}}],
    "training": {"dataset": {"name": "synthetic", "dim": 8, "classes": 4, "samples": 60},
                 "model": {"name": "mlp", "hidden": [6]},
                 "algorithm": {"name": "generalized_async_sgd", "lr": 0.05, "batch_size": 16},
                 "eval": {"every_updates": 50}},
    "optimization": {"A": 1.4, "L": 0.5, "S": 0.5},
}


def test_power_family_and_warm_starts():
    sc = load_scenario(TINY)
    p = lambda doc: load_scenario(doc).p  # noqa: E731
    assert np.allclose(p(trial_document(sc, {"beta": 0.0}, "power", 40.0)), 1 / 6)
    assert np.allclose(p(trial_document(sc, {"beta": 1.0}, "power", 40.0)), routing_probabilities("proportional",
                                                                                                  sc.groups))
    assert group_weights(sc, {"weight[slow]": 0.25}, "groups") == [1.0, 0.25]
    from fedsim.optimize.config import group_network
    from fedsim.optimize.objective import BoundConstants, Objective
    from fedsim.optimize.solver import optimise

    optimum = optimise(group_network(sc.groups), BoundConstants(A=1.4, L=0.5, S=0.5, eta=0.05),
                       Objective.wall_clock(40.0), c_max=6)
    q = np.repeat(optimum.q, 3) / np.repeat(optimum.q, 3).sum()
    for family in ("power", "groups"):  # two groups: both families hold the optimum exactly
        (analytic, label), (asyncsgd, label2) = warm_starts(sc, family, 40.0)
        assert (label, label2) == (ANALYTIC, ASYNCSGD)
        assert analytic["concurrency"] == optimum.concurrency and analytic["lr"] == 0.05
        assert np.allclose(p(trial_document(sc, analytic, family, 40.0)), q, rtol=1e-9)
        assert asyncsgd["concurrency"] == 6 and np.allclose(p(trial_document(sc, asyncsgd, family, 40.0)), 1 / 6)


def test_run_values():
    curve = b"update,sim_time,wall_seconds,train_loss,test_loss,test_accuracy\n0,0,0,1,1,0.2\n50,7.5,0,1,1,0.6\n" \
            b"100,15,0,1,1,0.55\n"
    files = {"summary.json": json.dumps({"final_accuracy": 0.55}).encode(), "training.csv": curve}
    assert run_value(files, "accuracy", 40.0, None) == 0.55
    assert run_value(files, "time", 40.0, 0.6) == 7.5
    assert run_value(files, "time", 40.0, 0.8) == pytest.approx(40.0 * (1 + (0.8 - 0.6) / 0.8))


def test_tune_end_to_end(tmp_path, monkeypatch):
    out = tmp_path / "out"
    result = tune(TINY, out=out, trials=6, batch=3, seeds=(101, 102), workers=1)
    assert {"best.yaml", "trials.parquet", "search.png", "study.db"} <= {p.name for p in out.iterdir()}
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frame = pd.read_parquet(out / "trials.parquet")
    assert list(frame["number"]) == list(range(6)) and list(frame["source"][:2]) == [ANALYTIC, ASYNCSGD]
    assert {"beta", "concurrency", "lr", "value", "value[101]", "value[102]", "seeds_run", "wall_seconds"} <= set(frame)
    complete = frame[frame["state"] == "complete"]
    assert result.best_value == complete["value"].max()
    assert result.runs == frame["seeds_run"].sum() <= result.runs_unpruned == 12
    document = yaml.safe_load((out / "best.yaml").read_text())
    assert document == result.best_document
    assert document["concurrency"] == result.best_params["concurrency"]
    # the best trial's value is its runs' own: rerun on the first seed, bit for bit
    again = run(load_scenario(result.best_document, seed=101))
    assert again.summary["final_accuracy"] == result.best_seed_values[0]
    assert main(["run", str(out / "best.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    # run again: the study is complete, nothing runs
    import fedsim.sweep

    monkeypatch.setattr(fedsim.sweep, "run_jobs", lambda *a, **k: pytest.fail("ran a finished study"))
    assert tune(TINY, out=out, trials=6, batch=3, seeds=(101, 102), workers=1).best_params == result.best_params


@pytest.mark.parametrize("extra, message", [
    (["--objective", "loss"], "argument --objective: invalid choice: 'loss' (choose from 'accuracy', 'time')"),
    (["--family", "x"], "argument --family: invalid choice: 'x' (choose from 'power', 'groups')"),
    (["--target", "0.5"], "--target: only with --objective time"),
    (["--objective", "time"], "--target: missing"),
    (["--objective", "time", "--target", "1.5"], "--target: must be a test accuracy in (0, 1], got 1.5"),
    (["--seeds", "0"], "--seeds: must be a number of seeds >= 1, got 0"),
    (["--seed-list", "4", "4"], "--seed-list: seeds must be distinct, got [4, 4]"),
    (["--trials", "0"], "--trials:"),
    (["--budget", "-1"], "--budget:"),
    (["--set", "horizon={updates: 100}"], "--budget: missing: the scenario's horizon counts updates"),
])
def test_cli_errors(tmp_path, capsys, extra, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(TINY))
    try:
        status = main(["tune", str(path), "--out", str(tmp_path / "out"), *extra])
    except SystemExit as stop:  # argparse's own checks (choices)
        status = stop.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_errors_of_the_scenario_and_the_install(tmp_path, capsys, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in TINY.items() if k != "training"}))
    assert main(["tune", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "error: training: fedsim tune trains the model of the scenario" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(TINY))
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    assert main(["tune", str(path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "error: tune: Optuna is not installed; pip install 'fedsim[tune]'\n"


def test_optuna_is_optional():
    code = "import sys, fedsim.cli, fedsim.api, fedsim.tune; assert 'optuna' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ | {"PYTHONPATH": str(REPO)})
