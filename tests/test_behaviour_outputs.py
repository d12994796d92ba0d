"""The run folder of a scenario with client behaviour: clients.csv columns, summary.json keys,
behaviour.png; the base model's folder unchanged; real training that loses tasks."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from fedsim.behaviour_report import BEHAVIOUR_COLUMNS, sliding_mean
from fedsim.behaviour_tracking import Bins
from fedsim.cli import main
from fedsim.report import open_run

SCENARIO = {
    "name": "fleet", "seed": 9, "concurrency": 6, "horizon": {"time": 1500.0, "warmup": 150.0},
    "clients": [
        {"group": "phones", "count": 4, "service": {"dist": "exponential", "rate": 1.0, "per": "step", "steps": 2},
         "availability": {"on": {"dist": "exponential", "mean": 20.0}, "off": {"dist": "exponential", "mean": 10.0},
                          "offline": "drop"}, "dropout": 0.1},
        {"group": "laptops", "count": 2, "service": {"dist": "gamma", "mean": 1.0, "cv": 0.5},
         "speed_profile": {"period": 300.0, "factors": [1.0, 0.5]}},
        {"group": "servers", "count": 1, "service": {"dist": "exponential", "rate": 3.0}},
    ],
}
KEYS = ("exact_case", "tasks_dispatched", "tasks_applied", "tasks_lost", "tasks_lost_dropout", "tasks_lost_offline",
        "tasks_in_flight", "throughput_always_on_analytic", "throughput_lost_sim", "throughput_lost_analytic")


def run_folder(write_yaml, tmp_path, doc, name="out"):
    out = tmp_path / name
    assert main(["run", str(write_yaml(doc, f"{name}.yaml")), "--out", str(out), "--quiet"]) == 0
    return out, json.loads((out / "summary.json").read_text()), pd.read_csv(out / "clients.csv")


def test_run_folder_reports_availability_losses_and_the_timeline(write_yaml, tmp_path):
    out, summary, clients = run_folder(write_yaml, tmp_path, SCENARIO)
    assert list(clients.columns[-len(BEHAVIOUR_COLUMNS):]) == list(BEHAVIOUR_COLUMNS)
    assert set(KEYS) <= summary.keys() and summary["exact"] is False and summary["exact_case"] is None
    assert summary["tasks_dispatched"] == (summary["tasks_applied"] + summary["tasks_lost"]
                                           + summary["tasks_in_flight"])
    assert summary["tasks_lost"] == summary["tasks_lost_dropout"] + summary["tasks_lost_offline"] > 0
    assert summary["tasks_in_flight"] == 6 and summary["tasks_applied"] == summary["updates"]
    assert summary["throughput_lost_sim"] == pytest.approx(
        1 - summary["throughput_sim"] / summary["throughput_always_on_analytic"])
    phones = clients[clients.group == "phones"]
    assert np.all(np.abs(phones.availability_sim - 2 / 3) < 0.15) and np.allclose(phones.availability_analytic, 2 / 3)
    assert np.all(phones.lost_tasks > 0) and np.all(clients[clients.group != "phones"].lost_tasks == 0)
    assert np.allclose(clients[clients.group == "laptops"].capacity_analytic, 0.75)
    assert np.allclose(clients.loss_fraction_sim, clients.lost_tasks / (clients.lost_tasks + clients.completions))
    assert (out / "behaviour.png").stat().st_size > 30_000
    timeline = open_run(out).timeline  # timeline.csv, read back
    assert list(timeline.columns[:4]) == ["start", "end", "applied", "lost"] and 256 <= len(timeline) <= 512
    assert timeline["applied"].sum() == summary["updates"] and timeline["lost"].sum() == summary["tasks_lost"]
    in_flight = timeline[[f"in_flight_{g}" for g in ("phones", "laptops", "servers")]].sum(axis=1)
    full = timeline["end"] <= summary["sim_time"]
    assert np.allclose(in_flight[full], 6)  # C tasks in flight at every instant
    assert np.allclose(timeline["online_servers"][full], 1) and timeline["online_phones"].max() <= 4


def test_base_folder_has_no_behaviour_outputs(write_yaml, tmp_path):
    doc = copy.deepcopy(SCENARIO)
    for group in doc["clients"]:
        for key in ("availability", "speed_profile", "dropout"):
            group.pop(key, None)
    out, summary, clients = run_folder(write_yaml, tmp_path, doc)
    assert not set(BEHAVIOUR_COLUMNS) & set(clients.columns) and not set(KEYS) & summary.keys()
    assert not (out / "behaviour.png").exists()


def test_timeline_bins_keep_interval_lengths_across_doublings():
    rng = np.random.default_rng(0)
    bins = Bins(2, bins=16, width=0.5)
    start = rng.uniform(0, 100, 300)
    end = start + rng.exponential(5, 300)
    row = rng.integers(0, 2, 300)
    bins.add_intervals(row, start, end)
    assert bins.width == 8.0  # doubled until 16 bins cover the last end (< 128)
    for r in range(2):
        assert bins.area[r].sum() == pytest.approx((end - start)[row == r].sum())
    # one interval's share of each bin, against a direct computation
    one = Bins(1, bins=16, width=8.0)
    one.add_intervals(np.array([0]), np.array([5.0]), np.array([30.0]))
    assert np.allclose(one.area[0][:5], [3.0, 8.0, 8.0, 6.0, 0.0])
    assert np.allclose(sliding_mean(np.array([0.0, 3.0, 0.0, 3.0]), 3), [1.5, 1.0, 2.0, 1.5])


def test_training_loses_tasks_and_releases_their_models(write_yaml, tmp_path):
    doc = {"name": "train-lossy", "seed": 6, "concurrency": 5, "horizon": {"updates": 600, "warmup": 100},
           "clients": [{"group": "fast", "count": 3, "service": {"dist": "exponential", "rate": 3.0, "per": "step"},
                        "dropout": 0.4},
                       {"group": "slow", "count": 3, "service": {"dist": "exponential", "rate": 1.0}}],
           "training": {"dataset": {"name": "synthetic", "dim": 8, "classes": 4, "samples": 60},
                        "model": {"name": "logistic"}, "algorithm": {"lr": 0.05, "batch_size": 16, "local_steps": 2},
                        "eval": {"every_updates": 200}}}
    for batched in (False, True):  # the sequential and the batched path of the client work
        doc["training"]["batched"] = batched
        _, lossy, _ = run_folder(write_yaml, tmp_path, doc, f"lossy{batched}")
        curve = pd.read_csv(tmp_path / f"lossy{batched}" / "training.csv")
        assert curve["update"].tolist() == [0, 200, 400, 600] and lossy["tasks_lost_dropout"] > 100
        assert lossy["max_alive_versions"] <= 6  # a lost task's model version is released
        assert lossy["scenario"]["clients"][0]["service"] == {"dist": "exponential", "rate": 3.0, "cv": 1.0,
                                                              "per": "step"}
    doc["clients"][0].pop("dropout")
    _, kept, _ = run_folder(write_yaml, tmp_path, doc, "kept")
    base = pd.read_csv(tmp_path / "kept" / "training.csv")
    # the same updates take longer when 40% of the fast clients' work is lost
    assert curve["sim_time"].iloc[-1] > 1.2 * base["sim_time"].iloc[-1]
