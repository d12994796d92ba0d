"""The clients' work for many tasks in one call, and what ``training.batched`` resolves to.

Simulation knows what a deployment does not: every task in flight already carries its model
version and its mini-batches (drawn at dispatch). So when a task completes and its work is not
computed yet, the observer (:mod:`fedsim.training.observer`) hands :class:`BatchedClients` the
work of *every* in-flight task that lacks it, the window: their versions stacked into a
(T, P) matrix, their batches into (T, K, B), and a kernel (:mod:`fedsim.training.kernels`)
computes all T gradients at once; local steps go step by step across the tasks
(:func:`~fedsim.training.client.run_work`). Results wait in the tasks until their own
completions, where the update rule applies them one at a time, in update order, with the
staleness the engine reports: the model is the one of computing each task alone with the same
kernel, bit for bit where the BLAS rounds independently of memory alignment (MKL with
``MKL_CBWR=COMPATIBLE``; see :mod:`fedsim.training.kernels`; tested). A window larger than the memory budget is cut into chunks.

``training.batched``:

- ``false``: each task alone, with autograd (:class:`~fedsim.training.client.LocalTrainer`);
- ``true``: batched, with the model's kernel (``dense`` for logistic and mlp, ``cnn`` for cnn,
  ``vmap`` for a user factory); a factory that ``torch.func.vmap`` cannot batch falls back to
  the sequential path, and the run's summary says why;
- ``auto`` (default): batched when the expected window reaches the kernel's break-even size on
  the device (:data:`BREAK_EVEN`), with the window estimated from the concurrency
  (:func:`~fedsim.training.kernels.expected_window`), or the round size for FedAvg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedsim.training.algorithms import ClientWork
from fedsim.training.client import LocalTrainer, run_work
from fedsim.training.config import TrainingConfig
from fedsim.training.kernels import make_kernel
from fedsim.training.models import MODELS

WINDOW_MEMORY = 512 * 2**20  # bytes a window's call may take; larger windows are computed in chunks

# Smallest expected window (kernels.expected_window) from which the kernel beats autograd task
# by task, per device type. CPU: measured (docs/training.md, "Batched client work"); vmap costs
# about 2 ms of host time per call against about 0.4 ms per autograd step, so it pays from real
# windows of about 5, which the estimate puts at about 8. CUDA: reasoning, not measured (small
# steps cost a kernel launch per operation, which batching removes).
BREAK_EVEN: dict[str, dict[str, float]] = {
    "dense": {"cpu": 1.0, "cuda": 1.0},       # faster than autograd even for one task
    "cnn": {"cpu": math.inf, "cuda": 1.0},    # CPU convolutions are bound by arithmetic
    "vmap": {"cpu": 8.0, "cuda": 2.0},
}


class BatchedClients:
    """The clients' work for many tasks per call, with a batched ``kernel``, at most
    ``max_window`` tasks per call."""

    batched = True

    def __init__(self, kernel: Any, max_window: int) -> None:
        self.kernel = kernel
        self.name = kernel.name
        self.max_window = max_window

    def compute(self, work: ClientWork, versions: list[Any], batches: list[np.ndarray]) -> list[torch.Tensor]:
        """The work of each task (flat rows), from its version (``.flat``) and its (K, B) batches."""
        out: list[torch.Tensor] = []
        m = self.max_window
        for a in range(0, len(versions), m):
            W = torch.stack([v.flat for v in versions[a:a + m]])
            idx = torch.from_numpy(np.stack(batches[a:a + m])).to(W.device)
            out.extend(run_work(work, W, idx, self.kernel).unbind(0))
        return out


@dataclass(frozen=True)
class Choice:
    """What ``training.batched`` resolved to: ``clients`` (``LocalTrainer`` or ``BatchedClients``),
    ``kernel`` (``autograd``, ``dense``, ``cnn`` or ``vmap``) and, when the run is not batched
    although it could have been asked to, ``reason``."""

    clients: Any
    kernel: str
    reason: str | None = None

    @property
    def batched(self) -> bool:
        return bool(self.clients.batched)


def choose_clients(config: TrainingConfig, trainer: LocalTrainer, w0: torch.Tensor, window: float) -> Choice:
    """Resolve ``config.batched`` for a run whose windows hold about ``window`` tasks."""
    if config.batched is False:
        return Choice(trainer, trainer.name)
    kind = MODELS[config.model.name].kernel if config.model.name in MODELS else None
    kernel, reason = make_kernel(kind, trainer.flat, trainer.x, trainer.y, w0)
    if kernel is None:
        return Choice(trainer, trainer.name, reason)
    if config.batched == "auto":
        need = BREAK_EVEN[kernel.name][w0.device.type]
        if window < need:
            return Choice(trainer, trainer.name, f"auto: expected window {window:.1f} is below the {kernel.name} "
                          f"kernel's break-even {need:g} on {w0.device.type}")
    per_task = kernel.task_bytes(int(config.algorithm["batch_size"]), w0.element_size())
    return Choice(BatchedClients(kernel, max(1, WINDOW_MEMORY // per_task)), kernel.name)
