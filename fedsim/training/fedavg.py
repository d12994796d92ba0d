"""The synchronous baseline: FedAvg rounds under the scenario's timing model.

Each round the server samples m = ``clients_per_round`` distinct clients (without replacement,
with probabilities proportional to the routing p), sends them the model and waits for all of
them: the round lasts max_{k in round} S_k, each S_k drawn from client k's service law (one
service per client per round, as one task in the asynchronous engine). The server is
instantaneous, so simulated time is the sum of the round durations. The draws use the same
streams as the engine (``service``: one generator per client; ``routing``: the client
sample), so a FedAvg run and an asynchronous run of one scenario face the same service laws.

The horizon counts client updates: ``horizon.updates: N`` runs ceil(N / m) rounds;
``horizon.time: T`` runs the rounds that end by T. There is no queue and no staleness (every
client computes on the current model), so the queueing statistics of the asynchronous engine do
not apply; what the run folder holds instead is described in :func:`rounds_table`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedsim.errors import ScenarioError
from fedsim.scenario import Scenario, Streams
from fedsim.training.algorithms import RoundRule
from fedsim.training.record import Monitor
from fedsim.training.workload import Workload


@dataclass
class RoundsResult:
    """A finished FedAvg run: rounds, client updates, simulated time, per-client participation."""

    rounds: int
    updates: int
    sim_time: float
    participation: np.ndarray
    round_time_sum: float


def check_clients_per_round(scenario: Scenario, m: int) -> None:
    eligible = int(np.count_nonzero(scenario.p > 0))
    if m > eligible:
        raise ScenarioError("training.algorithm.clients_per_round",
                            f"must be at most the number of clients that can be sampled ({eligible}), got {m}")


class Rounds:
    """The round loop; :meth:`run` goes to the horizon, saving a checkpoint every
    ``checkpoint_every`` client updates when ``save`` is given. ``clients`` computes the round's
    local models (one call for the whole round when it is batched)."""

    def __init__(self, scenario: Scenario, workload: Workload, rule: RoundRule, clients: Any, monitor: Monitor, *,
                 checkpoint_every: int | None = None, save: Any = None) -> None:
        self.scenario = scenario
        self.workload = workload
        self.rule = rule
        self.clients = clients
        self.monitor = monitor
        self.m = rule.params["clients_per_round"]
        check_clients_per_round(scenario, self.m)
        n = scenario.n_clients
        streams = Streams(scenario.seed)
        self.service_rngs = streams.per_client("service", n)
        self.routing_rng = streams.generator("routing")
        self.laws = scenario.services()
        self.p = scenario.p
        self.checkpoint_every = checkpoint_every
        self.save = save
        self.next_checkpoint = checkpoint_every if checkpoint_every else math.inf
        self.result = RoundsResult(0, 0, 0.0, np.zeros(n, dtype=np.int64), 0.0)

    def start(self) -> None:
        self.monitor.load_state_dict({"next": 0, "last": -1, "wall_seconds": 0.0})
        self.monitor(0, 0.0)

    def draw(self) -> tuple[np.ndarray, float]:
        """The next round's clients and its duration max_k S_k."""
        clients = self.routing_rng.choice(len(self.p), size=self.m, replace=False, p=self.p)
        duration = max(float(self.laws[c].sample(self.service_rngs[c], 1)[0]) for c in clients)
        return clients, duration

    def run(self) -> RoundsResult:
        h, r = self.scenario.horizon, self.result
        while h.updates is None or r.updates < h.updates:
            clients, duration = self.draw()
            if h.time is not None and r.sim_time + duration > h.time:
                break
            self.round([int(c) for c in clients])
            r.rounds += 1
            r.updates += self.m
            r.sim_time += duration
            r.round_time_sum += duration
            r.participation[clients] += 1
            if r.updates >= self.monitor.next:
                self.monitor(r.updates, r.sim_time)
            if r.updates >= self.next_checkpoint:
                self.next_checkpoint = r.updates + self.checkpoint_every
                if self.save is not None:
                    self.save(self.state_dict())
        self.monitor.finish(r.updates, r.sim_time)
        return r

    def round(self, clients: list[int]) -> None:
        """The round's clients compute from the current model, then the rule aggregates."""
        steps = self.rule.work.steps
        batches = [self.workload.sampler.next(c, steps) for c in clients]
        current = self.rule.model.current
        self.rule.aggregate(clients, self.clients.compute(self.rule.work, [current] * len(clients), batches))

    def state_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "kind": "rounds",
            "updates": r.updates,
            "sim_time": r.sim_time,
            "result": {"rounds": r.rounds, "participation": r.participation.copy(), "round_time_sum": r.round_time_sum},
            "w": self.rule.model.w.cpu().clone(),
            "sampler": self.workload.sampler.state_dict(),
            "service_rngs": [g.bit_generator.state for g in self.service_rngs],
            "routing_rng": self.routing_rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "monitor": self.monitor.state_dict(),
            "rows": list(self.monitor.record.rows),
            "next_checkpoint": self.next_checkpoint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.model.copy_(state["w"].to(self.workload.device))
        self.workload.sampler.load_state_dict(state["sampler"])
        for g, s in zip(self.service_rngs, state["service_rngs"]):
            g.bit_generator.state = s
        self.routing_rng.bit_generator.state = state["routing_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.monitor.load_state_dict(state["monitor"])
        self.next_checkpoint = state["next_checkpoint"] if self.checkpoint_every else math.inf  # none asked now
        res = state["result"]
        self.result = RoundsResult(res["rounds"], state["updates"], state["sim_time"], res["participation"].copy(),
                                   res["round_time_sum"])


def rounds_table(scenario: Scenario, result: RoundsResult, sizes: np.ndarray) -> pd.DataFrame:
    """clients.csv of a FedAvg run: client, group, p, mean_service, service_cv, data_size,
    completions (rounds the client took part in) and staleness_sim (0 for every client that
    took part: each computes on the current model; empty for the others)."""
    return pd.DataFrame({
        "client": np.arange(scenario.n_clients),
        "group": [scenario.groups[g].name for g in scenario.client_group],
        "p": scenario.p,
        "mean_service": scenario.mean_service,
        "service_cv": np.array([g.service.cv for g in scenario.groups])[scenario.client_group],
        "data_size": sizes,
        "completions": result.participation,
        "staleness_sim": np.where(result.participation > 0, 0.0, np.nan),
    })
