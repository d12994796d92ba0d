"""The Python API: the same run as `fedsim run`, in memory, saved and opened back unchanged,
overrides validated like the file, and no global state touched."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import fedsim
from conftest import REPO
from fedsim.cli import main
from fedsim.errors import ScenarioError

BASE = {
    "name": "api-test", "seed": 3, "concurrency": 4, "horizon": {"updates": 3_000, "warmup": 300},
    "clients": [{"group": "fast", "count": 2, "service": {"dist": "exponential", "rate": 3.0}},
                {"group": "slow", "count": 3, "service": {"dist": "lognormal", "mean": 1.0, "cv": 1.5}}],
}
TRAINING = {"dataset": {"name": "synthetic", "dim": 6, "classes": 3, "samples": 40},
            "model": {"name": "mlp", "hidden": [5]},
            "algorithm": {"name": "generalized_async_sgd", "lr": 0.05, "batch_size": 8},
            "eval": {"every_updates": 100}, "threads": 1}


def same_run(a: fedsim.Run, b: fedsim.Run) -> None:
    """Two runs of one scenario: the same results, whatever the wall clock and the provenance."""
    pd.testing.assert_frame_equal(a.clients, b.clients)
    drop = ("wall_seconds", "provenance")
    assert {k: v for k, v in a.summary.items() if k not in drop} == {k: v for k, v in b.summary.items() if k not in drop}
    if a.training is not None:
        pd.testing.assert_frame_equal(a.training.drop(columns="wall_seconds"), b.training.drop(columns="wall_seconds"))


def test_overrides_by_field_path_are_validated(write_yaml):
    path = write_yaml(BASE)
    sc = fedsim.load_scenario(path, concurrency=7, **{"clients[1].service.cv": 0.5, "horizon.updates": 1000})
    assert sc.concurrency == 7 and sc.groups[1].service.cv == 0.5 and sc.horizon.updates == 1000
    assert fedsim.load_scenario(sc, seed=9).seed == 9 and fedsim.load_scenario(BASE, seed=2).seed == 2
    with pytest.raises(ScenarioError, match=r"^concurrency: must be an integer >= 1, got 0"):
        fedsim.load_scenario(path, concurrency=0)
    with pytest.raises(ScenarioError, match=r"^clients\[5\]\.count: no such field"):
        fedsim.load_scenario(path, **{"clients[5].count": 2})
    with pytest.raises(ScenarioError, match=r"^clients\[0\]\.speed: unknown field"):
        fedsim.load_scenario(path, **{"clients[0].speed": 2})


def test_run_in_memory_is_the_cli_run_and_saves_and_opens_unchanged(write_yaml, tmp_path, monkeypatch):
    path = write_yaml(BASE)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = fedsim.run(path, trace=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert res.summary["updates"] == 3_000 and len(res.clients) == 5 and list(res.groups["group"]) == ["fast", "slow"]
    assert len(res.trace) == 3_000 and res.training is None and res.model is None
    assert res.summary["provenance"]["command"] is None and "torch" in res.summary["provenance"]

    assert main(["run", str(path), "--out", str(tmp_path / "cli"), "--quiet", "--trace"]) == 0
    cli = fedsim.open_run(tmp_path / "cli")
    same_run(res, cli)
    pd.testing.assert_frame_equal(res.trace, cli.trace)
    assert cli.summary["provenance"]["command"].startswith("fedsim run ")

    assert res.save(tmp_path / "saved") == tmp_path / "saved"
    back = fedsim.open_run(tmp_path / "saved")
    assert back == res and back is not res
    assert back != cli  # another run (its wall clock and provenance differ)
    other = fedsim.run(path, seed=4)
    assert not other.clients.equals(res.clients)


def test_training_run_restores_torch_and_round_trips(write_yaml, tmp_path):
    torch = pytest.importorskip("torch")
    path = write_yaml(BASE | {"horizon": {"updates": 400, "warmup": 40}, "training": TRAINING})
    torch.set_num_threads(2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    res = fedsim.run(path)
    assert torch.get_num_threads() == 2 and torch.equal(torch.rand(3), expected)  # global state as it was
    assert list(res.training["update"]) == [0, 100, 200, 300, 400]
    assert set(res.model) == {"1.weight", "1.bias", "3.weight", "3.bias"} and "data_size" in res.clients
    res.save(tmp_path / "t")
    assert fedsim.open_run(tmp_path / "t") == res
    assert (tmp_path / "t" / "training.png").stat().st_size > 10_000
    assert main(["run", str(path), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli = fedsim.open_run(tmp_path / "cli")
    same_run(res, cli)
    assert all(torch.equal(res.model[k], cli.model[k]) for k in res.model)


def test_fedavg_through_the_api(write_yaml):
    pytest.importorskip("torch")
    doc = BASE | {"concurrency": 2, "horizon": {"updates": 200, "warmup": 20},
                  "training": copy.deepcopy(TRAINING) | {"algorithm": {"name": "fedavg", "clients_per_round": 2,
                                                                       "batch_size": 8}}}
    res = fedsim.run(doc)
    assert res.summary["rounds"] == 100 and res.clients["completions"].sum() == 200
    assert res.groups["completions"].sum() == 200
    with pytest.raises(ScenarioError, match="^trace: FedAvg"):
        fedsim.run(doc, trace=True)
    with pytest.raises(ScenarioError, match="^concurrency: FedAvg has"):
        fedsim.run(doc, concurrency=3)


def test_sweep_returns_the_results_table(write_yaml, tmp_path):
    write_yaml(BASE | {"horizon": {"updates": 500, "warmup": 50}}, "base.yaml")
    sweep = write_yaml({"name": "s", "scenario": "base.yaml", "grid": {"concurrency": [1, 3]}, "seeds": 2}, "s.yaml")
    table = fedsim.sweep(sweep, out=tmp_path / "sw", workers=1)
    assert len(table) == 4 * 5 and set(table["concurrency"]) == {1, 3} and (table["status"] == "ok").all()


GLOBAL_STATE = """
import json, sys
import fedsim
light = [m for m in ("torch", "matplotlib", "pandas", "simpy", "fedsim.engine") if m in sys.modules]
import matplotlib
backend = matplotlib.get_backend()
before = {k: str(v) for k, v in matplotlib.rcParams.items()}
import fedsim.run as module
import fedsim.sweep
res = fedsim.run(sys.argv[1])          # the modules are callable: fedsim.run is the API's run
assert callable(fedsim.sweep) and fedsim.sweep is sys.modules["fedsim.sweep"]
res.save(sys.argv[2])
after = {k: str(v) for k, v in matplotlib.rcParams.items()}
pyplot = sys.modules.get("matplotlib.pyplot")      # seaborn imports it: it must hold no figure
print(json.dumps({"light": light, "callable": module is fedsim.run, "torch": "torch" in sys.modules,
                  "figures": pyplot.get_fignums() if pyplot else [], "backend": [backend, matplotlib.get_backend()],
                  "rc": [k for k in before if before[k] != after.get(k)]}))
