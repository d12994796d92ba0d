"""The training: section: defaults, normalisation, located errors, no torch at validation time."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

from conftest import REPO
from fedsim.errors import ScenarioError
from fedsim.scenario import load_scenario, parse_scenario
from fedsim.training import algorithms
from fedsim.training.algorithms import ALGORITHMS
from fedsim.training.config import parse_training

NETWORK = {
    "name": "cfg", "seed": 1, "concurrency": 2, "horizon": {"updates": 100},
    "clients": [{"group": "a", "count": 3, "service": {"dist": "exponential", "rate": 1.0}}],
}


def test_defaults_are_filled_in_and_to_dict_round_trips():
    cfg = parse_training({})
    d = cfg.to_dict()
    assert d["dataset"]["name"] == "synthetic" and d["dataset"]["dim"] == 60 and d["dataset"]["classes"] == 10
    assert d["partition"] == "natural"
    assert d["model"] == {"name": "mlp", "hidden": [200]}
    assert d["algorithm"] == {"name": "generalized_async_sgd", "lr": 0.05, "batch_size": 32, "local_steps": 1}
    assert d["eval"] == {"every_updates": 500} and d["device"] == "cpu" and d["threads"] == 1
    assert parse_training(d) == cfg


@pytest.mark.parametrize("raw", [
    {"dataset": {"name": "mnist", "root": "d"}, "partition": {"dirichlet": 0.3}, "model": "cnn"},
    {"dataset": {"name": "emnist", "split": "letters"}, "partition": {"shards_per_client": 2},
     "model": {"name": "cnn", "channels": [4], "hidden": [8, 8]}},
    {"dataset": "synthetic", "partition": "iid", "model": "logistic",
     "algorithm": {"name": "fedasync", "staleness": "hinge", "a": 10, "b": 4, "rho": 0.01}},
    {"algorithm": {"name": "fedbuff", "buffer_size": 3, "server_lr": 0.5, "local_steps": 2}},
    {"algorithm": {"name": "fedavg", "clients_per_round": 2}, "model": {"name": "my.pkg:net", "width": 3}},
])
def test_valid_sections_normalise_to_a_fixed_point(raw):
    cfg = parse_training(raw)
    again = parse_training(cfg.to_dict())
    assert again == cfg and again.to_dict() == cfg.to_dict()


def test_fedavg_is_synchronous_and_the_others_are_not():
    assert parse_training({"algorithm": {"name": "fedavg"}}).synchronous
    for name in ("generalized_async_sgd", "async_sgd", "fedasync", "fedbuff"):
        assert not parse_training({"algorithm": name}).synchronous


@pytest.mark.parametrize(("raw", "path", "fragment"), [
    ({"algorithm": {"lr": -1}}, "training.algorithm.lr", "positive"),
    ({"algorithm": {"lr": "fast"}}, "training.algorithm.lr", "finite number"),
    ({"algorithm": {"name": "sgd"}}, "training.algorithm.name", "allowed: async_sgd, fedasync, fedavg, fedbuff"),
    ({"algorithm": {"batch_size": 0}}, "training.algorithm.batch_size", ">= 1"),
    ({"algorithm": {"buffer_size": 3}}, "training.algorithm.buffer_size", "unknown field"),
    ({"algorithm": {"name": "fedasync", "staleness": "linear"}}, "training.algorithm.staleness", "hinge"),
    ({"algorithm": {"name": "fedasync", "alpha": 0}}, "training.algorithm.alpha", "(0.0, 1.0]"),
    ({"dataset": "imagenet"}, "training.dataset", "allowed: cifar10, cifar100, emnist"),
    ({"dataset": {"name": "synthetic", "dim": 0}}, "training.dataset.dim", ">= 1"),
    ({"dataset": {"name": "synthetic", "root": "x"}}, "training.dataset.root", "unknown field"),
    ({"dataset": {"name": "mnist", "download": "yes"}}, "training.dataset.download", "true or false"),
    ({"dataset": {"name": "emnist", "split": "x"}}, "training.dataset.split", "balanced"),
    ({"partition": "random"}, "training.partition", "allowed: dirichlet, iid, natural, shards_per_client"),
    ({"partition": {"dirichlet": -1}}, "training.partition.dirichlet", "between"),
    ({"partition": {"shards_per_client": 1.5}}, "training.partition.shards_per_client", "integer"),
    ({"partition": "dirichlet"}, "training.partition", "needs a value"),
    ({"partition": {"iid": 3}}, "training.partition.iid", "takes no value"),
    ({"dataset": "cifar10", "partition": "natural"}, "training.partition", "synthetic"),
    ({"model": "cnn"}, "training.model", "image inputs"),
    ({"model": "resnet"}, "training.model", "package.module:function"),
    ({"model": {"name": "mlp", "hidden": [0]}}, "training.model.hidden[0]", ">= 1"),
    ({"model": {"name": "mlp", "depth": 2}}, "training.model.depth", "unknown field"),
    ({"model": {"name": "a.b:c", "opts": {"x": 1}}}, "training.model.opts", "numbers, strings or lists"),
    ({"eval": {"every_updates": 0}}, "training.eval.every_updates", ">= 1"),
    ({"eval": {"every": 10}}, "training.eval.every", "unknown field"),
    ({"device": "tpu"}, "training.device", "cpu, cuda, auto"),
    ({"threads": 0}, "training.threads", ">= 1"),
    ({"optimizer": "adam"}, "training.optimizer", "unknown field"),
    ("mlp", "training", "must be a mapping"),
])
def test_bad_fields_are_located(raw, path, fragment):
    with pytest.raises(ScenarioError) as err:
        parse_training(raw)
    assert err.value.path == path, str(err.value)
    assert fragment in err.value.message
    assert "\n" not in str(err.value)


def test_scenario_carries_the_training_section():
    scenario = parse_scenario(NETWORK | {"training": {"model": "logistic"}})
    assert scenario.to_dict()["training"]["model"] == {"name": "logistic"}
    assert parse_scenario(NETWORK).training is None
    with pytest.raises(ScenarioError, match=r"^training\.algorithm\.lr:"):
        parse_scenario(NETWORK | {"training": {"algorithm": {"lr": 0}}})


def test_validating_a_training_scenario_does_not_import_torch():
    doc = NETWORK | {"training": {"dataset": "mnist", "model": "cnn", "algorithm": {"name": "fedbuff"}}}
    code = (
        f"import sys; from fedsim.scenario import parse_scenario; parse_scenario({doc!r});"
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_queueing_path_imports_neither_torch_nor_matplotlib_nor_scipy_stats():
    """What `fedsim run` loads before it simulates: the heavy libraries wait until they are needed
    (torch for training, matplotlib when a figure is written)."""
    code = (
        "import sys; import fedsim.cli, fedsim.run, fedsim.engine, fedsim.tracking, fedsim.scenario, fedsim.report;"
        "heavy = [m for m in ('torch', 'matplotlib', 'seaborn', 'scipy.stats') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_run_without_training_writes_its_folder_without_torch_or_scipy_stats(write_yaml, tmp_path):
    path = write_yaml(NETWORK | {"horizon": {"updates": 2000}})
    code = (
        f"import sys; from fedsim.cli import main; assert main(['run', {str(path)!r}, '--out', "
        f"{str(tmp_path / 'out')!r}, '--quiet']) == 0;"
        "heavy = [m for m in ('torch', 'seaborn', 'scipy.stats') if m in sys.modules];"
        "assert not heavy and 'matplotlib' in sys.modules, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "staleness.png").stat().st_size > 10_000


def test_every_module_of_the_algorithms_package_registers_its_rule():
    """Adding a rule is one file: each module (but base) defines a registered rule, found by name."""
    modules = [m.name for m in pkgutil.iter_modules(algorithms.__path__) if m.name != "base"]
    assert sorted(modules) == sorted(ALGORITHMS)
    for name in modules:
        module = importlib.import_module(f"fedsim.training.algorithms.{name}")
        assert ALGORITHMS[name].__module__ == module.__name__


@pytest.mark.parametrize("path", sorted((REPO / "scenarios").glob("train_*.yaml")), ids=lambda p: p.name)
def test_shipped_training_scenarios_are_valid(path):
    scenario = load_scenario(path)
    assert scenario.training is not None
