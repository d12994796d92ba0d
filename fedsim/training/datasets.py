"""Datasets: the synthetic federated benchmark, and torchvision image sets read from disk.

In a scenario::

    dataset: {name: synthetic, alpha: 1.0, beta: 1.0, dim: 60, classes: 10}   # the default
    dataset: {name: mnist, root: data, download: false}
    # mnist | fashion_mnist | kmnist | emnist (split: balanced) | cifar10 | cifar100

``synthetic`` is generated from the scenario seed and needs no file. The image sets are read
from ``root`` (relative to the scenario file's folder) in torchvision's on-disk layout; with
``download: false`` (the default) nothing is fetched and a missing set is a one-line
:class:`~fedsim.errors.ScenarioError` saying where the files go.

A loader returns a :class:`RawData` of numpy arrays: float32 inputs (images scaled to [0, 1] and
standardised per channel with the training set's mean and standard deviation), int64 labels,
and for synthetic data the client that owns each training sample. This module imports
torchvision only inside the image loaders.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import ScenarioError
from fedsim.fields import Field, between, boolean, choice, integer, nonnegative, string
from fedsim.inputs import check_regular_file


@dataclass(frozen=True)
class RawData:
    """A dataset in memory: train and test arrays, the input shape and the number of classes.

    ``owner[k]`` is the client that generated training sample k (synthetic data), else None.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    classes: int
    owner: np.ndarray | None = None


Loader = Callable[[dict[str, Any], int, np.random.Generator, Path | None, str], RawData]


@dataclass(frozen=True)
class DatasetKind:
    """A registered dataset: its fields and its loader ``load(params, n_clients, rng, base_dir, path)``."""

    name: str
    fields: dict[str, Field]
    load: Loader
    images: bool  # inputs are (channels, height, width) images (a cnn can read them)
    natural: bool = False  # the data come with their clients (``partition: natural`` is possible)


DATASETS: dict[str, DatasetKind] = {}


def register_dataset(name: str, fields: dict[str, Field], *, images: bool, natural: bool = False
                     ) -> Callable[[Loader], Loader]:
    def decorate(load: Loader) -> Loader:
        DATASETS[name] = DatasetKind(name, fields, load, images, natural)
        return load

    return decorate


# ---------------------------------------------------------------------------------------
# Synthetic(alpha, beta)

SYNTHETIC_FIELDS = {
    "alpha": Field(1.0, nonnegative, "spread of the client models around a shared one"),
    "beta": Field(1.0, nonnegative, "spread of the client input means"),
    "dim": Field(60, integer(1), "input dimension"),
    "classes": Field(10, integer(2), "number of classes"),
    "samples": Field(100, integer(2), "mean number of samples per client (train and test)"),
    "size_sigma": Field(1.0, between(0.0, 5.0), "lognormal shape of the client sizes; 0: equal sizes"),
    "iid": Field(False, boolean, "one shared model and input law for all clients (Synthetic-IID)"),
    "test_fraction": Field(0.2, between(0.0, 0.9, open_low=True), "share of each client's samples held out"),
}


@register_dataset("synthetic", SYNTHETIC_FIELDS, images=False, natural=True)
def synthetic(params: dict[str, Any], n_clients: int, rng: np.random.Generator, base_dir: Path | None,
              path: str) -> RawData:
    """Synthetic(alpha, beta) of Shamir et al. (2014) as set up by LEAF and FedProx (Li et al. 2020, §5.1).

    For client k: u_k ~ N(0, alpha), B_k ~ N(0, beta) (alpha, beta are standard deviations, as
    in the reference code); W_k ~ N(u_k, 1) (dim x classes), b_k ~ N(u_k, 1); v_k ~ N(B_k, 1)
    (dim); inputs x ~ N(v_k, Sigma) with Sigma diagonal, Sigma_jj = j^(-1.2); label
    y = argmax(x W_k + b_k). alpha sets how much the client models differ, beta how much the
    client input laws differ. ``iid``: W, b ~ N(0, 1) shared by all and x ~ N(0, Sigma).
    Client sizes: m_k = max(2, round(samples * exp(sigma Z - sigma^2 / 2))), Z ~ N(0, 1) (a
    lognormal power law with mean ``samples``, as LEAF draws them); a fraction
    ``test_fraction`` of each client's samples (at least one is kept for training) goes to
    the pooled test set.
    """
    dim, classes, sigma = params["dim"], params["classes"], params["size_sigma"]
    sizes = np.maximum(2, np.rint(params["samples"] * np.exp(sigma * rng.standard_normal(n_clients) - sigma**2 / 2)))
    sizes = sizes.astype(np.int64)
    scale = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt of Sigma_jj
    if params["iid"]:
        shared = (rng.standard_normal((dim, classes)), rng.standard_normal(classes))
    xs_tr, ys_tr, own, xs_te, ys_te = [], [], [], [], []
    for k, m in enumerate(sizes):
        if params["iid"]:
            w, b = shared
            mean = np.zeros(dim)
        else:
            u, big_b = rng.normal(0.0, params["alpha"]), rng.normal(0.0, params["beta"])
            w, b = rng.normal(u, 1.0, (dim, classes)), rng.normal(u, 1.0, classes)
            mean = rng.normal(big_b, 1.0, dim)
        x = mean + rng.standard_normal((m, dim)) * scale
        y = np.argmax(x @ w + b, axis=1)
        n_test = min(int(params["test_fraction"] * m), m - 1)
        xs_tr.append(x[n_test:]), ys_tr.append(y[n_test:]), own.append(np.full(m - n_test, k))
        xs_te.append(x[:n_test]), ys_te.append(y[:n_test])
    return RawData(
        x_train=np.concatenate(xs_tr).astype(np.float32), y_train=np.concatenate(ys_tr).astype(np.int64),
        x_test=np.concatenate(xs_te).astype(np.float32), y_test=np.concatenate(ys_te).astype(np.int64),
        input_shape=(dim,), classes=classes, owner=np.concatenate(own),
    )


