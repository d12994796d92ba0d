"""FedAvg (McMahan et al. 2017): the synchronous baseline, one aggregation per round."""

from __future__ import annotations

from typing import Any

from fedsim.fields import Field, integer
from fedsim.training.algorithms.base import ClientWork, RoundRule, register_algorithm


@register_algorithm
class FedAvg(RoundRule):
    """w <- sum_{k in S} (m_k / sum_{j in S} m_j) w_k over the round's clients S.

    Each client k of the round runs ``local_steps`` SGD steps from the current w, giving w_k;
    m_k is its number of training samples. The round loop (which clients, how long a round
    takes) is :class:`fedsim.training.fedavg.Rounds`.
    """

    name = "fedavg"
    fields = {"clients_per_round": Field(10, integer(1), "m: clients sampled per round")}

    def __init__(self, params: dict[str, Any], context: Any) -> None:
        super().__init__(params, context)
        self.sizes = [float(s) for s in context.sizes]
        self.sum = self.model.w.new_zeros(self.model.w.shape)
        self.work = ClientWork(self.local_steps, self.lr, "model")

    def aggregate(self, clients: list[int], results: list[Any]) -> None:
        total = sum(self.sizes[c] for c in clients)
        self.sum.zero_()
        for c, local in zip(clients, results):
            self.sum.add_(local, alpha=self.sizes[c] / total)
        self.model.copy_(self.sum)
