"""Hostile and oversized input: one-line errors (exit 2, nothing written) instead of hangs,
tracebacks or the kernel's OOM killer; code never run from data files."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.resources import estimate, parse_size
from fedsim.scenario import parse_scenario

BASE = {
    "name": "limits", "seed": 1, "concurrency": 3, "horizon": {"updates": 400, "warmup": 40},
    "clients": [{"group": "a", "count": 2, "service": {"dist": "exponential", "rate": 2.0}},
                {"group": "b", "count": 2, "service": {"dist": "exponential", "rate": 1.0}}],
}
TRAINING = {"dataset": {"name": "synthetic", "dim": 5, "classes": 3, "samples": 30},
            "model": "logistic", "algorithm": {"name": "async_sgd", "lr": 0.05, "batch_size": 4},
            "eval": {"every_updates": 100}}


def one_line_error(capsys, *fragments: str) -> str:
    """The captured stderr: exactly one line, starting with 'error:', holding every fragment."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def refused(path: Path, tmp_path: Path, capsys, *fragments: str, command: str = "run", extra: tuple = ()) -> str:
    out = tmp_path / "out"
    args = [command, str(path), *extra] + (["--out", str(out), "--quiet"] if command == "run" else [])
    assert main(args) == 2
    assert not out.exists()
    return one_line_error(capsys, *fragments)


def write(tmp_path: Path, data: bytes | str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# ---------------------------------------------------------------------------------------
# YAML and files


def test_billion_laughs_is_refused_at_once(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 10)}]" for k in range(1, 10)]
    path = write(tmp_path, "\n".join(lines) + "\nname: *a9\n")
    proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "validate", str(path)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "once aliases are expanded" in proc.stderr


@pytest.mark.parametrize(("text", "fragment"), [
    ("name: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested deeper than 64 levels"),
    ("name: x\n" + "".join(f"{'  ' * k}k{k}:\n" for k in range(1_000)), "nested deeper than 64 levels"),
    ("name: x\nseed: " + "9" * 5_000 + "\n", "integer out of range (64 bits) at line 2"),
    ("name: x\nseed: 18446744073709551616\n", "integer out of range (64 bits)"),
    ("name: x\nname: y\n", "duplicate key 'name' at line 2"),
    ("name: !!python/object/apply:os.system ['touch pwned']\n", "could not determine a constructor"),
    ("- a list\n", "must be a mapping"),
    ("", "must be a mapping"),
])
def test_hostile_yaml_is_one_line(text, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(write(tmp_path, text), tmp_path, capsys, fragment)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("data", "fragment"), [
    ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at line 1)"),
    ("name: x\n".encode("utf-16"), "not UTF-8 text"),
    (bytes(range(256)) * 4, "not UTF-8 text"),
    (b"name: x\x00\x01\n", "character 0 is not allowed in YAML (line 1)"),
])
def test_files_that_are_not_utf8_text(data, fragment, tmp_path, capsys):
    refused(write(tmp_path, data), tmp_path, capsys, fragment)


def test_devices_pipes_folders_and_huge_files_are_not_read(tmp_path, capsys):
    refused(Path("/dev/zero"), tmp_path, capsys, "cannot read scenario file: it is a device")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    refused(fifo, tmp_path, capsys, "it is a named pipe")
    refused(tmp_path, tmp_path, capsys, "it is a folder")
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:
        handle.truncate(5 << 20)  # sparse: 5 MiB of zeros, never read
    refused(big, tmp_path, capsys, "5,242,880 bytes, above the limit of 4,194,304")


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda d: Path("/dev/zero"), "it is a device"),
    (lambda d: (os.mkfifo(d / "f.csv"), d / "f.csv")[1], "it is a named pipe"),
    (lambda d: (d / "h.csv").write_text("1e308\n1e308\n") and d / "h.csv", "out of the range of float64"),
    (lambda d: (d / "l.csv").write_bytes(b"0.5\n1.5\n\xe9\n") and d / "l.csv", "not UTF-8 text (byte 0xe9 at line 3)"),
])
def test_empirical_files_that_cannot_be_durations(make, fragment, tmp_path, capsys, write_yaml):
    doc = copy.deepcopy(BASE)
    doc["clients"][1]["service"] = {"dist": "empirical", "file": str(make(tmp_path))}
    refused(write_yaml(doc), tmp_path, capsys, "clients[1].service", fragment)


