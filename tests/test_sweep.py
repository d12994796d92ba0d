"""Sweeps: grid expansion by field path, up-front validation, resumption after a kill, executors."""

from __future__ import annotations

import copy
import json
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
from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.report import write_run
from fedsim.run import simulate
from fedsim.scenario import parse_scenario
from fedsim.sweep import CELLS_DIR, load_results, load_training, parse_sweep, run_sweep, split_path
from fedsim.sweep_plots import make_figures, seed_interval, staleness_bins

BASE = {
    "name": "sweep-test",
    "seed": 11,
    "concurrency": 4,
    "horizon": {"updates": 30_000, "warmup": 3_000},
    "routing": "weights",
    "clients": [
        {"group": "fast", "count": 3, "service": {"dist": "exponential", "rate": 4.0}, "routing_weight": 2.0},
        {"group": "slow", "count": 4, "service": {"dist": "gamma", "mean": 1.0, "cv": 0.5}},
    ],
}
# 3 x 2 grid points x 2 seeds = 12 cells of 30 000 updates (about 0.1 s each)
SWEEP = {
    "name": "tiny",
    "scenario": BASE,
    "grid": {"concurrency": [1, 3, 6], "clients[1].service.cv": [0.5, 2.0]},
    "seeds": 2,
    "seed": 100,
    "trace": {"concurrency": 6, "clients[1].service.cv": 2.0},
}


def frame(out: Path) -> pd.DataFrame:
    """results.parquet without its one timing column (wall_seconds is measured, not simulated)."""
    return pd.read_parquet(out / "results.parquet").drop(columns="wall_seconds")