"""


def test_import_is_light_and_a_run_leaves_global_state_alone(write_yaml, tmp_path):
    path = write_yaml(BASE)
    proc = subprocess.run([sys.executable, "-c", GLOBAL_STATE, str(path), str(tmp_path / "out")], capture_output=True,
                          text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "MPLBACKEND": "svg"}, check=True)
    found = json.loads(proc.stdout)
    assert found["light"] == [] and found["callable"]
    assert not found["torch"] and found["figures"] == []  # no torch without training, no pyplot figure
    assert found["backend"] == ["svg", "svg"] and found["rc"] == []  # no matplotlib.use, no seaborn theme left
    assert (tmp_path / "out" / "staleness.png").stat().st_size > 10_000


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python API example, executed as written (from a copy of the scenarios)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shutil.copytree(REPO / "scenarios", tmp_path / "scenarios")
    shutil.copytree(REPO / "sweeps", tmp_path / "sweeps")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 -- the documented example
    assert isinstance(namespace["res"], fedsim.Run) and (tmp_path / "results" / "two-speeds-c20").is_dir()


def test_an_extended_network_round_trips(tmp_path):
    doc = copy.deepcopy(BASE) | {"server": {"service": {"dist": "exponential", "rate": 20.0}},
                                 "server_power": {"busy": 50.0, "idle": 10.0}}
    doc["clients"][0] |= {"uplink": {"dist": "exponential", "mean": 0.2, "station": "fifo"},
                          "power": {"compute": 3.0, "uplink": 1.0, "idle": 0.5}}
    res = fedsim.run(doc)
    assert res.breakdown is not None and set(res.breakdown["source"]) == {"simulated", "analytical"}
    assert "energy_per_update_sim" in res.summary and "uplink_time_sim" in res.clients
    res.save(tmp_path / "x")
    assert (tmp_path / "x" / "time_breakdown.png").stat().st_size > 10_000
    assert fedsim.open_run(tmp_path / "x") == res
