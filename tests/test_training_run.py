"""`fedsim run` with a training: section: the run folder, the queueing path left untouched,
divergence, checkpoints and resumption (exactly the uninterrupted run), FedAvg folders."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

from fedsim.cli import main
from fedsim.engine import Engine
from fedsim.run import ProgressBar, StepProgressBar
from fedsim.scenario import parse_scenario
from fedsim.training.checkpoint import FILENAME

BASE = {
    "name": "train-cli", "seed": 6, "concurrency": 5, "horizon": {"updates": 900, "warmup": 100},
    "routing": "weights",
    "clients": [{"group": "fast", "count": 3, "routing_weight": 2.0, "service": {"dist": "exponential", "rate": 3.0}},
                {"group": "slow", "count": 4, "service": {"dist": "lognormal", "mean": 1.0, "cv": 1.2}}],
    "training": {"dataset": {"name": "synthetic", "dim": 8, "classes": 4, "samples": 60},
                 "model": {"name": "mlp", "hidden": [6]},
                 "algorithm": {"name": "generalized_async_sgd", "lr": 0.05, "batch_size": 16},
                 "eval": {"every_updates": 200}},
}
CURVE = ["update", "sim_time", "wall_seconds", "train_loss", "test_loss", "test_accuracy"]


def with_training(**changes) -> dict:
    doc = copy.deepcopy(BASE)
    doc["training"].update(changes)
    return doc


def fedsim_run(path, out, *extra) -> int:
    return main(["run", str(path), "--out", str(out), "--quiet", *extra])


def models_equal(a, b) -> bool:
    sa, sb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_run_folder_gains_the_learning_curve_and_accuracy(write_yaml, tmp_path, capsys):
    out = tmp_path / "out"
    assert fedsim_run(write_yaml(BASE), out) == 0
    assert "training: final test accuracy" in capsys.readouterr().out
    curve = pd.read_csv(out / "training.csv")
    assert list(curve.columns) == CURVE
    assert curve["update"].tolist() == [0, 200, 400, 600, 800, 900]
    assert curve["sim_time"].is_monotonic_increasing and curve["wall_seconds"].is_monotonic_increasing
    assert curve["train_loss"].iloc[-1] < curve["train_loss"].iloc[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_accuracy"] == pytest.approx(curve["test_accuracy"].iloc[-1])
    assert summary["best_accuracy"] == pytest.approx(curve["test_accuracy"].max())
    assert summary["max_alive_versions"] <= 6 and summary["scenario"]["training"]["model"]["hidden"] == [6]
    assert (out / "training.png").stat().st_size > 10_000
    clients = pd.read_csv(out / "clients.csv")
    assert (clients["data_size"] >= 1).all()
    state = torch.load(out / "model.pt")
    assert [tuple(v.shape) for v in state.values()] == [(6, 8), (6,), (4, 6), (4,)]


@pytest.mark.parametrize(("bar_class", "expected"), [
    (StepProgressBar, list(range(1, 901))),  # training runs: the bar follows every update
    (ProgressBar, [0] * 900),                # engine-only runs: it moves per chunk of 65,536
])
def test_progress_bar_granularity(bar_class, expected):
    scenario = parse_scenario(BASE)
    progress = bar_class(scenario)
    seen = []

    class Probe:
        def on_complete(self, task, update, now):
            seen.append(progress.bar.n)

    Engine(scenario, [progress, Probe()]).run()
    progress.close()
    assert seen == expected


def test_training_leaves_the_queueing_sample_path_unchanged(write_yaml, tmp_path):
    plain = copy.deepcopy(BASE)
    del plain["training"]
    assert fedsim_run(write_yaml(plain, "plain.yaml"), tmp_path / "plain") == 0
    assert fedsim_run(write_yaml(BASE, "train.yaml"), tmp_path / "train") == 0
    a, b = pd.read_csv(tmp_path / "plain" / "clients.csv"), pd.read_csv(tmp_path / "train" / "clients.csv")
    assert list(b.columns) == [*a.columns, "data_size"]
    pd.testing.assert_frame_equal(a, b[a.columns])  # staleness, sojourn, queues: identical, client by client
    sa = json.loads((tmp_path / "plain" / "summary.json").read_text())
    sb = json.loads((tmp_path / "train" / "summary.json").read_text())
    for key in ("sim_time", "throughput_sim", "mean_staleness_sim", "mean_staleness_ci"):
        assert sa[key] == sb[key]


def test_divergence_stops_with_one_line_and_keeps_the_curve(write_yaml, tmp_path, capsys):
    doc = with_training(algorithm={"name": "async_sgd", "lr": 1e12})
    out = tmp_path / "out"
    assert fedsim_run(write_yaml(doc), out) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training diverged") and "\n" not in err and "training.algorithm.lr" in err
    curve = pd.read_csv(out / "training.csv")
    assert curve["update"].iloc[0] == 0 and curve["train_loss"].isna().iloc[-1]
    assert not (out / "summary.json").exists()  # the folder is marked incomplete


@pytest.mark.parametrize("algorithm", [
    {"name": "generalized_async_sgd", "local_steps": 2},
    {"name": "fedbuff", "buffer_size": 3, "local_steps": 2},
    {"name": "fedasync", "staleness": "hinge", "a": 2, "b": 1},
    {"name": "fedavg", "clients_per_round": 3, "local_steps": 2},
])
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(write_yaml, tmp_path, algorithm):
    doc = with_training(algorithm=algorithm)
    doc["concurrency"] = algorithm.get("clients_per_round", doc["concurrency"])  # FedAvg: C = m
    path = write_yaml(doc)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert fedsim_run(path, full, "--checkpoint-every", "420") == 0  # last checkpoint: update 840
    state = torch.load(full / FILENAME, weights_only=False)["state"]
    assert state["updates"] == 840
    assert main(["run", str(path), "--resume", str(full), "--out", str(resumed), "--quiet"]) == 0
    assert models_equal(full, resumed)
    a, b = pd.read_csv(full / "training.csv"), pd.read_csv(resumed / "training.csv")
    cols = [c for c in CURVE if c != "wall_seconds"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    pd.testing.assert_frame_equal(pd.read_csv(full / "clients.csv"), pd.read_csv(resumed / "clients.csv"))
    assert json.loads((resumed / "summary.json").read_text())["resumed_from_update"] == 840


def test_resume_in_place_continues_the_folder(write_yaml, tmp_path):
    path = write_yaml(with_training(algorithm={"name": "fedbuff", "buffer_size": 2}))
    out = tmp_path / "run"
    assert fedsim_run(path, tmp_path / "full") == 0
    assert fedsim_run(path, out, "--checkpoint-every", "300") == 0
    assert main(["run", str(path), "--resume", str(out), "--quiet"]) == 0  # --out defaults to the folder
    assert models_equal(tmp_path / "full", out)
    assert (out / "summary.json").exists()


def test_resume_errors_are_one_line(write_yaml, tmp_path, capsys):
    path = write_yaml(BASE)
    assert fedsim_run(path, tmp_path / "a", "--checkpoint-every", "400") == 0
    other = write_yaml(with_training(algorithm={"name": "async_sgd"}), "other.yaml")
    capsys.readouterr()
    assert main(["run", str(other), "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --resume:")
    assert main(["run", str(path), "--resume", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err
    plain = copy.deepcopy(BASE)
    del plain["training"]
    assert fedsim_run(write_yaml(plain, "plain.yaml"), tmp_path / "d", "--checkpoint-every", "10") == 2
    assert "only for scenarios with a training: section" in capsys.readouterr().err
    assert fedsim_run(path, tmp_path / "e", "--checkpoint-every", "0") == 2
    assert "--checkpoint-every" in capsys.readouterr().err


def test_missing_dataset_is_a_one_line_usage_error(write_yaml, tmp_path, capsys):
    doc = with_training(dataset={"name": "mnist", "root": str(tmp_path / "data")}, model="logistic")
    assert fedsim_run(write_yaml(doc), tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training.dataset.root: mnist not found under") and "\n" not in err
    assert "download: true" in err


def test_fedavg_writes_its_own_run_folder(write_yaml, tmp_path, capsys):
    doc = with_training(algorithm={"name": "fedavg", "clients_per_round": 3}) | {"concurrency": 3}
    out = tmp_path / "out"
    assert fedsim_run(write_yaml(doc), out) == 0
    assert "fedavg, 300 rounds (900 client updates)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 300 and summary["updates"] == 900 and summary["algorithm"] == "fedavg"
    assert summary["round_time_mean"] == pytest.approx(summary["sim_time"] / 300)
    clients = pd.read_csv(out / "clients.csv")
    assert list(clients.columns) == ["client", "group", "p", "mean_service", "service_cv", "data_size",
                                     "completions", "staleness_sim"]
    assert clients["completions"].sum() == 900
    assert (clients.loc[clients["completions"] > 0, "staleness_sim"] == 0).all()
    assert list(pd.read_csv(out / "training.csv").columns) == CURVE
    too_many = with_training(algorithm={"name": "fedavg", "clients_per_round": 8}) | {"concurrency": 8}
    assert fedsim_run(write_yaml(too_many, "m.yaml"), tmp_path / "m") == 2
    assert "training.algorithm.clients_per_round" in capsys.readouterr().err
