"""The learning problem of a scenario, built once: client data, model, trainer, evaluator.

Randomness: the scenario's ``training`` stream is split with ``SeedSequence.spawn`` into
``data`` (synthetic generation), ``partition``, ``init`` (model initialisation), ``batches``
(the clients' mini-batches: child i of it is client i's stream) and ``torch`` (the global
torch generator, for stochastic layers).
None of them touches the ``service`` and ``routing`` streams, so the queueing sample path is
the same with and without training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedsim.errors import ScenarioError
from fedsim.scenario import Scenario, Streams
from fedsim.training.client import BatchSampler, LocalTrainer
from fedsim.training.config import TrainingConfig
from fedsim.training.datasets import load_dataset
from fedsim.training.evaluate import Evaluator
from fedsim.training.flat import FlatModel
from fedsim.training.models import build_model
from fedsim.training.partition import split

SUBSTREAMS = ("data", "partition", "init", "batches", "torch")


def training_seeds(seed: int) -> dict[str, np.random.SeedSequence]:
    """The training sub-streams of a scenario seed, by purpose."""
    return dict(zip(SUBSTREAMS, Streams(seed).seed_sequence("training").spawn(len(SUBSTREAMS))))


def resolve_device(name: str, path: str = "training.device") -> torch.device:
    """``cpu``, ``cuda`` (an error when torch sees no GPU) or ``auto`` (cuda when available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ScenarioError(path, "cuda requested but torch sees no CUDA device; use cpu or auto")
    return torch.device(name)


@dataclass
class Workload:
    """Everything the update rules compute with.

    ``w0`` is the initial model (flat vector, initialised from the ``init`` stream); ``sizes``
    the number of training samples of each client; ``torch_seed`` seeds torch's generator.
    """

    config: TrainingConfig
    input_shape: tuple[int, ...]
    classes: int
    sizes: np.ndarray
    flat: FlatModel
    w0: torch.Tensor
    sampler: BatchSampler
    trainer: LocalTrainer
    evaluator: Evaluator
    device: torch.device
    torch_seed: int


@contextmanager
def stage(path: str, what: str) -> Iterator[None]:
    """Turn an unexpected failure of ``what`` (a corrupt dataset file, a model factory that
    raises) into a one-line ScenarioError on the field ``path`` that names it."""
    try:
        yield
    except ScenarioError:
        raise
    except MemoryError:
        raise ScenarioError(path, f"{what} ran out of memory") from None
    except Exception as exc:  # noqa: BLE001 -- any failure here is the input's
        text = " ".join(str(exc).split()) or "no message"
        raise ScenarioError(path, f"{what} failed: {type(exc).__name__}: {text[:300]}") from None


def build_workload(scenario: Scenario, dtype: torch.dtype = torch.float32) -> Workload:
    """Load and split the data, build the model and the clients' trainer for ``scenario``
    (``dtype`` float64: model and inputs in double precision, for numerical checks)."""
    cfg: TrainingConfig = scenario.training
    n = scenario.n_clients
    seeds = training_seeds(scenario.seed)
    device = resolve_device(cfg.device)
    with stage("training.dataset", f"loading dataset {cfg.dataset.name!r}"):
        data = load_dataset(cfg.dataset.name, cfg.dataset.kwargs, n, np.random.default_rng(seeds["data"]),
                            cfg.base_dir)
    value = cfg.partition.kwargs.get("value")
    with stage("training.partition", f"partition {cfg.partition.name!r}"):
        parts = split(cfg.partition.name, value, data.y_train, n, np.random.default_rng(seeds["partition"]),
                      data.owner)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    order = np.concatenate(parts)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    x_train = torch.from_numpy(np.ascontiguousarray(data.x_train[order])).to(device, dtype)
    y_train = torch.from_numpy(data.y_train[order]).to(device)
    client_of = torch.from_numpy(np.repeat(np.arange(n), sizes)).to(device)
    x_test = torch.from_numpy(data.x_test).to(device, dtype)
    y_test = torch.from_numpy(data.y_test).to(device)
    init_seed = int(seeds["init"].generate_state(1, np.uint64)[0] >> np.uint64(1))
    with torch.random.fork_rng(devices=[]), stage("training.model", f"model {cfg.model.name!r}"):
        torch.manual_seed(init_seed)
        module = build_model(cfg.model.name, cfg.model.kwargs, data.input_shape, data.classes,
                             base_dir=cfg.base_dir)
    flat = FlatModel(module, device, dtype=dtype)
    w0 = flat.flatten()
    sampler = BatchSampler(offsets, sizes, cfg.algorithm["batch_size"], seeds["batches"])
    trainer = LocalTrainer(flat, x_train, y_train)
    evaluator = Evaluator(flat, x_train, y_train, client_of, torch.from_numpy(sizes).to(device), x_test, y_test)
    torch_seed = int(seeds["torch"].generate_state(1, np.uint64)[0] >> np.uint64(1))
    return Workload(cfg, data.input_shape, data.classes, sizes, flat, w0, sampler, trainer, evaluator, device, torch_seed)


def check_model(workload: Workload) -> int:
    """Run the model on two training samples (no gradient): it must give float logits of
    shape (2, classes). A factory's model that raises, or gives something else, is a
    ScenarioError on ``training.model`` before any run starts. Returns the number of values
    the forward pass produces per sample (its activations, for the resource estimate)."""
    name = workload.config.model.name
    flat, x = workload.flat, workload.evaluator.x_train[:2]
    counted = [0]

    def count(_module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            counted[0] += output.numel()

    leaves = [m for m in flat.module.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with stage("training.model", f"model {name!r} on a batch of shape {tuple(x.shape)}"), torch.no_grad():
            flat.bind(flat.views(workload.w0))
            out = flat.module(x)
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), workload.classes) \
            or not out.is_floating_point():
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ScenarioError("training.model", f"model {name!r} must map a batch of {len(x)} inputs to logits of "
                            f"shape ({len(x)}, {workload.classes}); got {got}")
    return counted[0] // max(1, len(x))