def test_service_laws_beyond_float64_are_refused(write_yaml, tmp_path, capsys):
    doc = copy.deepcopy(BASE)
    doc["clients"][0]["service"] = {"dist": "exponential", "rate": 5e-324}  # mean = 1/rate overflows
    refused(write_yaml(doc), tmp_path, capsys, "clients[0].service")


def test_sweep_seed_range_is_checked_before_anything_runs(write_yaml, tmp_path, capsys):
    write_yaml(BASE, "base.yaml")
    sweep = {"name": "s", "scenario": "base.yaml", "grid": {"concurrency": [1, 2]}, "seeds": 2}
    out = tmp_path / "sw"
    for seed, fragment in ((2**70, "integer out of range (64 bits)"), (2**63 - 1, "seed: must be an integer between 0 and"),
                           (-1, "seed: must be an integer >= 0")):
        path = write(tmp_path, yaml.safe_dump(sweep | {"seed": seed}), "sweep.yaml")
        assert main(["sweep", str(path), "--out", str(out), "--workers", "1"]) == 2
        one_line_error(capsys, fragment)
        assert not out.exists()
    grid = {"concurrency": list(range(1, 1001)), "clients[0].count": list(range(1, 201))}
    path = write(tmp_path, yaml.safe_dump(sweep | {"grid": grid}), "sweep.yaml")
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    one_line_error(capsys, "grid: 400,000 cells (grid points times seeds), above the limit of 100,000")
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# resources


@pytest.mark.parametrize(("change", "fragment"), [
    ({"clients[0].count": 1_000_000_000}, "clients: 1,000,000,002 clients in all, above the limit of 10,000,000"),
    ({"clients[0].count": 2_000_000}, "memory: the run needs about"),
    ({"concurrency": 1_000_000_000}, "memory: the run needs about"),
    ({"statistics": {"batches": 1_000_000_000}}, "memory: the run needs about"),
    ({"training": TRAINING | {"dataset": {"name": "synthetic", "dim": 100_000_000}}}, "dataset"),
    ({"training": TRAINING | {"algorithm": {"name": "async_sgd", "batch_size": 10**12}}}, "batch sampler"),
])
def test_what_cannot_fit_is_refused_with_estimate_and_limit(change, fragment, write_yaml, tmp_path, capsys):
    doc = copy.deepcopy(BASE)
    for path, value in change.items():
        if path == "clients[0].count":
            doc["clients"][0]["count"] = value
        else:
            doc[path] = value
    scenario = write_yaml(doc)
    line = refused(scenario, tmp_path, capsys, fragment, extra=("--max-memory", "2G"))
    if "memory:" in line:
        assert "above the limit of 2.15 GB (--max-memory)" in line
    refused(scenario, tmp_path, capsys, fragment, command="validate", extra=("--max-memory", "2G"))


def test_the_limit_is_the_machine_or_max_memory(write_yaml, tmp_path, capsys):
    path = write_yaml(BASE)
    refused(path, tmp_path, capsys, "above the limit of 1 MB (--max-memory)", extra=("--max-memory", "1000000"))
    assert main(["validate", str(path), "--max-memory", "4G"]) == 0
    assert "needs about" in capsys.readouterr().out
    refused(path, tmp_path, capsys, "--max-memory: must be a size", extra=("--max-memory", "lots"))
    assert parse_size("512M") == 512 << 20 and parse_size("4GiB") == 4 << 30 and parse_size("1.5k") == 1536


