"""The engine observer that turns every simulated completion into a real update of the model.

``on_dispatch``: the task takes the current model version (shared, see
:mod:`fedsim.training.versions`). ``on_complete``: the client's work (a gradient, or local
steps) runs on that version, the update rule changes the global model, and the version is
released; the staleness the rule sees is ``update - task.dispatch_update``, the engine's own.
Evaluations and checkpoints happen at the update counts they are due.

Resuming (``resume_from``): the queueing sample path is a function of the seed alone, so the
run is replayed from the start with training switched off (no payloads, no computation) until
the checkpoint's update K, where the saved state (global model, the versions in-flight tasks
still carry, rule state, batch sampler, torch generator) is loaded and training goes on. Tasks
dispatched before K carry no payload; their version is found by dispatch index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from fedsim.engine import Engine, Task
from fedsim.errors import ScenarioError
from fedsim.training.algorithms import UpdateRule
from fedsim.training.record import Monitor
from fedsim.training.workload import Workload


class TrainingObserver:
    """Real training attached to the engine's ``on_dispatch`` / ``on_complete`` / ``on_finish``.

    ``save(state)`` is called every ``checkpoint_every`` updates with :meth:`state_dict`.
    ``updates`` and ``sim_time`` are those of the end of the run.
    """

    def __init__(self, workload: Workload, rule: UpdateRule, monitor: Monitor, *,
                 checkpoint_every: int | None = None, save: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.workload = workload
        self.rule = rule
        self.complete = rule.complete
        self.versions = rule.model  # the global model and the versions tasks hold
        self.monitor = monitor
        self.checkpoint_every = checkpoint_every
        self.save = save
        self.next_checkpoint = checkpoint_every if checkpoint_every else math.inf
        self.next_event = 0
        self.live = True
        self.resume_at = 0
        self._resume_state: dict[str, Any] | None = None
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
        if self.live:
            task.payload = self.versions.share(task.dispatch_update)

    def on_complete(self, task: Task, update: int, now: float) -> None:
        if not self.live:
            if update + 1 == self.resume_at:
                self._load(self._resume_state)
            return
        version = task.payload
        if version is None:
            version = self.versions.restored(task.dispatch_update)
        self.complete(task.client, version, update - task.dispatch_update)
        self.versions.release(version)
        if update + 1 >= self.next_event:
            self._due(update + 1, now)

    def on_lost(self, task: Task, _now: float) -> None:
        """A lost task's work is never applied: its model version is released."""
        if task.payload is not None:
            self.versions.release(task.payload)

    def on_finish(self, engine: Engine) -> None:
        if not self.live:
            raise ScenarioError("--resume", f"the checkpoint is at update {self.resume_at}, beyond the end of this "
                                f"run ({engine.updates} updates)")
        self.updates, self.sim_time = engine.updates, engine.env.now
        self.monitor.finish(engine.updates, engine.env.now)

    # -----------------------------------------------------------------------------------

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
        """Everything training needs to go on from update ``done`` (CPU tensors, plain values)."""
        return {
            "kind": "async",
            "updates": done,
            "sim_time": now,
            "rule": self.rule.state_dict(),
            "versions": self.versions.state_dict(),
            "sampler": self.workload.sampler.state_dict(),
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
        self.workload.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.monitor.load_state_dict(state["monitor"])
        self.next_checkpoint = state["next_checkpoint"]
        self._resume_state = None
        self.live = True
        self._schedule()