# ---------------------------------------------------------------------------------------
# torchvision image sets

IMAGE_FIELDS = {
    "root": Field("data", string, "folder holding the dataset (relative to the scenario file)"),
    "download": Field(False, boolean, "fetch the files with torchvision when missing (needs a network)"),
}
EMNIST_SPLITS = ("balanced", "byclass", "bymerge", "digits", "letters", "mnist")

# name -> (torchvision class, folder under root, the files torchvision expects there)
MNIST_LIKE = {
    "mnist": ("MNIST", "MNIST/raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
              "t10k-labels-idx1-ubyte"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                      "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"),
    "kmnist": ("KMNIST", "KMNIST/raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
               "t10k-labels-idx1-ubyte"),
    "emnist": ("EMNIST", "EMNIST/raw", "emnist-<split>-train-images-idx3-ubyte, emnist-<split>-train-labels-idx1-ubyte,"
               " emnist-<split>-test-images-idx3-ubyte, emnist-<split>-test-labels-idx1-ubyte"),
}
# name -> (torchvision class, folder under root, train files, test files, label key, classes)
CIFAR = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", [f"data_batch_{k}" for k in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def resolve_root(root: str, base_dir: Path | None) -> Path:
    location = Path(root).expanduser()
    return location if location.is_absolute() or base_dir is None else Path(base_dir) / location


# name -> (samples, train and test together; input shape; classes), for the resource estimate
IMAGE_SHAPES = {
    "mnist": (70_000, (1, 28, 28), 10), "fashion_mnist": (70_000, (1, 28, 28), 10),
    "kmnist": (70_000, (1, 28, 28), 10), "cifar10": (60_000, (3, 32, 32), 10),
    "cifar100": (60_000, (3, 32, 32), 100),
}
EMNIST_SHAPES = {"balanced": (131_600, 47), "byclass": (814_255, 62), "bymerge": (814_255, 47),
                 "digits": (280_000, 10), "letters": (145_600, 37), "mnist": (70_000, 10)}
MAX_FILE_BYTES = 4 << 30
"""Largest dataset file read (4 GiB)."""


def dataset_shape(name: str, params: dict[str, Any], n_clients: int) -> tuple[int, tuple[int, ...], int] | None:
    """(samples, input shape, classes) of a built-in dataset without loading it (None for a
    dataset registered elsewhere): what the resource estimate needs."""
    if name == "synthetic":
        return n_clients * params["samples"], (params["dim"],), params["classes"]
    if name == "emnist":
        samples, classes = EMNIST_SHAPES[params["split"]]
        return samples, (1, 28, 28), classes
    return IMAGE_SHAPES.get(name)


def dataset_files(name: str, params: dict[str, Any], base_dir: Path | None) -> list[Path]:
    """The files an image dataset is read from, in torchvision's layout (none for synthetic)."""
    if name in MNIST_LIKE:
        _, where, files = MNIST_LIKE[name]
        names = files.replace("<split>", str(params.get("split", ""))).split(", ")
    elif name in CIFAR:
        _, where, train, test, _, _ = CIFAR[name]
        names = train + test
    else:
        return []
    folder = resolve_root(params["root"], base_dir) / where
    return [folder / file for file in names]


def _check_files(name: str, params: dict[str, Any], base_dir: Path | None, path: str) -> None:
    """The dataset files that exist must be regular files of a sane size (not a pipe or a device)."""
    for file in dataset_files(name, params, base_dir):
        if os.path.lexists(file):
            check_regular_file(file, f"{path}.root", f"{name} file {file}", MAX_FILE_BYTES)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batch files, which hold dicts, lists, bytes and numpy arrays, and
    nothing else: any other global is refused (only numpy's array reconstruction and
    ``codecs.encode``, which build data), so a crafted file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"): ("numpy", "ndarray"), ("numpy", "dtype"): ("numpy", "dtype"),
               ("_codecs", "encode"): ("_codecs", "encode")}  # bytes in protocol-2 pickles

    def find_class(self, module: str, name: str) -> Any:
        target = self.ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file")
        return super().find_class(*target)


