"""Batched client work: the kernels against autograd, the batched path against the same kernel
one task at a time (bit for bit, every rule, float32 and float64), per-client batch streams,
what ``training.batched`` resolves to, and resuming a batched run."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedsim.cli import main
from fedsim.run import simulate
from fedsim.scenario import parse_scenario
from fedsim.training.batching import BatchedClients
from fedsim.training.flat import FlatModel
from fedsim.training.kernels import ConvKernel, DenseKernel, VmapKernel, make_kernel
from fedsim.training.models import build_model
from fedsim.training.session import TrainingSession

NETS = {  # model, input shape, kernel
    "logistic": ("logistic", {}, (6,), DenseKernel),
    "mlp": ("mlp", {"hidden": (5, 7)}, (6,), DenseKernel),
    "cnn": ("cnn", {"channels": (2, 3), "hidden": (7,)}, (1, 12, 12), ConvKernel),
    "vmap": ("mlp", {"hidden": (5,)}, (6,), VmapKernel),
}


def net(key: str, dtype: torch.dtype):
    name, params, shape, kernel = NETS[key]
    torch.manual_seed(3)
    flat = FlatModel(build_model(name, params, shape, 4), torch.device("cpu"), dtype=dtype)
    x, y = torch.randn(40, *shape, dtype=dtype), torch.randint(0, 4, (40,))
    W = flat.flatten().repeat(5, 1) + 0.3 * torch.randn(5, flat.size, dtype=dtype)
    return flat, kernel(flat, x, y), x, y, W, torch.randint(0, 40, (5, 8))


@pytest.mark.parametrize("key", sorted(NETS))
def test_kernel_gradients_are_autograd_gradients_in_float64(key):
    flat, kernel, x, y, W, idx = net(key, torch.float64)
    G = kernel(W, idx)
    for t in range(len(W)):
        for p, v in zip(flat.params, flat.views(W[t].clone())):
            p.data, p.grad = v, None
        F.cross_entropy(flat.module(x[idx[t]]), y[idx[t]]).backward()
        reference = torch.cat([p.grad.reshape(-1) for p in flat.params])
        assert (G[t] - reference).abs().max() <= 1e-10 * max(1.0, float(reference.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("key", ["logistic", "mlp", "cnn"])
def test_a_task_gets_the_same_bits_alone_or_among_others(key, dtype):
    _, kernel, _, _, W, idx = net(key, dtype)
    G = kernel(W, idx)
    for t in range(len(W)):
        assert torch.equal(kernel(W[t:t + 1].clone(), idx[t:t + 1])[0], G[t])
    assert torch.equal(kernel(W[1:4].clone(), idx[1:4]), G[1:4])


# ---------------------------------------------------------------------------------------
# whole runs


def scenario_doc(algorithm: dict, *, concurrency: int = 6, updates: int = 240, model="logistic",
                 routing: str = "weights", rates=(3.0, 0.7), batched: bool | str = True, weight: float = 2.0) -> dict:
    return {
        "name": "batched", "seed": 4, "concurrency": concurrency, "horizon": {"updates": updates}, "routing": routing,
        "clients": [{"group": "fast", "count": 3, "service": {"dist": "exponential", "rate": rates[0]}}
                    | ({"routing_weight": weight} if routing == "weights" else {}),
                    {"group": "slow", "count": 3, "service": {"dist": "lognormal", "mean": 1 / rates[1], "cv": 1.5}}],
        "training": {"dataset": {"name": "synthetic", "dim": 6, "classes": 3, "samples": 30},
                     "model": model, "algorithm": algorithm, "eval": {"every_updates": updates},
                     "batched": batched},
    }


def train(doc: dict, dtype: torch.dtype = torch.float32, max_window: int | None = None) -> TrainingSession:
    """Run the scenario; ``max_window=1`` computes every task alone with the batched kernel."""
    scenario = parse_scenario(doc)
    session = TrainingSession(scenario, dtype=dtype)
    if max_window is not None:
        assert isinstance(session.choice.clients, BatchedClients)
        session.choice.clients.max_window = max_window
    if session.synchronous:
        session.run_rounds()
    else:
        simulate(scenario, observers=[session.observer])
    session.finish()
    return session


ALGORITHMS = [
    {"name": "generalized_async_sgd", "lr": 0.1},
    {"name": "generalized_async_sgd", "lr": 0.1, "local_steps": 3},
    {"name": "async_sgd", "lr": 0.1},
    {"name": "fedasync", "local_steps": 2, "rho": 0.3, "staleness": "hinge", "a": 2, "b": 1},
    {"name": "fedbuff", "buffer_size": 3, "local_steps": 2},
    {"name": "fedavg", "clients_per_round": 3, "local_steps": 2},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: f"{a['name']}-K{a.get('local_steps', 1)}")
def test_batched_path_equals_the_same_kernel_task_by_task(algorithm, dtype):
    model = {"name": "mlp", "hidden": [5]}
    batched = train(scenario_doc(algorithm, model=model), dtype)
    alone = train(scenario_doc(algorithm, model=model), dtype, max_window=1)
    assert batched.choice.kernel == "dense" and batched.w.dtype == dtype
    assert batched.mean_window > 1.5  # tasks did share calls
    assert torch.equal(batched.w, alone.w)
    assert batched.record.rows[-1][3:] == alone.record.rows[-1][3:]
    if dtype == torch.float32:  # autograd rounds differently: close, not equal (the comparison can fail)
        autograd = train(scenario_doc(algorithm, model=model, batched=False), dtype)
        assert not torch.equal(autograd.w, batched.w)
        torch.testing.assert_close(autograd.w, batched.w, rtol=1e-4, atol=1e-5)


def test_a_factory_model_is_batched_by_vmap_with_the_same_bits_as_alone(tmp_path, monkeypatch):
    (tmp_path / "batched_nets.py").write_text(
        "import torch\n"
        "def net(input_shape, classes):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(input_shape[0], 5), torch.nn.Tanh(),\n"
        "                               torch.nn.Linear(5, classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "batched_nets", raising=False)
    doc = scenario_doc({"name": "fedbuff", "buffer_size": 2}, model="batched_nets:net", updates=120)
    batched, alone = train(doc), train(doc, max_window=1)
    doc["training"]["batched"] = False
    autograd = train(doc)
    assert batched.choice.kernel == "vmap" and batched.mean_window > 1.5
    assert torch.equal(batched.w, alone.w)
    torch.testing.assert_close(batched.w, autograd.w, rtol=1e-4, atol=1e-5)


def test_local_steps_of_the_batched_path_are_the_sequential_local_steps():
    """Against the sequential path's own code (autograd), in float64 the two agree to rounding."""
    algorithm = {"name": "fedasync", "local_steps": 3, "rho": 0.2}
    batched = train(scenario_doc(algorithm), torch.float64)
    autograd = train(scenario_doc(algorithm, batched=False), torch.float64)
    assert batched.mean_window > 1.5 and autograd.choice.kernel == "autograd"
    torch.testing.assert_close(batched.w, autograd.w, rtol=1e-12, atol=1e-12)