def cell_files(out: Path) -> dict[str, bytes]:
    """Every file of every cell folder; summary.json without what describes the process rather
    than the run (``wall_seconds``, ``provenance``: start time, versions of what it imported)."""
    files = {}
    for path in sorted((out / CELLS_DIR).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "summary.json":
                summary = {k: v for k, v in json.loads(data).items() if k not in ("wall_seconds", "provenance")}
                data = json.dumps(summary).encode()
            files[str(path.relative_to(out))] = data
    return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tiny sweep, uninterrupted, cells one after another in this process."""
    out = tmp_path_factory.mktemp("reference")
    report = run_sweep(parse_sweep(SWEEP, base_dir=REPO), out, workers=1)
    assert report.ran == 12 and not report.failed
    return out


# ---------------------------------------------------------------------------------------
# grid expansion


def test_field_paths_split_into_steps():
    assert split_path("clients[1].service.cv", "p") == ["clients", 1, "service", "cv"]
    assert split_path("concurrency", "p") == ["concurrency"]
    for bad in ("clients[x].cv", ".cv", "clients..cv", "[0].cv", "clients[1]service", "a b", ""):
        with pytest.raises(ScenarioError, match=r"^p: .*not a field path"):
            split_path(bad, "p")


def test_cells_are_the_grid_product_times_seeds_in_row_order():
    sweep = parse_sweep(SWEEP, base_dir=REPO)
    assert len(sweep.cells) == 3 * 2 * 2
    assert sweep.cells[0].name == "concurrency=1__clients[1].service.cv=0.5__seed=100"
    assert sweep.cells[1].name == "concurrency=1__clients[1].service.cv=0.5__seed=101"
    assert sweep.cells[2].name == "concurrency=1__clients[1].service.cv=2.0__seed=100"
    assert len({c.name for c in sweep.cells}) == 12
    for cell in sweep.cells:
        values = dict(cell.values)
        scenario = parse_scenario(cell.scenario)
        assert scenario.concurrency == values["concurrency"]
        assert scenario.groups[1].service.cv == pytest.approx(values["clients[1].service.cv"])
        assert scenario.seed == cell.seed == 100 + cell.seed_index  # the documented derivation
        assert cell.trace == (values == {"concurrency": 6, "clients[1].service.cv": 2.0})
    assert BASE["clients"][1]["service"]["cv"] == 0.5  # the caller's mapping is not modified
    # the base seed defaults to the base scenario's seed
    assert parse_sweep({"scenario": BASE, "seeds": 3}, base_dir=REPO).cells[2].seed == BASE["seed"] + 2


def test_a_field_absent_from_the_base_can_be_gridded():
    """The last step of a path may be missing in the base: it is added, and the schema judges it."""
    sweep = parse_sweep({"scenario": BASE, "grid": {"clients[1].routing_weight": [0.5, 4.0]}}, base_dir=REPO)
    p_slow = [parse_scenario(c.scenario).p[-1] for c in sweep.cells]
    assert p_slow == pytest.approx([0.5 / (3 * 2 + 4 * 0.5), 4.0 / (3 * 2 + 4 * 4.0)])
    no_weights = copy.deepcopy(BASE) | {"routing": "uniform"}
    del no_weights["clients"][0]["routing_weight"]
    with pytest.raises(ScenarioError, match=r"^grid\.clients\[0\]\.routing_weight: only used with routing: "
                                            r"weights .*absent from the base scenario"):
        parse_sweep({"scenario": no_weights, "grid": {"clients[0].routing_weight": [1.0]}}, base_dir=REPO)


def test_a_cell_is_an_ordinary_run_folder(reference, tmp_path):
    """A cell's files are those of `simulate` + `write_run` on the cell's scenario, byte for byte."""
    cell = parse_sweep(SWEEP, base_dir=REPO).cells[-1]
    assert cell.trace
    result = simulate(parse_scenario(cell.scenario), trace=tmp_path / "trace.parquet")
    write_run(result, tmp_path, plots=False)
    folder = reference / CELLS_DIR / cell.name
    assert sorted(p.name for p in folder.iterdir()) == ["cell.json", "clients.csv", "summary.json", "trace.parquet"]
    assert json.loads((folder / "cell.json").read_text()) == {"cell": cell.name, "scenario": cell.scenario,
                                                               "trace": True}
    assert (folder / "clients.csv").read_bytes() == (tmp_path / "clients.csv").read_bytes()
    assert (folder / "trace.parquet").read_bytes() == (tmp_path / "trace.parquet").read_bytes()


def test_results_parquet_has_one_row_per_cell_and_client(reference):
    df, manifest = load_results(reference)
    assert len(df) == 12 * 7 and (df["status"] == "ok").all() and df["error"].isna().all()
    assert list(df.columns[:7]) == ["cell", "concurrency", "clients[1].service.cv", "seed_index", "seed", "status",
                                    "error"]
    for col in ("client", "group", "p", "staleness_sim", "staleness_analytic", "group_staleness_sim",
                "throughput_sim", "throughput_ci", "throughput_analytic", "mean_staleness_sim", "exact", "updates",
                "sim_time", "wall_seconds"):
        assert col in df.columns
    assert list(manifest["grid"]) == ["concurrency", "clients[1].service.cv"]
    # the summary scalars are the cell's summary.json, the client rows its clients.csv
    first = df[df["cell"] == df["cell"].iloc[0]]
    summary = json.loads((reference / CELLS_DIR / first["cell"].iloc[0] / "summary.json").read_text())
    assert (first["throughput_sim"] == summary["throughput_sim"]).all()
    assert first["client"].tolist() == list(range(7))
    # identity of the model: the update-weighted mean staleness is C - 1 (analytic exactly)
    cells = df.drop_duplicates("cell")
    assert np.allclose(cells["mean_staleness_analytic"], cells["concurrency"] - 1)


# ---------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written


BAD = [
    ({"grid": {"clients[5].service.cv": [1.0]}},
     "grid.clients[5].service.cv: no such field in the base scenario (clients has 2 groups)"),
    ({"grid": {"horizon.limits.time": [1.0]}},
     "grid.horizon.limits.time: no such field in the base scenario (horizon has no field 'limits')"),
    ({"grid": {"concurency": [1, 2]}}, "grid.concurency: unknown field; allowed: name, seed, concurrency"),
    ({"grid": {"concurrency": [0, 2]}}, "grid.concurrency: must be an integer >= 1, got 0 (value 0)"),
    ({"grid": {"seed": [1, 2]}}, "grid.seed: not a grid path; set the replications with seeds"),
    ({"grid": {"concurrency": []}}, "grid.concurrency: must be a non-empty list of values"),
    ({"grid": {"concurrency": [2, 2]}}, "grid.concurrency: values must be distinct"),
    ({"grid": {"clients[0].service": [{"dist": "exponential", "rate": 1}]}},
     "grid.clients[0].service: grid values must be numbers, strings or booleans"),
    ({"grid": {"clients[x].service.cv": [1]}}, "grid.clients[x].service.cv: 'clients[x].service.cv' is not a "
                                               "field path"),
    ({"grid": {"horizon.updates": [1000]}}, "horizon.warmup: must be below horizon.updates (1000), got 3000 "
                                            "(in the sweep cell horizon.updates=1000)"),
    ({"overrides": {"clients[2].count": 1}}, "overrides.clients[2].count: no such field in the base scenario"),
    ({"trace": {"routing": "uniform"}}, "trace.routing: unknown field; allowed: concurrency"),
    ({"trace": {"concurrency": 7}}, "trace.concurrency: 7 is not one of the grid values [1, 2]"),
    ({"seeds": 0}, "seeds: must be an integer >= 1, got 0"),
    ({"colour": "red"}, "colour: unknown field; allowed: name, plugins, scenario"),
    ({"targets": [0.5]}, "targets: accuracy targets need a base scenario with a training: section"),
    ({"targets": [0.5, 1.5]}, "targets[1]: must be a test accuracy in (0, 1], got 1.5"),
    ({"targets": 0.5}, "targets: must be a non-empty list of test accuracies in (0, 1], got 0.5"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_sweep_is_one_line_error_before_anything_runs(change, message, write_yaml, tmp_path, capsys):
    doc = {"scenario": BASE, "grid": {"concurrency": [1, 2]}} | change
    out = tmp_path / "out"
    assert main(["sweep", str(write_yaml(doc, "sweep.yaml")), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not out.exists()


def test_bad_workers_and_missing_base_file(write_yaml, tmp_path, capsys):
    out = tmp_path / "out"
    path = write_yaml({"scenario": BASE}, "sweep.yaml")
    assert main(["sweep", str(path), "--out", str(out), "--workers", "0"]) == 2
    assert capsys.readouterr().err == "error: --workers: must be an integer >= 1, got 0\n"
    assert main(["sweep", str(write_yaml({"scenario": "nowhere.yaml"}, "s2.yaml")), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: scenario: cannot read the base scenario")
    assert not out.exists()



def test_unreachable_ray_cluster_is_one_line_error_before_anything_is_written(write_yaml, tmp_path, capsys,
                                                                            monkeypatch):
    """What ray.init raises when no cluster answers (Ray retries for minutes, so it is simulated)."""
    ray = pytest.importorskip("ray")

    def no_cluster(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to.")

    monkeypatch.setattr(ray, "init", no_cluster)
    out = tmp_path / "out"
    assert main(["sweep", str(write_yaml({"scenario": BASE}, "sweep.yaml")), "--out", str(out), "--ray", "auto"]) == 2
    assert capsys.readouterr().err == ("error: --ray: cannot connect to Ray at 'auto' "
                                       "(Could not find any running Ray instance.)\n")
    assert not out.exists()


def test_the_command_line_reports_a_bad_grid_path_in_one_line(write_yaml, tmp_path):
    path = write_yaml({"scenario": BASE, "grid": {"clients[2].service.cv": [1.0]}}, "sweep.yaml")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "sweep", str(path), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("error: grid.clients[2].service.cv: no such field in the base scenario "
                           "(clients has 2 groups)\n")
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# resumption and failures


def test_killed_sweep_resumes_to_the_same_results(reference, write_yaml, tmp_path):
    """SIGKILL the `fedsim sweep` process group after 3 cells, rerun: same data, finished cells kept.

    Equality is of the data frames (and of every cell file), except wall_seconds, a timing, and
    the provenance of summary.json.
    """
    path = write_yaml(SWEEP, "sweep.yaml")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "sweep", str(path), "--out", str(out), "--workers",
                             "1", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while len(list(out.glob(f"{CELLS_DIR}/*/summary.json"))) < 3:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p.parent.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob(f"{CELLS_DIR}/*/summary.json")}
    assert 3 <= len(finished) < 12 and not (out / "results.parquet").exists()

    report = run_sweep(parse_sweep(SWEEP, base_dir=REPO), out, workers=2)
    assert report.skipped == len(finished) and report.ran == 12 - len(finished) and not report.failed
    for name, (mtime, data) in finished.items():  # no finished cell was run again
        summary = out / CELLS_DIR / name / "summary.json"
        assert summary.stat().st_mtime_ns == mtime and summary.read_bytes() == data
    pd.testing.assert_frame_equal(frame(out), frame(reference))
    assert cell_files(out) == cell_files(reference)


def test_failing_cell_is_recorded_and_the_sweep_goes_on(reference, tmp_path, monkeypatch):
    import fedsim.run

    real = fedsim.run.simulate

    def fail_at_three(scenario, **kwargs):
        if scenario.concurrency == 3:
            raise RuntimeError("injected failure\nsecond line")
        return real(scenario, **kwargs)

    sweep = parse_sweep(SWEEP, base_dir=REPO)
    monkeypatch.setattr(fedsim.run, "simulate", fail_at_three)
    report = run_sweep(sweep, tmp_path, workers=1)
    assert len(report.failed) == 4 and all(e == "RuntimeError: injected failure" for e in report.failed.values())
    df = pd.read_parquet(tmp_path / "results.parquet")
    bad = df[df["status"] == "error"]
    assert bad["concurrency"].tolist() == [3] * 4 and bad["client"].isna().all()
    assert len(df) == 8 * 7 + 4
    assert not any((tmp_path / CELLS_DIR / name / "summary.json").exists() for name in report.failed)

    monkeypatch.setattr(fedsim.run, "simulate", real)  # rerun: only the failed cells run, now they succeed
    report = run_sweep(sweep, tmp_path, workers=1)
    assert report.ran == 4 and report.skipped == 8 and not report.failed
    pd.testing.assert_frame_equal(frame(tmp_path), frame(reference))

    more = parse_sweep(SWEEP | {"seeds": 3}, base_dir=REPO)  # one more seed: only the new cells run
    assert run_sweep(more, tmp_path, workers=1).ran == 6


# ---------------------------------------------------------------------------------------
# sweeps that train: every cell is what `fedsim run` runs

TRAIN_BASE = {
    "name": "train-sweep",
    "seed": 5,
    "concurrency": 3,
    "horizon": {"updates": 300},
    "clients": [{"group": "fast", "count": 3, "service": {"dist": "exponential", "rate": 3.0}},
                {"group": "slow", "count": 3, "service": {"dist": "exponential", "rate": 1.0}}],
    "training": {"dataset": {"name": "synthetic", "dim": 8, "classes": 3, "samples": 30}, "model": "logistic",
                 "algorithm": {"name": "generalized_async_sgd", "lr": 0.05, "batch_size": 8},
                 "eval": {"every_updates": 50}},
}
# 2 learning rates x 2 seeds of 300 updates of a logistic model (about 0.3 s each)
TRAIN_SWEEP = {"name": "lr", "scenario": TRAIN_BASE, "grid": {"training.algorithm.lr": [0.02, 0.3]}, "seeds": 2,
               "targets": [0.5, 0.7]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    report = run_sweep(parse_sweep(TRAIN_SWEEP, base_dir=REPO), out, workers=1)
    assert report.ran == 4 and not report.failed and report.training == out / "training.parquet"
    return out


def test_a_grid_over_the_learning_rate_gives_different_cells_with_accuracies(trained, tmp_path):
    df, manifest = load_results(trained)
    assert manifest["targets"] == [0.5, 0.7]
    cells = df.drop_duplicates("cell").set_index("cell")
    assert cells["final_accuracy"].between(0, 1).all() and (cells["best_accuracy"] >= cells["final_accuracy"]).all()
    for seed in (5, 6):  # one seed, two learning rates: other models on the same queueing sample path
        slow, fast = (cells[(cells["seed"] == seed) & (cells["training.algorithm.lr"] == lr)].iloc[0] for lr in (0.02, 0.3))
        assert slow["final_train_loss"] != fast["final_train_loss"]
        assert slow["sim_time"] == fast["sim_time"] and slow["throughput_sim"] == fast["throughput_sim"]
    curves = load_training(trained)
    assert list(curves.columns) == ["cell", "training.algorithm.lr", "seed_index", "seed", "update", "time",
                                    "accuracy", "loss", "test_loss"]
    assert curves.groupby("cell")["update"].apply(list).map(lambda u: u == list(range(0, 301, 50))).all()
    for name, curve in curves.groupby("cell"):  # the time to reach a target, computed again from the curve
        assert curve["accuracy"].iloc[-1] == pytest.approx(cells.loc[name, "final_accuracy"], rel=1e-9)  # 10 digits
        for target in (0.5, 0.7):
            hits = curve.loc[curve["accuracy"] >= target, "time"]
            expected = hits.iloc[0] if len(hits) else None
            assert pd.isna(cells.loc[name, f"time_to_accuracy_{target:g}"]) == (expected is None)
            if expected is not None:
                assert cells.loc[name, f"time_to_accuracy_{target:g}"] == expected
    # a cell is the run `fedsim run` makes of the cell's scenario
    cell = parse_sweep(TRAIN_SWEEP, base_dir=REPO).cells[-1]
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(dict(cell.scenario)))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    folder = trained / CELLS_DIR / cell.name
    assert (folder / "clients.csv").read_bytes() == (tmp_path / "run" / "clients.csv").read_bytes()
    curve = pd.read_csv(folder / "training.csv").drop(columns="wall_seconds")
    pd.testing.assert_frame_equal(curve, pd.read_csv(tmp_path / "run" / "training.csv").drop(columns="wall_seconds"))


def test_a_fedavg_base_is_swept_as_fedavg(tmp_path):
    """FedAvg cells run rounds: no network staleness, a round count, the learning curve."""
    base = copy.deepcopy(TRAIN_BASE)
    base["training"]["algorithm"] = {"name": "fedavg", "lr": 0.05, "batch_size": 8, "local_steps": 2,
                                     "clients_per_round": 3}
    sweep = parse_sweep({"scenario": base, "grid": {"training.algorithm.lr": [0.05, 0.2]}, "targets": [0.7]},
                        base_dir=REPO)
    assert not run_sweep(sweep, tmp_path, workers=1).failed
    with pytest.raises(ScenarioError, match="^trace: FedAvg cells run rounds, not the asynchronous network"):
        parse_sweep({"scenario": base, "trace": True}, base_dir=REPO)
    df, _ = load_results(tmp_path)
    assert (df["algorithm"] == "fedavg").all() and (df["rounds"] == 300 // 3).all()
    assert not {"mean_staleness_sim", "staleness_analytic", "throughput_analytic"} & set(df.columns)
    assert set(df["staleness_sim"].dropna()) <= {0.0}  # a FedAvg client computes on the current model
    cells = df.drop_duplicates("cell")
    assert cells["final_accuracy"].nunique() == 2 and cells["time_to_accuracy_0.7"].notna().all()
    assert load_training(tmp_path)["cell"].nunique() == 2


def test_an_extended_network_is_swept_with_its_links_server_and_power(tmp_path):
    extended = {"name": "extended", "seed": 3, "concurrency": 4, "horizon": {"updates": 5000},
                "server": {"service": {"dist": "exponential", "rate": 20.0}}, "server_power": {"busy": 150.0},
                "clients": [{"group": "phones", "count": 3, "service": {"dist": "exponential", "rate": 0.5},
                             "downlink": {"dist": "lognormal", "mean": 0.4, "cv": 2.0},
                             "uplink": {"dist": "exponential", "mean": 1.2, "station": "fifo"},
                             "power": {"compute": 3.0, "uplink": 1.5}},
                            {"group": "servers", "count": 2, "service": {"dist": "exponential", "rate": 4.0}}]}
    sweep = parse_sweep({"scenario": extended, "grid": {"concurrency": [2, 6]}}, base_dir=REPO)
    assert not run_sweep(sweep, tmp_path / "sweep", workers=1).failed
    df, _ = load_results(tmp_path / "sweep")
    for column in ("downlink_time_sim", "uplink_queue_sim", "server_utilisation_sim", "energy_per_update_sim"):
        assert df[column].notna().all(), column
    cell = sweep.cells[-1]  # the cell is the run `fedsim run` makes of its scenario
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(dict(cell.scenario)))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "sweep" / CELLS_DIR / cell.name / "clients.csv").read_bytes() == \
        (tmp_path / "run" / "clients.csv").read_bytes()


def test_optimal_routing_cells_record_the_concurrency_and_routing_chosen(tmp_path):
    base = copy.deepcopy(BASE) | {"routing": "optimal-wall-clock",
                                  "optimization": {"A": 2.0, "L": 0.5, "S": 1.0, "eta": 0.05}}
    del base["concurrency"], base["clients"][0]["routing_weight"]
    sweep = parse_sweep({"scenario": base, "grid": {"optimization.budget": [20.0, 2000.0]}}, base_dir=REPO)
    assert not run_sweep(sweep, tmp_path, workers=1).failed
    df, _ = load_results(tmp_path)
    assert (df["optimized_for"] == "wall-clock").all() and (df["routing"] == "weights").all()
    for cell in sweep.cells:  # what the optimiser chooses for the cell's scenario, computed again
        chosen = parse_scenario(cell.scenario)
        rows = df[df["cell"] == cell.name]
        assert (rows["concurrency"] == chosen.concurrency).all() and rows["p"].to_numpy() == pytest.approx(chosen.p)
    assert df.drop_duplicates("cell")["concurrency"].nunique() == 2  # the budget moves the optimum


def test_process_pool_and_ray_give_the_same_results(reference, trained, tmp_path, registries):
    """The queueing sweep, the sweep that trains and the plug-in examples of docs/extending.md
    (a law and a routing; a dataset, a model factory and an update rule), on a local process
    pool and on one local Ray instance (2 CPUs), against in-process runs."""
    pytest.importorskip("ray")
    import ray

    from fedsim.sweep import load_sweep, ray_session

    example = REPO / "examples" / "plugins"
    plugged = {"scenario": "training.yaml", "overrides": {"horizon": {"updates": 400}}, "seed": 1,
               "grid": {"training.algorithm.power": [0.5, 2.0]}}  # the example's dataset, model and rule
    sweeps = {"tiny": (parse_sweep(SWEEP, base_dir=REPO), reference),
              "train": (parse_sweep(TRAIN_SWEEP, base_dir=REPO), trained),
              "example": (load_sweep(example / "sweep.yaml"), tmp_path / "example"),
              "plugged": (parse_sweep(plugged, base_dir=example), tmp_path / "plugged")}
    for name in ("example", "plugged"):
        assert not run_sweep(sweeps[name][0], tmp_path / name, workers=1).failed
    runs = [(name, "ray") for name in sweeps] + [("tiny", "pool"), ("train", "pool")]  # the example's pool: test_plugins
    for name in ("tiny", "train"):
        assert not run_sweep(sweeps[name][0], tmp_path / f"{name}-pool", workers=2).failed
    with ray_session("local", 2):  # one Ray start for every sweep
        for name, (sweep, _) in sweeps.items():
            assert not run_sweep(sweep, tmp_path / f"{name}-ray", workers=2, ray="local").failed
    assert not ray.is_initialized()  # the session opened here is shut down
    for name, executor in runs:
        pd.testing.assert_frame_equal(frame(tmp_path / f"{name}-{executor}"), frame(sweeps[name][1]))
    for executor in ("pool", "ray"):
        pd.testing.assert_frame_equal(load_training(tmp_path / f"train-{executor}"), load_training(trained))
    assert cell_files(tmp_path / "tiny-ray") == cell_files(tmp_path / "tiny-pool") == cell_files(reference)


# ---------------------------------------------------------------------------------------
# figures


def test_sweep_figures_are_written(reference, trained, tmp_path, capsys):
    import matplotlib

    style = dict(matplotlib.rcParams)
    written = make_figures(reference, tmp_path, prefix="tiny_")
    assert sorted(p.name for p in written) == ["tiny_approximation_error.png", "tiny_group_staleness.png",
                                               "tiny_staleness_distribution.png", "tiny_throughput_staleness.png"]
    assert main(["plot", str(trained), "--out", str(tmp_path / "trained")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "trained" / f) for f in ("accuracy_vs_time.png",
                                                                                       "time_to_target.png")]
    assert all(p.stat().st_size > 20_000 for p in [*written, *(tmp_path / "trained").iterdir()])
    assert dict(matplotlib.rcParams) == style  # the figures change no global setting
    # a sweep no figure fits: one line, exit 0
    none = tmp_path / "none"
    run_sweep(parse_sweep({"scenario": BASE | {"horizon": {"updates": 2000}}, "grid": {"concurrency": [2, 3]}},
                          base_dir=REPO), none, workers=1)
    assert main(["plot", str(none)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{none}: no figure fits this sweep") and out.count("\n") == 1
    assert main(["plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: no results.parquet in this folder; run fedsim sweep first\n"
    taken = tmp_path / "taken.png"
    taken.write_text("keep me")
    assert main(["plot", str(trained), "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out: ") and err.count("\n") == 1 and taken.read_text() == "keep me"


def test_interval_over_seeds_and_integer_staleness_bins():
    mean, half = seed_interval(pd.Series([1.0, 2.0, 3.0]))
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-6)  # t_{2, 0.975} sd / sqrt(3)
    for top in (0, 7, 10, 11, 350, 12_345):
        edges = staleness_bins(top)
        assert edges[0] == -0.5 and edges[-1] == top + 0.5 and (np.diff(edges) >= 1).all()
        assert (edges % 1 == 0.5).all()  # every bin holds whole values only
        counts, _ = np.histogram(np.arange(top + 1), bins=edges)
        assert counts.sum() == top + 1 and (counts[: min(top, 10) + 1] == 1).all()
