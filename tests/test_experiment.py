"""The protocol of the accuracy experiment (analysis/experiment.py): choices made on the tuning
seeds alone, time to target read from the evaluation grid, paired statistics against an
independent computation, runs that never reach a target, and the time grid's evaluations equal
to runs stopped at the grid times."""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("experiment", REPO / "analysis" / "experiment.py")
ex = importlib.util.module_from_spec(spec)
sys.modules["experiment"] = ex  # dataclasses look their module up
spec.loader.exec_module(ex)

TUNING = (101, 102, 103)
EVALUATION = (1, 2, 3, 4)


def frame(values: dict[tuple[int, int], float], metric: str) -> pd.DataFrame:
    return pd.DataFrame([{"config": c, "seed": s, metric: v} for (c, s), v in values.items()])


def test_choice_uses_the_tuning_seeds_only():
    # config 0 is best on the tuning seeds, config 1 far better on the evaluation seeds
    values = {(0, s): 0.80 for s in TUNING} | {(1, s): 0.79 for s in TUNING}
    values |= {(0, s): 0.10 for s in EVALUATION} | {(1, s): 0.99 for s in EVALUATION}
    tuning = frame(values, "accuracy@500")
    assert ex.choose(tuning, "accuracy@500", TUNING) == (0, pytest.approx(0.80))
    assert ex.choose(tuning, "accuracy@500", EVALUATION)[0] == 1  # the rows were there to be misused
    with pytest.raises(ValueError):
        ex.choose(tuning, "accuracy@500", (7,))


def test_choice_of_accuracy_is_the_best_mean_and_a_diverged_run_loses():
    values = {(0, 101): 0.9, (0, 102): 0.5, (0, 103): 0.6,  # mean 0.667
              (1, 101): 0.7, (1, 102): 0.7, (1, 103): 0.7,  # mean 0.7: best
              (2, 101): 0.99, (2, 102): 0.99, (2, 103): math.nan}  # diverged once
    config, score = ex.choose(frame(values, "accuracy@500"), "accuracy@500", TUNING)
    assert (config, score) == (1, pytest.approx(0.7))


def test_choice_of_time_counts_misses_first():
    inf = math.inf
    values = {(0, 101): 100, (0, 102): 120, (0, 103): inf,  # fastest where it reaches, misses once
              (1, 101): 300, (1, 102): 310, (1, 103): 290,
              (2, 101): 250, (2, 102): 260, (2, 103): 280}  # best among those that always reach
    config, score = ex.choose(frame(values, "time@80%"), "time@80%", TUNING)
    assert config == 2 and score == pytest.approx(790 / 3)
    never = {(0, s): inf for s in TUNING} | {(1, 101): inf, (1, 102): inf, (1, 103): 500}
    assert ex.choose(frame(never, "time@80%"), "time@80%", TUNING) == (1, 500)
    # none reaches: the best accuracy at the largest budget decides, not the order
    nowhere = frame({(c, s): inf for c in range(3) for s in TUNING}, "time@80%")
    nowhere["accuracy@2000"] = nowhere["config"].map({0: 0.5, 1: 0.7, 2: 0.6})
    assert ex.choose(nowhere, "time@80%", TUNING, tiebreak="accuracy@2000") == (1, inf)


def test_time_to_target_is_the_first_evaluation_reaching_it():
    times = np.linspace(0.0, 100.0, 11)
    acc = np.array([0.1, 0.3, 0.5, 0.69, 0.7, 0.65, 0.8, 0.9, np.nan, 0.95, 0.96])
    assert ex.time_to_target(times, acc, 0.7) == 40.0  # reached exactly, not interpolated
    assert ex.time_to_target(times, acc, 0.75) == 60.0  # the dip after 40 does not matter
    assert ex.time_to_target(times, acc, 0.97) == math.inf
    assert ex.time_to_target(times, np.full(11, np.nan), 0.0) == math.inf  # a diverged run never reaches