class BatchLog:
    """Records each client's mini-batches in the order that client drew them."""

    def __init__(self, session: TrainingSession) -> None:
        self.drawn: dict[int, list[np.ndarray]] = {}
        sampler = session.workload.sampler
        draw = sampler.next

        def spy(client: int, count: int = 1) -> np.ndarray:
            batches = draw(client, count)
            self.drawn.setdefault(client, []).extend(batches.copy())
            return batches

        sampler.next = spy
        self.order: list[int] = []
        on_complete = session.observer.on_complete

        def complete(task, update, now):
            self.order.append(task.client)
            on_complete(task, update, now)

        session.observer.on_complete = complete


@pytest.mark.parametrize("change", [{"concurrency": 2}, {"rates": (0.8, 3.0)}, {"weight": 0.25},
                                    {"routing": "uniform"}])
def test_a_client_k_th_batch_does_not_depend_on_routing_concurrency_or_service_laws(change):
    algorithm = {"name": "generalized_async_sgd", "batch_size": 7}
    logs = []
    for doc in (scenario_doc(algorithm), scenario_doc(algorithm, **change)):
        scenario = parse_scenario(doc)
        session = TrainingSession(scenario)
        logs.append(BatchLog(session))
        simulate(scenario, observers=[session.observer])
    base, other = logs
    assert base.order != other.order  # the clients draw in another order...
    compared = 0
    for client in range(6):
        a, b = base.drawn[client], other.drawn[client]
        k = min(len(a), len(b))
        assert k >= 5
        assert all(np.array_equal(x, y) for x, y in zip(a[:k], b[:k]))  # ...and each gets the same batches
        compared += k
    assert compared >= 100