def test_feasible_large_networks_fit():
    """n = 100,000 clients and C = 10,000 tasks, 10^6 updates: about 1 GB (the tracker keeps
    rows per client with updates, not dense histograms; benchmarks/bench_resources.py runs it
    and measures the peak)."""
    doc = {"name": "big", "concurrency": 10_000, "horizon": {"updates": 1_000_000},
           "clients": [{"count": 50_000, "service": {"dist": "exponential", "rate": 1.0}},
                       {"group": "slow", "count": 50_000, "service": {"dist": "exponential", "rate": 0.5}}]}
    found = estimate(parse_scenario(doc))
    assert 0.5e9 < found.total < 2e9
    doc["horizon"]["updates"] = 10**8  # the tracker's tables grow with the updates, up to bounds in n
    assert 2e9 < estimate(parse_scenario(doc)).total < 6e9


# ---------------------------------------------------------------------------------------
# code in data files, user code that fails


class Payload:
    """Pickled, it would create ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_runs_nothing(write_yaml, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"format": 3, "scenario": "x", "state": {"w": Payload(marker)}}, folder / "checkpoint.pt")
    path = write_yaml(BASE | {"training": TRAINING})
    refused(path, tmp_path, capsys, "--resume: cannot read", "as a fedsim checkpoint", extra=("--resume", str(folder)))
    assert not marker.exists()


def test_a_crafted_cifar_file_runs_nothing_and_a_real_one_loads(tmp_path):
    from fedsim.training.datasets import load_dataset

    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    data = load_dataset("cifar10", {"root": "data", "download": False}, 4, rng, tmp_path)
    assert data.x_train.shape == (20, 3, 32, 32) and data.classes == 10
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ScenarioError, match=r"^training\.dataset\.root: .*data_batch_3 is not a cifar10 batch file"):
        load_dataset("cifar10", {"root": "data", "download": False}, 4, rng, tmp_path)
    assert not marker.exists()


def test_a_corrupt_torchvision_file_is_one_line(write_yaml, tmp_path, capsys):
    pytest.importorskip("torchvision")
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(os.urandom(64))
    doc = BASE | {"training": TRAINING | {"dataset": {"name": "mnist", "root": "data"}}}
    refused(write_yaml(doc), tmp_path, capsys, "training.dataset")
    (raw / "train-images-idx3-ubyte").unlink()
    os.mkfifo(raw / "train-images-idx3-ubyte")
    refused(write_yaml(doc), tmp_path, capsys, "training.dataset.root", "it is a named pipe")


FACTORIES = """
import torch
from torch import nn

calls = 0

class Flaky(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.lin = nn.Linear(d, k)
    def forward(self, x):
        global calls
        calls += 1
        if calls > 40:
            raise ValueError("flaky model broke")
        return self.lin(x.flatten(1))

def flaky(shape, classes):
    return Flaky(shape[0], classes)

def raising(shape, classes):
    raise RuntimeError("factory failed")

def wrong_shape(shape, classes):
    return nn.Linear(shape[0], classes + 1)
"""


@pytest.mark.parametrize(("factory", "status", "fragment"), [
    ("raising", 2, "training.model: model '{m}:raising' failed: RuntimeError: factory failed"),
    ("wrong_shape", 2, "training.model: model '{m}:wrong_shape' must map a batch of 2 inputs to logits of shape (2, 3)"),
    ("missing", 2, "training.model: '{m}' has no callable 'missing'"),
    ("flaky", 1, "training.model ({m}:flaky) failed during the run at"),
])
def test_user_model_failures(factory, status, fragment, write_yaml, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    module = f"user_models_{factory}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_yaml(BASE | {"training": TRAINING | {"model": f"{module}:{factory}"}})
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")  # an older run: it must survive
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == status
    line = one_line_error(capsys, fragment.format(m=module))
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    if status == 1:
        assert "ValueError: flaky model broke" in line and "--debug" in line
        sys.modules.pop(module, None)
        assert main(["run", str(path), "--out", str(out), "--quiet", "--debug"]) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: training.model")