def step_curve(times: np.ndarray, reach: float, target: float) -> np.ndarray:
    """An accuracy curve that first reaches ``target`` at time ``reach`` (inf: never)."""
    return np.where(times >= reach, target + 0.01, target - 0.2 * (1 - times / times[-1]) - 0.01)


def test_paired_time_on_synthetic_curves():
    times = np.linspace(0.0, 400.0, 41)
    target = 0.8
    base_reach = [100.0, 200.0, 150.0, 300.0, math.inf]
    arm_reach = [80.0, 150.0, math.inf, 240.0, 120.0]
    seeds = [1, 2, 3, 4, 5]
    base = pd.Series([ex.time_to_target(times, step_curve(times, r, target), target) for r in base_reach], seeds)
    arm = pd.Series([ex.time_to_target(times, step_curve(times, r, target), target) for r in arm_reach], seeds)
    assert list(base) == base_reach and list(arm) == arm_reach
    got = ex.paired_time(arm, base, horizon=400.0)
    # by hand: seeds 1, 2, 4 reach with both
    savings = [1 - 80 / 100, 1 - 150 / 200, 1 - 240 / 300]
    half = 4.302652729911275 * statistics.stdev(savings) / math.sqrt(3)  # t_{0.975, 2}
    assert got["both"] == 3 and got["reached"] == 4 and got["base_reached"] == 4 and got["seeds"] == 5
    assert got["saving"] == pytest.approx(statistics.mean(savings), abs=1e-12)
    assert got["saving_ci"] == pytest.approx(half, rel=1e-9)
    # seeds the baseline reaches, the arm's miss counted as the horizon (seed 3: 1 - 400/150)
    censored = savings[:2] + [1 - 400 / 150] + savings[2:]
    assert got["saving_censored"] == pytest.approx(statistics.mean(censored), abs=1e-12)
    assert got["saving_censored_ci"] == pytest.approx(3.182446305284263 * statistics.stdev(censored) / 2, rel=1e-9)


def test_paired_accuracy_by_seed():
    base = pd.Series([0.80, 0.82, 0.78], [3, 1, 2])
    arm = pd.Series([0.85, 0.86, math.nan], [1, 2, 3])  # seed 3 diverged
    got = ex.paired_accuracy(arm, base)
    diffs = [0.85 - 0.82, 0.86 - 0.78]
    assert got["pairs"] == 2
    assert got["difference"] == pytest.approx(statistics.mean(diffs), abs=1e-12)
    assert got["difference_ci"] == pytest.approx(12.706204736174707 * statistics.stdev(diffs) / math.sqrt(2))


def test_overlapping_seeds_are_refused(tmp_path: Path, capsys):
    assert ex.main(["--seeds", "3", "--tuning-seeds", "3", "101", "--out", str(tmp_path)]) == 2
    assert "--tuning-seeds" in capsys.readouterr().err


def test_time_grid_equals_runs_stopped_at_the_grid_times():
    from fedsim.run import simulate
    from fedsim.scenario import parse_scenario
    from fedsim.training.session import TrainingSession

    study = ex.make_study(REPO / "scenarios" / "heterogeneous.yaml", "logistic", (0.2,), (40,), [60.0, 120.0])
    config = ex.Config("x", 0.2, 40, study.uniform())
    times = np.linspace(0.0, 120.0, 13)
    grid = np.asarray(ex.run_one(("k", ex.run_document(study.base, config, 5, 120.0), str(study.base_dir),
                                  list(times)))["rows"])
    for stop in (60.0, 120.0):
        scenario = parse_scenario(ex.run_document(study.base, config, 5, stop), base_dir=study.base_dir)
        session = TrainingSession(scenario)
        result = simulate(scenario, observers=[session.observer])
        summary = session.finish()
        row = grid[int(np.flatnonzero(times == stop)[0])]
        assert row[0] == result.stats.updates
        assert (row[1], row[2]) == (summary["final_test_loss"], summary["final_accuracy"])  # bit for bit


