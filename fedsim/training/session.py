"""One training run of a scenario, from the built workload to what its run folder holds.

Asynchronous rules: :attr:`TrainingSession.observer` goes to ``fedsim.run.simulate``, then
:meth:`TrainingSession.finish` closes the learning curve and returns what ``summary.json``
gains. FedAvg: :meth:`TrainingSession.run_rounds` runs the round loop and
:meth:`TrainingSession.rounds_summary` gives its summary. The session writes no result
file: :mod:`fedsim.report` writes the run folder from :meth:`curve` and :meth:`model_state`.
With ``curve`` the rows of ``training.csv`` are also appended to that file as they come (a
run that stops keeps its curve so far); with ``checkpoint`` and ``checkpoint_every`` a
checkpoint is written there every N updates.

Run folder additions: ``training.csv`` and ``training.png`` (see :mod:`fedsim.training.record`);
``model.pt``, the final global model as a ``state_dict`` of the model; ``checkpoint.pt`` with
``--checkpoint-every``; a ``data_size`` column in ``clients.csv``; in ``summary.json``:
``final_accuracy``, ``best_accuracy``, ``best_accuracy_update``, ``final_train_loss``,
``final_test_loss``, ``evaluations``, ``model_parameters``, ``max_alive_versions``,
``resumed_from_update``, and how the clients' work was computed: ``batched`` (true or false),
``client_kernel`` (``autograd``, ``dense``, ``cnn`` or ``vmap``), ``batched_reason`` (why a run
that could have been batched was not; null otherwise) and ``mean_window`` (tasks per window).

When a session starts it sets torch's number of CPU threads (``training.threads``) and seeds
torch's global generator from the training stream (which only matters for models with
stochastic layers, such as dropout): both are process-wide settings, which
:func:`fedsim.run.run_scenario` restores when the run ends.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedsim import __version__
from fedsim.scenario import Scenario
from fedsim.training.algorithms import ALGORITHMS, Context
from fedsim.training.batching import choose_clients
from fedsim.training.checkpoint import load_checkpoint, save_checkpoint
from fedsim.training.fedavg import Rounds, RoundsResult
from fedsim.training.kernels import expected_window
from fedsim.training.observer import TrainingObserver
from fedsim.training.record import Monitor, TrainingRecord
from fedsim.training.versions import ModelVersions
from fedsim.training.workload import Workload, build_workload


class TrainingSession:
    """The training side of a run: workload, rule, learning curve, checkpoints.

    ``workload``: the built workload (default: built here); ``curve``: a file the rows of
    training.csv are appended to as they come; ``checkpoint``: the checkpoint file, replaced
    every ``checkpoint_every`` updates; ``resume``: a run folder whose checkpoint the run
    continues from; ``dtype`` float64 trains in double precision (a reference for numerical
    checks; for a workload built here).
    """

    def __init__(self, scenario: Scenario, *, workload: Workload | None = None, curve: Path | None = None,
                 checkpoint: Path | None = None, checkpoint_every: int | None = None,
                 resume: Path | None = None, dtype: torch.dtype = torch.float32) -> None:
        cfg = scenario.training
        self.scenario = scenario
        state = load_checkpoint(resume, scenario) if resume is not None else None
        self.resumed_from = state["updates"] if state is not None else None
        torch.set_num_threads(cfg.threads)
        self.workload = wl = workload if workload is not None else build_workload(scenario, dtype)
        torch.manual_seed(wl.torch_seed)
        self.record = TrainingRecord(curve, state["rows"] if state is not None else None)
        self.model = model = ModelVersions(wl.w0.clone(), wl.flat.views)
        self.monitor = Monitor(lambda: wl.evaluator(model.w), self.record, cfg.eval_every)
        self.rule = rule = ALGORITHMS[cfg.algorithm.name](cfg.algorithm.kwargs, Context(model, scenario.p, wl.sizes))
        window = rule.params["clients_per_round"] if rule.synchronous else expected_window(scenario.concurrency)
        self.choice = choose_clients(cfg, wl.trainer, wl.w0, window)
        save = None
        if checkpoint_every is not None:
            if checkpoint is None:
                raise ValueError("checkpoint_every needs a checkpoint file")
            save = partial(save_checkpoint, checkpoint, scenario)
        self.observer: TrainingObserver | None = None
        self.rounds: Rounds | None = None
        if self.rule.synchronous:
            self.rounds = Rounds(scenario, wl, rule, self.choice.clients, self.monitor,
                                 checkpoint_every=checkpoint_every, save=save)
            if state is not None:
                self.rounds.load_state_dict(state)
            else:
                self.rounds.start()
        else:
            self.observer = TrainingObserver(wl, rule, self.choice.clients, self.monitor,
                                             checkpoint_every=checkpoint_every, save=save)
            if state is not None:
                self.observer.resume_from(state)
            else:
                self.observer.start()

    @property
    def synchronous(self) -> bool:
        return self.rounds is not None

    @property
    def w(self) -> torch.Tensor:
        """The global model as a flat vector."""
        return self.model.w

    def client_columns(self) -> dict[str, np.ndarray]:
        """Columns that clients.csv gains: the clients' numbers of training samples."""
        return {"data_size": self.workload.sizes}

    def finish(self) -> dict[str, Any]:
        """Close the learning curve; the keys summary.json gains."""
        self.record.close()
        return self.record.summary() | {
            "model_parameters": self.workload.flat.size,
            "max_alive_versions": None if self.synchronous else self.model.max_alive,
            "resumed_from_update": self.resumed_from,
            "batched": self.choice.batched,
            "client_kernel": self.choice.kernel,
            "batched_reason": self.choice.reason,
            "mean_window": self.mean_window,
        }

    def curve(self) -> pd.DataFrame:
        """The learning curve (training.csv) so far."""
        return self.record.frame()

    def model_state(self) -> dict[str, torch.Tensor]:
        """The global model as the module's ``state_dict`` (CPU tensors): model.pt."""
        return self.workload.flat.state_dict(self.w)

    @property
    def mean_window(self) -> float | None:
        """Mean number of tasks whose work was computed together, per window (None before any)."""
        if self.rounds is not None:
            if not self.rounds.result.rounds:
                return None
            return float(self.rounds.m) if self.choice.batched else 1.0
        obs = self.observer
        return obs.window_tasks / obs.windows if obs is not None and obs.windows else None

    # -----------------------------------------------------------------------------------
    # FedAvg

    def run_rounds(self) -> RoundsResult:
        """Run the FedAvg rounds to the horizon."""
        assert self.rounds is not None
        return self.rounds.run()

    def rounds_summary(self, result: RoundsResult) -> dict[str, Any]:
        """The content of a FedAvg run's summary.json (the training keys included)."""
        s = self.scenario
        return {
            "scenario": s.to_dict(),
            "seed": s.seed,
            "fedsim_version": __version__,
            "algorithm": s.training.algorithm.name,
            "rounds": result.rounds,
            "updates": result.updates,
            "sim_time": result.sim_time,
            "wall_seconds": self.monitor.wall(),
            "round_time_mean": result.round_time_sum / result.rounds if result.rounds else None,
            "throughput_sim": result.updates / result.sim_time if result.sim_time > 0 else None,
        } | self.finish()