def _torchvision(path: str) -> Any:
    try:
        import torchvision.datasets
    except ImportError:
        raise ScenarioError(path, "image datasets need torchvision: pip install 'fedsim[train]'") from None
    return torchvision.datasets


def _missing(name: str, root: Path, where: str, files: str, path: str) -> ScenarioError:
    return ScenarioError(f"{path}.root", f"{name} not found under {root}: put torchvision's files ({files}) in "
                         f"{root / where}, or set download: true on a machine with a network")


def _standardise(images: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale uint8 (N, C, H, W) images to [0, 1], then per channel to mean 0 and std 1 (train statistics)."""
    x, t = images.astype(np.float32) / 255.0, test.astype(np.float32) / 255.0
    mean = x.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    std = x.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    std[std == 0] = 1.0
    return (x - mean) / std, (t - mean) / std


def _images(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: int) -> RawData:
    xt, xe = _standardise(x_train, x_test)
    return RawData(xt, y_train.astype(np.int64), xe, y_test.astype(np.int64), tuple(xt.shape[1:]), classes)


def _mnist_like(name: str) -> Loader:
    cls_name, where, files = MNIST_LIKE[name]

    def load(params: dict[str, Any], n_clients: int, rng: np.random.Generator, base_dir: Path | None,
             path: str) -> RawData:
        tv = _torchvision(path)
        root = resolve_root(params["root"], base_dir)
        extra = {"split": params["split"]} if name == "emnist" else {}
        _check_files(name, params, base_dir, path)
        try:
            train = getattr(tv, cls_name)(str(root), train=True, download=params["download"], **extra)
            test = getattr(tv, cls_name)(str(root), train=False, download=params["download"], **extra)
        except (RuntimeError, OSError) as exc:
            if params["download"]:
                raise ScenarioError(f"{path}.download", f"could not download {name} to {root}: "
                                    f"{str(exc).splitlines()[0]}") from None
            raise _missing(name, root, where, files.replace("<split>", str(extra.get("split", ""))), path) from None
        return _images(train.data.numpy()[:, None], train.targets.numpy(), test.data.numpy()[:, None],
                       test.targets.numpy(), len(train.classes))

    return load


def _cifar(name: str) -> Loader:
    cls_name, where, train_files, test_files, key, classes = CIFAR[name]

    def read(folder: Path, files: list[str], path: str) -> tuple[np.ndarray, np.ndarray]:
        data, labels = [], []
        for file in files:
            with open(folder / file, "rb") as f:
                try:
                    entry = _ArrayUnpickler(f, encoding="latin1").load()
                    data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                    labels.extend(entry[key])
                except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError, AttributeError) as exc:
                    raise ScenarioError(f"{path}.root", f"{folder / file} is not a {name} batch file "
                                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        return np.concatenate(data), np.asarray(labels, dtype=np.int64)

    def load(params: dict[str, Any], n_clients: int, rng: np.random.Generator, base_dir: Path | None,
             path: str) -> RawData:
        root = resolve_root(params["root"], base_dir)
        folder = root / where
        if params["download"] and not all((folder / f).is_file() for f in train_files + test_files):
            try:
                getattr(_torchvision(path), cls_name)(str(root), train=True, download=True)
            except (RuntimeError, OSError) as exc:
                raise ScenarioError(f"{path}.download", f"could not download {name} to {root}: "
                                    f"{str(exc).splitlines()[0]}") from None
        _check_files(name, params, base_dir, path)
        try:
            x_train, y_train = read(folder, train_files, path)
            x_test, y_test = read(folder, test_files, path)
        except OSError:
            raise _missing(name, root, where, ", ".join(train_files + test_files), path) from None
        return _images(x_train, y_train, x_test, y_test, classes)

    return load


for _name in MNIST_LIKE:
    _fields = IMAGE_FIELDS | ({"split": Field("balanced", choice(*EMNIST_SPLITS), "EMNIST split")}
                              if _name == "emnist" else {})
    register_dataset(_name, _fields, images=True)(_mnist_like(_name))
for _name in CIFAR:
    register_dataset(_name, IMAGE_FIELDS, images=True)(_cifar(_name))


def load_dataset(name: str, params: dict[str, Any], n_clients: int, rng: np.random.Generator,
                 base_dir: Path | None = None, path: str = "training.dataset") -> RawData:
    """Load (or generate) the dataset ``name`` with its checked parameters."""
    return DATASETS[name].load(params, n_clients, rng, base_dir, path)