class FakeRunner:
    """Curves of known shape instead of training: accuracy ``0.95 - 0.85 exp(-r t)`` with a rate
    ``r`` that favours lr 0.1 on the tuning seeds and lr 0.8 on every other seed."""

    def __init__(self, times: np.ndarray) -> None:
        self.times = list(times)
        self.jobs: list[tuple[object, int]] = []

    def run(self, jobs):
        out = []
        t = np.asarray(self.times)
        for config, seed, doc in jobs:
            self.jobs.append((config, seed))
            lr = doc["training"]["algorithm"]["lr"]
            best = 0.1 if seed in TUNING else 0.8
            rate = 0.02 / (1 + abs(math.log(lr / best))) * (1 + 0.01 * (seed % 7))
            acc = 0.95 - 0.85 * np.exp(-rate * t)
            rows = np.column_stack([t, np.full_like(t, 1.0), acc])
            out.append({"rows": rows.tolist(), "diverged": False, "updates": 1, "throughput_run": 1.0,
                        "throughput_window": 1.0, "mean_staleness": 0.0, "final_train_loss": 1.0, "staleness": {},
                        "wall_seconds": 0.0, "cpu_seconds": 0.0})
        return out


def test_evaluation_seeds_never_enter_the_choices(tmp_path: Path):
    import argparse
    from types import SimpleNamespace

    from fedsim.optimize.objective import BoundConstants

    lrs, budgets = (0.1, 0.8), [100.0, 200.0]
    study = ex.make_study(REPO / "scenarios" / "heterogeneous.yaml", "logistic", lrs, (20, 100), budgets)
    runner = FakeRunner(np.linspace(0.0, 200.0, 21))
    asked = {}

    def calibrate(scenario, seeds, workers):
        asked["calibrate"] = seeds
        return SimpleNamespace(constants=BoundConstants(A=2.0, L=0.05, S=0.5, eta=0.1), stderr={"A": 0.1},
                               table=lambda: "calibrated")

    def tune(scenario, out, trials, objective, budget, target, seeds, workers, sampler_seed):
        asked["tune"] = (seeds, objective, target)
        doc = dict(scenario.raw) | {"concurrency": 30}
        doc["training"] = dict(doc["training"]) | {"algorithm": dict(doc["training"]["algorithm"]) | {"lr": 0.4}}
        return SimpleNamespace(best_params={"lr": 0.4}, best_value=1.0, best_document=doc, trials=[])

    args = argparse.Namespace(workers=1, trials=2)
    tuning, choices, runs, _, targets = ex.run_study(study, runner, TUNING, EVALUATION, calibrate, tune, args,
                                                     tmp_path)
    assert set(tuning["seed"]) == set(TUNING)
    assert asked["calibrate"] == list(TUNING) and asked["tune"][0] == list(TUNING)
    assert asked["tune"][2] == pytest.approx(targets["accuracy"].iloc[0])
    # every arm with a step-size grid picks the tuning seeds' best lr, not the evaluation seeds'
    gridded = choices[choices["arm"] != "fedsim tune"]
    assert set(gridded["lr"]) == {0.1}
    assert set(choices[choices["arm"] == "fedsim tune"]["concurrency"]) == {30}
    # the evaluation seeds run the chosen configurations only, after every choice
    evaluated = [(c, s) for c, s in runner.jobs if s in EVALUATION]
    first = next(k for k, (_, s) in enumerate(runner.jobs) if s in EVALUATION)
    assert all(s in EVALUATION for _, s in runner.jobs[first:])
    assert set(runs["config"]) == set(choices["config"])
    assert len(evaluated) == len(set(choices["config"])) * len(EVALUATION)
    # targets: AsyncSGD-best-C's tuning-seed mean accuracy at the smaller budget
    base = tuning[(tuning["arm"] == ex.BASE)].groupby("config")["accuracy@100"].mean()
    assert targets["accuracy"].iloc[0] == pytest.approx(base.max())
