"""Models (built-ins and user factories), flat parameter vectors, and the clients' computation."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedsim.errors import ScenarioError
from fedsim.training.client import BatchSampler, LocalTrainer
from fedsim.training.config import parse_training
from fedsim.training.flat import FlatModel
from fedsim.training.models import build_model


def model(raw, shape=(6,), classes=4):
    spec = parse_training({"model": raw, "dataset": "mnist" if len(shape) == 3 else "synthetic"}).model
    return build_model(spec.name, spec.kwargs, shape, classes)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_builtin_models_have_the_textbook_sizes_and_output_logits():
    assert n_params(model("logistic")) == 6 * 4 + 4
    assert n_params(model({"name": "mlp", "hidden": [5, 3]})) == (6 * 5 + 5) + (5 * 3 + 3) + (3 * 4 + 4)
    cnn = model({"name": "cnn", "channels": [2, 3], "hidden": [7]}, shape=(1, 28, 28), classes=10)
    # 5x5 convs with padding 2 and 2x2 pools: 28 -> 14 -> 7, so 3 * 7 * 7 features reach the dense layer
    assert n_params(cnn) == (1 * 2 * 25 + 2) + (2 * 3 * 25 + 3) + (3 * 49 * 7 + 7) + (7 * 10 + 10)
    assert cnn(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert model("mlp")(torch.zeros(3, 6)).shape == (3, 4)


def test_user_factory_is_imported_and_called_with_the_extra_fields(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "import torch\n"
        "def wide(input_shape, classes, width=2):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_shape[0], width),\n"
        "                               torch.nn.Linear(width, classes))\n"
        "def not_a_module(input_shape, classes):\n"
        "    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert n_params(model({"name": "mynets:wide", "width": 9})) == (6 * 9 + 9) + (9 * 4 + 4)
    with pytest.raises(ScenarioError, match="returned int, not a torch.nn.Module"):
        model("mynets:not_a_module")
    with pytest.raises(ScenarioError, match="has no callable 'missing'"):
        model("mynets:missing")
    with pytest.raises(ScenarioError, match="cannot import 'no_such_pkg.nets'") as err:
        model("no_such_pkg.nets:f")
    assert err.value.path == "training.model"
    with pytest.raises(ScenarioError, match="failed"):
        model({"name": "mynets:wide", "depth": 3})
    sys.modules.pop("mynets", None)


def test_flat_model_computes_on_any_vector_without_copying():
    torch.manual_seed(0)
    module = model({"name": "mlp", "hidden": [5]})
    reference = model({"name": "mlp", "hidden": [5]})
    reference.load_state_dict(module.state_dict())
    flat = FlatModel(module, torch.device("cpu"))
    w = flat.flatten()
    assert flat.size == n_params(reference) and w.shape == (flat.size,)
    other = torch.randn(flat.size)
    flat.bind(flat.views(other))
    other[0] += 1.0  # the module sees the vector itself
    assert module[1].weight.reshape(-1)[0] == other[0]
    flat.bind(flat.views(w))
    x = torch.randn(7, 6)
    torch.testing.assert_close(module(x), reference(x), rtol=0, atol=0)


def test_flat_model_rejects_a_model_that_is_not_float32():
    with pytest.raises(ScenarioError, match="float32"):
        FlatModel(torch.nn.Linear(2, 2).double(), torch.device("cpu"))


def make_trainer(seed: int = 0) -> tuple[LocalTrainer, BatchSampler, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    module = model({"name": "mlp", "hidden": [5]})
    x, y = torch.randn(30, 6), torch.randint(0, 4, (30,))
    sampler = BatchSampler(np.array([0, 10]), np.array([10, 20]), 4, np.random.SeedSequence(seed))
    return LocalTrainer(FlatModel(module, torch.device("cpu")), x, y), sampler, x, y


def test_batches_are_shuffled_epochs_of_the_client_own_samples():
    sampler = BatchSampler(np.array([0, 10]), np.array([10, 3]), 4, np.random.SeedSequence(2))
    first = sampler.next(0, 5).reshape(-1)  # 20 indices: two whole epochs of client 0
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:].tolist()) == list(range(10))
    small = np.concatenate([sampler.next(1) for _ in range(3)]).reshape(-1)  # client 1 has 3 samples, batches of 4
    assert sorted(small.tolist()) == [10] * 4 + [11] * 4 + [12] * 4


def test_client_streams_are_children_of_the_batches_seed_and_ignore_the_draw_order():
    """Client i's permutations come from child i of the seed sequence; a client's k-th batch is
    the same however the clients' draws interleave and however many batches a draw takes."""
    seed = np.random.SeedSequence(5)
    sizes = np.array([7, 5, 9])
    a = BatchSampler(np.array([0, 7, 12]), sizes, 3, seed)
    b = BatchSampler(np.array([0, 7, 12]), sizes, 3, seed)
    first = a.next(1, 200).reshape(-1)
    child = np.random.default_rng(np.random.SeedSequence(5).spawn(3)[1])
    epochs = np.concatenate([child.permutation(5) for _ in range(120)]) + 7
    assert first.tolist() == epochs[:600].tolist()
    for _ in range(150):  # b draws client 1 one batch at a time, interleaved with the others
        b.next(0), b.next(2, 2)
    interleaved = np.concatenate([np.concatenate([b.next(1), b.next(0)])[:1] for _ in range(200)]).reshape(-1)
    assert np.array_equal(interleaved, first)


def test_gradient_is_the_autograd_gradient_of_the_batch_at_the_given_version():
    trainer, sampler, x, y = make_trainer()
    flat = trainer.flat
    version = flat.flatten() + 0.1 * torch.randn(flat.size)
    idx = torch.from_numpy(sampler.next(1)[0])
    g = torch.cat([t.reshape(-1) for t in trainer.gradient(flat.views(version), idx)])
    reference = model({"name": "mlp", "hidden": [5]})
    with torch.no_grad():
        for p, v in zip(reference.parameters(), flat.views(version)):
            p.copy_(v)
    F.cross_entropy(reference(x[idx]), y[idx]).backward()
    torch.testing.assert_close(g, torch.cat([p.grad.reshape(-1) for p in reference.parameters()]))


def test_local_model_runs_k_proximal_sgd_steps_from_the_start():
    trainer, sampler, _, _ = make_trainer(1)
    start = trainer.flat.flatten()
    lr, prox = 0.1, 0.5
    batches = sampler.next(0, 3)
    out = trainer.local_model(start, batches, lr, prox=prox)
    x = start.clone()
    for k in range(3):
        g = torch.cat([t.reshape(-1) for t in trainer.gradient(trainer.flat.views(x), batches[k])])
        x = x - lr * (g + prox * (x - start))
    torch.testing.assert_close(out, x)
    assert not torch.equal(out, start)
