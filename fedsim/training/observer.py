"""The engine observer that turns every simulated completion into a real update of the model.

``on_dispatch``: the task takes the current model version (shared, see
:mod:`fedsim.training.versions`) and its client's next ``local_steps`` mini-batches (the
client's own stream, :mod:`fedsim.training.client`). ``on_complete``: if the task's work (the
rule's :class:`~fedsim.training.algorithms.ClientWork`) is not computed yet, it is computed now,
on the sequential path for this task alone, on the batched path for every in-flight task that
lacks it (:mod:`fedsim.training.batching`); each version is released as soon as the work of
the tasks carrying it is computed. Then the update rule applies this task's result, with the
staleness ``update - task.dispatch_update``, the engine's own. Evaluations and checkpoints
happen at the update counts they are due.

Resuming (``resume_from``): the queueing sample path is a function of the seed alone, so the
run is replayed from the start with training switched off (no versions, no computation; the
tasks still draw their mini-batches, which puts every client's stream where it was) until the
checkpoint's update K. There the saved state is loaded: global model, rule state, torch
generator, and for each task in flight its result if it was computed, else its version (found
by dispatch index). Tasks are matched to the checkpoint by their dispatch number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedsim.engine import Engine, Task
from fedsim.errors import ScenarioError
from fedsim.training.algorithms import UpdateRule
from fedsim.training.record import Monitor
from fedsim.training.versions import Version
from fedsim.training.workload import Workload


class Work:
    """A task's client work: the ``version`` it carried (None once the work is computed),
    ``step`` (model changes before that version), ``batches`` ((local_steps, batch_size)
    sample indices), ``seq`` (the task's dispatch number in the run) and ``result``."""

    __slots__ = ("version", "step", "batches", "seq", "result")

    version: Version | None
    step: int
    batches: np.ndarray
    seq: int
    result: Any


class TrainingObserver:
    """Real training attached to the engine's ``on_dispatch`` / ``on_complete`` / ``on_finish``.

    ``clients`` computes the work (``LocalTrainer``: one task per call; ``BatchedClients``: the
    window of tasks lacking it). ``save(state)`` is called every ``checkpoint_every`` updates
    with :meth:`state_dict`. ``updates`` and ``sim_time`` are those of the end of the run;
    ``windows`` and ``window_tasks`` count the calls and the tasks they computed.
    """

    def __init__(self, workload: Workload, rule: UpdateRule, clients: Any, monitor: Monitor, *,
                 checkpoint_every: int | None = None, save: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.workload = workload
        self.sampler = workload.sampler
        self.rule = rule
        self.apply = rule.apply
        self.work = rule.work
        self.clients = clients
        self.versions = rule.model  # the global model and the versions tasks hold
        self.monitor = monitor
        self.checkpoint_every = checkpoint_every
        self.save = save
        self.next_checkpoint = checkpoint_every if checkpoint_every else math.inf
        self.next_event = 0
        self.live = True
        self.resume_at = 0
        self._resume_state: dict[str, Any] | None = None
        self.in_flight: dict[Task, None] = {}  # in dispatch order
        self.pending: list[Task] = []  # in flight, work not computed (batched path)
        self.dispatched = 0
        self.windows = 0
        self.window_tasks = 0
        self.updates = 0
        self.sim_time = 0.0

    def start(self) -> None:
        """Evaluate the initial model (update 0) and start the wall clock."""
        self.monitor.load_state_dict({"next": 0, "last": -1, "wall_seconds": 0.0})
        self.monitor(0, 0.0)
        self._schedule()

    def resume_from(self, state: dict[str, Any]) -> None:
        """Replay the queueing run without training up to ``state['updates']``, then load ``state``."""
        self.live = False
        self.resume_at = state["updates"]
        self._resume_state = state

    # -----------------------------------------------------------------------------------
    # engine hooks

    def on_dispatch(self, task: Task) -> None:
        w = object.__new__(Work)
        w.batches = self.sampler.next(task.client, self.work.steps)
        w.seq = self.dispatched
        self.dispatched += 1
        w.result = None
        if self.live:
            v = w.version = self.versions.share(task.dispatch_update)
            w.step = v.step
            if self.clients.batched:
                self.pending.append(task)
        else:
            w.version, w.step = None, -1
        task.payload = w
        self.in_flight[task] = None

    def on_complete(self, task: Task, update: int, now: float) -> None:
        del self.in_flight[task]
        if not self.live:
            if update + 1 == self.resume_at:
                self._load(self._resume_state)
            return
        w = task.payload
        if w.result is None:
            self._compute(self.pending if self.clients.batched else [task])
        self.apply(task.client, w.result, update - task.dispatch_update, w.step)
        w.result = None
        if update + 1 >= self.next_event:
            self._due(update + 1, now)

    def on_lost(self, task: Task, _now: float) -> None:
        """A lost task (client behaviour) is never applied: it leaves the tasks in flight and
        the batched window, and its version is released unless its work was computed (which
        released it)."""
        del self.in_flight[task]
        w = task.payload
        if w.version is not None:
            self.versions.release(w.version)
            w.version = None
            if task in self.pending:
                self.pending.remove(task)
        w.result = None

    def on_finish(self, engine: Engine) -> None:
        if not self.live:
            raise ScenarioError("--resume", f"the checkpoint is at update {self.resume_at}, beyond the end of this "
                                f"run ({engine.updates} updates)")
        self.updates, self.sim_time = engine.updates, engine.env.now
        self.monitor.finish(engine.updates, engine.env.now)

    # -----------------------------------------------------------------------------------

    def _compute(self, tasks: list[Task]) -> None:
        """Compute the work of ``tasks`` in one call and release their versions."""
        works = [t.payload for t in tasks]
        results = self.clients.compute(self.work, [w.version for w in works], [w.batches for w in works])
        release = self.versions.release
        for w, r in zip(works, results):
            w.result = r
            release(w.version)
            w.version = None
        self.windows += 1
        self.window_tasks += len(works)
        if tasks is self.pending:
            self.pending = []

    def _due(self, done: int, now: float) -> None:
        if done >= self.monitor.next:
            self.monitor(done, now)
        if done >= self.next_checkpoint:
            self.next_checkpoint = done + self.checkpoint_every
            if self.save is not None:
                self.save(self.state_dict(done, now))
        self._schedule()

    def _schedule(self) -> None:
        self.next_event = min(self.monitor.next, self.next_checkpoint)

    def state_dict(self, done: int, now: float) -> dict[str, Any]:
        """Everything training needs to go on from update ``done`` (CPU tensors, plain values):
        besides the model and the rule, the results already computed for tasks in flight (with
        their versions' steps), by dispatch number; the versions the other tasks hold are in
        ``versions``."""
        results = {t.payload.seq: (t.payload.result.cpu().clone(), t.payload.step) for t in self.in_flight
                   if t.payload.result is not None}
        return {
            "kind": "async",
            "updates": done,
            "sim_time": now,
            "rule": self.rule.state_dict(),
            "versions": self.versions.state_dict(),
            "results": results,
            "torch_rng": torch.get_rng_state(),
            "monitor": self.monitor.state_dict(),
            "rows": list(self.monitor.record.rows),
            "next_checkpoint": self.next_checkpoint,
        }

    def _load(self, state: dict[str, Any] | None) -> None:
        assert state is not None
        device = self.workload.device
        self.rule.load_state_dict({k: v.to(device) if isinstance(v, torch.Tensor) else v
                                   for k, v in state["rule"].items()})
        self.versions.load_state_dict(state["versions"])
        results = state["results"]
        for task in self.in_flight:
            w = task.payload
            if w.seq in results:
                result, w.step = results[w.seq]
                w.result = result.to(device)
            else:
                w.version = self.versions.restored(task.dispatch_update)
                w.step = w.version.step
                if self.clients.batched:
                    self.pending.append(task)
        torch.set_rng_state(state["torch_rng"])
        self.monitor.load_state_dict(state["monitor"])
        self.next_checkpoint = state["next_checkpoint"] if self.checkpoint_every else math.inf  # none asked now
        self._resume_state = None
        self.live = True
        self._schedule()
