"""How the training samples are split between the clients.

A partition turns the labels of the training set into one array of sample indices per client.
Every client gets at least one sample, the parts are disjoint and cover the data, and the split
is a function of the partition generator alone (spawned from the scenario's ``training``
stream), so it is reproducible from the seed. In a scenario::

    partition: iid                      # uniform random split into near-equal parts
    partition: {dirichlet: 0.3}         # label skew: class shares per client ~ Dirichlet(0.3)
    partition: {shards_per_client: 2}   # sort by label, cut into n*2 shards, 2 per client
    partition: natural                  # the data's own owners (synthetic data only)

Adding a rule takes one decorated function ``split(labels, n, rng, param, owner, path)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedsim.errors import ScenarioError
from fedsim.fields import Check, between, integer

Split = Callable[[np.ndarray, int, np.random.Generator, object, "np.ndarray | None", str], list[np.ndarray]]


@dataclass(frozen=True)
class PartitionRule:
    """A registered partition: its split function and the check of its one parameter (if any)."""

    name: str
    split: Split
    check: Check | None = None
    needs_owner: bool = False  # only for data that come with their clients (``natural``)


PARTITIONS: dict[str, PartitionRule] = {}


def register_partition(name: str, check: Check | None = None, *, needs_owner: bool = False) -> Callable[[Split], Split]:
    def decorate(split: Split) -> Split:
        PARTITIONS[name] = PartitionRule(name, split, check, needs_owner)
        return split

    return decorate


def _need_samples(n_samples: int, needed: int, path: str, what: str) -> None:
    if n_samples < needed:
        raise ScenarioError(path, f"{what} needs at least {needed} training samples, the dataset has {n_samples}")


@register_partition("iid")
def iid(labels: np.ndarray, n: int, rng: np.random.Generator, param: object, owner: np.ndarray | None,
        path: str) -> list[np.ndarray]:
    """A uniformly random permutation cut into n parts whose sizes differ by at most one."""
    _need_samples(len(labels), n, path, f"iid over {n} clients")
    return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), n)]


@register_partition("natural", needs_owner=True)
def natural(labels: np.ndarray, n: int, rng: np.random.Generator, param: object, owner: np.ndarray | None,
            path: str) -> list[np.ndarray]:
    """Client i gets the samples the dataset generated for client i."""
    assert owner is not None
    return [np.flatnonzero(owner == i) for i in range(n)]


@register_partition("dirichlet", between(0.0, 1e6, open_low=True))
def dirichlet(labels: np.ndarray, n: int, rng: np.random.Generator, param: object, owner: np.ndarray | None,
              path: str) -> list[np.ndarray]:
    """Label skew (Hsu et al. 2019): for each class c, the shares (q_c1, ..., q_cn) of its samples
    given to the clients are drawn from Dirichlet(alpha, ..., alpha); small alpha, few classes per
    client. A client left empty then receives one sample from the largest client, repeatedly,
    so that every client holds data.
    """
    _need_samples(len(labels), n, path, f"a partition over {n} clients")
    alpha = float(param)  # type: ignore[arg-type]
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        shares = rng.dirichlet(np.full(n, alpha))
        cuts = np.minimum((np.cumsum(shares)[:-1] * len(members)).astype(np.int64), len(members))
        for i, piece in enumerate(np.split(members, cuts)):
            parts[i].append(piece)
    out = [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]
    sizes = np.array([len(p) for p in out])
    for i in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        out[i], out[donor] = out[donor][-1:], out[donor][:-1]
        sizes[i], sizes[donor] = 1, sizes[donor] - 1
    return out


@register_partition("shards_per_client", integer(1))
def shards(labels: np.ndarray, n: int, rng: np.random.Generator, param: object, owner: np.ndarray | None,
           path: str) -> list[np.ndarray]:
    """Pathological non-IID split of McMahan et al. (2017): sort the samples by label (ties in
    random order), cut them into n*s shards of near-equal size, and give each client s shards
    drawn at random without replacement.
    """
    s = int(param)  # type: ignore[call-overload]
    _need_samples(len(labels), n * s, path, f"{s} shards for each of {n} clients")
    perm = rng.permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    pieces = np.array_split(order, n * s)
    deal = rng.permutation(n * s).reshape(n, s)
    return [np.sort(np.concatenate([pieces[k] for k in row])) for row in deal]


def split(rule: str, param: object, labels: np.ndarray, n: int, rng: np.random.Generator,
          owner: np.ndarray | None = None, path: str = "training.partition") -> list[np.ndarray]:
    """Index arrays (int64, sorted) of the training samples of each of the n clients."""
    parts = PARTITIONS[rule].split(labels, n, rng, param, owner, path)
    return [np.asarray(p, dtype=np.int64) for p in parts]
