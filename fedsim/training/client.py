"""What a client computes from the model version its task carried, one task at a time, and
where its mini-batches come from.

Clients hold disjoint slices of the training set (client i: rows ``offsets[i]`` to
``offsets[i] + sizes[i]``). Client i's mini-batches form a stream of its own: shuffled epochs of
its samples (a fresh random permutation per epoch) read ``batch_size`` at a time in order (a
batch may straddle two epochs). The permutations come from client i's own generator, child i of
the ``batches`` training stream, so the k-th mini-batch of client i is a function of
(seed, i, k) alone: the same under any routing, concurrency or service laws, and whenever, in
whatever order, the clients draw. A task takes its ``local_steps`` batches when it is
dispatched (:mod:`fedsim.training.observer`).

:class:`LocalTrainer` computes a rule's :class:`~fedsim.training.algorithms.ClientWork` task by
task with autograd (the sequential path); :mod:`fedsim.training.batching` computes the work of
many tasks in one call. Both run the local steps through :func:`run_work`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.training.algorithms import ClientWork
from fedsim.training.flat import FlatModel

REFILL_BATCHES = 64  # epochs are drawn ahead in groups lasting at least this many batches


class BatchSampler:
    """Each client's stream of mini-batches (indices into the client-ordered training set).

    ``seed`` is the ``batches`` seed sequence; client i draws its permutations from the
    generator of ``seed.spawn(n)[i]`` (made on first use). Batches are numpy arrays (a slice
    costs a fraction of a torch one, and a task takes one at every dispatch); the trainers move
    them to the device, a whole window at a time on the batched path.
    """

    def __init__(self, offsets: np.ndarray, sizes: np.ndarray, batch_size: int, seed: np.random.SeedSequence) -> None:
        self.offsets = [int(o) for o in offsets]
        self.sizes = [int(s) for s in sizes]
        self.batch_size = batch_size
        self.seed = seed
        n = len(self.sizes)
        self.rngs: list[np.random.Generator | None] = [None] * n
        self.streams = [np.zeros(0, dtype=np.int64) for _ in range(n)]
        self.lengths = [0] * n
        self.pos = [0] * n

    def generator(self, client: int) -> np.random.Generator:
        """Client ``client``'s generator: that of child ``client`` of the ``batches`` sequence."""
        rng = self.rngs[client]
        if rng is None:
            s = self.seed
            child = np.random.SeedSequence(s.entropy, spawn_key=(*s.spawn_key, client), pool_size=s.pool_size)
            rng = self.rngs[client] = np.random.default_rng(child)
        return rng

    def next(self, client: int, count: int = 1) -> np.ndarray:
        """The next ``count`` mini-batches of ``client``: a (count, batch_size) array of indices."""
        start = self.pos[client]
        end = start + count * self.batch_size
        if end > self.lengths[client]:
            self._refill(client, start, end)
            start, end = 0, end - start
        self.pos[client] = end
        return self.streams[client][start:end].reshape(count, self.batch_size)

    def _refill(self, client: int, start: int, end: int) -> None:
        """Keep the unused rest of the stream and append whole shuffled epochs, enough for
        ``end`` and for at least ``REFILL_BATCHES`` more batches. Each epoch is shuffled in turn
        (``permuted`` row by row, as ``permutation`` would), so the stream does not depend on
        how many epochs a refill draws."""
        size, rng = self.sizes[client], self.generator(client)
        missing = max(end, start + REFILL_BATCHES * self.batch_size) - self.lengths[client]
        first = self.offsets[client]
        epochs = np.tile(np.arange(first, first + size), (max(1, math.ceil(missing / size)), 1))
        stream = np.concatenate([self.streams[client][start:], rng.permuted(epochs, axis=1).reshape(-1)])
        self.streams[client] = stream
        self.lengths[client] = len(stream)
        self.pos[client] = 0

    def state_dict(self) -> dict[str, Any]:
        return {"rngs": [None if g is None else g.bit_generator.state for g in self.rngs],
                "streams": list(self.streams), "pos": list(self.pos)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for client, rng_state in enumerate(state["rngs"]):
            if rng_state is not None:
                self.generator(client).bit_generator.state = rng_state
        self.streams = [np.asarray(s) for s in state["streams"]]
        self.lengths = [len(s) for s in self.streams]
        self.pos = list(state["pos"])


def sgd_step_(x: torch.Tensor, g: torch.Tensor, x0: torch.Tensor, lr: float, prox: float) -> None:
    """x <- x - lr (g + prox (x - x0)) in place (``g`` is overwritten).

    Every operation is rounded on its own (no fused multiply-add, whose vectorised and scalar
    loops may round differently), so an element's result does not depend on the tensor's shape:
    a batch of tasks steps exactly as each task alone.
    """
    if prox:
        g.add_(torch.sub(x, x0).mul_(prox))
    x.sub_(g.mul_(lr))


def run_work(work: ClientWork, x0: torch.Tensor, batches: Any, gradient: Callable[[torch.Tensor, Any], Any]) -> Any:
    """The client work from ``x0``: ``batches[..., k, :]`` is the mini-batch of local step k, and
    ``gradient(x, batch)`` the mini-batch gradient at ``x``. The same code serves one task (x0
    of shape (P,), batches (K, B)) and T tasks at once (x0 (T, P), batches (T, K, B))."""
    if work.output == "gradient":
        return gradient(x0, batches[..., 0, :])
    x = x0.clone()
    for k in range(work.steps):
        sgd_step_(x, gradient(x, batches[..., k, :]), x0, work.lr, work.prox)
    return x.sub_(x0) if work.output == "delta" else x


class LocalTrainer:
    """The clients' work task by task, with autograd on the module (the sequential path).

    ``loss`` is the mean cross-entropy of the batch. A gradient comes back as one tensor per
    parameter, as autograd produced it (no copy into a flat buffer); local models and deltas as
    fresh flat vectors.
    """

    name = "autograd"
    batched = False

    def __init__(self, flat: FlatModel, x: torch.Tensor, y: torch.Tensor,
                 loss: Callable[..., torch.Tensor] = F.cross_entropy) -> None:
        self.flat = flat
        self.module = flat.module
        self.x, self.y = x, y
        self.loss = loss
        self.grad = flat.grad
        self.params = flat.params
        self._grad_views = flat.views(self.grad)
        self._flat_grads = True  # whether the parameters' .grad are the views of ``grad``
        self._point: tuple[torch.Tensor | None, list[torch.Tensor]] = (None, [])

    def _backward(self, idx: np.ndarray) -> None:
        index = torch.as_tensor(idx, device=self.x.device)
        self.loss(self.module(self.x.index_select(0, index)), self.y.index_select(0, index)).backward()

    def gradient(self, views: list[torch.Tensor], idx: np.ndarray) -> list[torch.Tensor]:
        """g_i(w_s): the gradient of the mini-batch ``idx`` at the version whose views are given,
        one tensor per parameter."""
        self.flat.bind(views)
        params = self.params
        for p in params:
            p.grad = None
        self._flat_grads = False
        self._backward(idx)
        return [p.grad for p in params]

    def flat_gradient(self, x: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """The gradient of the mini-batch ``idx`` at the flat vector ``x``, as the flat ``grad``
        buffer (valid until the next call)."""
        if x is not self._point[0]:
            self._point = (x, self.flat.views(x))
        self.flat.bind(self._point[1])
        if not self._flat_grads:
            for p, g in zip(self.params, self._grad_views):
                p.grad = g
            self._flat_grads = True
        self.grad.zero_()
        self._backward(idx)
        return self.grad

    def local_model(self, start: torch.Tensor, batches: np.ndarray, lr: float, prox: float = 0.0) -> torch.Tensor:
        """x_K after K = len(batches) SGD steps from x_0 = ``start``:
        x_{k+1} = x_k - lr (g(x_k; batch k) + prox (x_k - x_0))."""
        return run_work(ClientWork(len(batches), lr, "model", prox), start, batches, self.flat_gradient)

    def compute(self, work: ClientWork, versions: list[Any], batches: list[np.ndarray]) -> list[Any]:
        """The work of each task, from its version (``.flat``, ``.views``) and its (K, B) batches."""
        if work.output == "gradient":
            return [self.gradient(v.views, idx[0]) for v, idx in zip(versions, batches)]
        return [run_work(work, v.flat, idx, self.flat_gradient) for v, idx in zip(versions, batches)]