def choose(model: str | dict, batched: bool | str = "auto", window: float = 4.0, module=None):
    from fedsim.training.batching import choose_clients
    from fedsim.training.client import LocalTrainer
    from fedsim.training.config import parse_training

    config = parse_training({"model": model, "batched": batched,
                             "dataset": "mnist" if model == "cnn" else "synthetic"})
    torch.manual_seed(0)
    if module is None:
        shape = (1, 8, 8) if model == "cnn" else (6,)
        params = {"channels": (2,), "hidden": (3,)} if model == "cnn" else config.model.kwargs
        module = build_model(config.model.name, params, shape, 3)
    flat = FlatModel(module, torch.device("cpu"))
    x = torch.randn(10, *((1, 8, 8) if model == "cnn" else (6,)))
    return choose_clients(config, LocalTrainer(flat, x, torch.randint(0, 3, (10,))), flat.flatten(), window)


class Noisy(torch.nn.Module):
    """A model vmap cannot batch (dropout draws random numbers)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer, self.drop = torch.nn.Linear(6, 3), torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.layer(x))


def test_batched_choice_follows_the_model_the_device_and_the_window():
    assert (choose("logistic", window=1.0).kernel, choose("mlp").kernel) == ("dense", "dense")  # pays even alone
    assert choose("mlp", batched=False).kernel == "autograd"
    cnn = choose("cnn")  # CPU convolutions are bound by arithmetic: auto keeps them sequential
    assert cnn.kernel == "autograd" and "break-even inf on cpu" in cnn.reason
    assert choose("cnn", batched=True).kernel == "cnn"
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    assert choose("my.nets:plain", module=plain, window=9.0).kernel == "vmap"
    small = choose("my.nets:plain", module=plain, window=2.0)
    assert small.kernel == "autograd" and "expected window 2.0 is below the vmap kernel's break-even 8" in small.reason
    state = torch.get_rng_state()
    noisy = choose("my.nets:noisy", batched=True, module=Noisy())
    assert not noisy.batched and noisy.reason.startswith("torch.func.vmap cannot batch this model")
    assert torch.equal(torch.get_rng_state(), state)  # the trial drew nothing from torch's generator


def test_summary_records_the_path_and_the_mean_window(write_yaml, tmp_path):
    doc = scenario_doc({"name": "fedbuff", "buffer_size": 2}, concurrency=12, updates=300, batched="auto")
    out = tmp_path / "out"
    assert main(["run", str(write_yaml(doc)), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["batched"], summary["client_kernel"], summary["batched_reason"]) == (True, "dense", None)
    assert summary["scenario"]["training"]["batched"] == "auto"
    assert 1.5 < summary["mean_window"] < 12
    doc["training"]["batched"] = False
    assert main(["run", str(write_yaml(doc, "seq.yaml")), "--out", str(tmp_path / "seq"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "seq" / "summary.json").read_text())
    assert (summary["batched"], summary["client_kernel"], summary["mean_window"]) == (False, "autograd", 1.0)


@pytest.mark.parametrize("batched", [True, False])
def test_resume_is_exact_on_both_paths(write_yaml, tmp_path, batched):
    doc = scenario_doc({"name": "fedbuff", "buffer_size": 3, "local_steps": 2}, concurrency=8, updates=300,
                       batched=batched)
    path = write_yaml(doc)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(["run", str(path), "--out", str(full), "--quiet", "--checkpoint-every", "170"]) == 0
    state = torch.load(full / "checkpoint.pt", weights_only=False)["state"]
    assert bool(state["results"]) == batched  # batched: results of in-flight tasks wait in the checkpoint
    assert main(["run", str(path), "--resume", str(full), "--out", str(resumed), "--quiet"]) == 0
    a, b = torch.load(full / "model.pt"), torch.load(resumed / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
