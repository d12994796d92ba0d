"""FedBuff (Nguyen et al. 2022): buffered asynchronous aggregation."""

from __future__ import annotations

import math
from typing import Any

from fedsim.fields import Field, integer, positive
from fedsim.training.algorithms.base import ClientWork, UpdateRule, register_algorithm


@register_algorithm
class FedBuff(UpdateRule):
    """Buffer staleness-weighted client deltas; every K of them, apply their mean.

    Client i runs ``local_steps`` SGD steps from the version w_s it received and sends
    delta_i = w_client - w_s. The server adds delta_i / sqrt(1 + tau) to its buffer, where tau
    is the number of server model changes since w_s (FedBuff counts staleness in server
    versions; here the model changes once per K completions). When K deltas are buffered:
    w <- w + server_lr * buffer / K, and the buffer is emptied (Nguyen et al. 2022, Alg. 1).
    """

    name = "fedbuff"
    fields = {
        "buffer_size": Field(10, integer(1), "K: client deltas per server step"),
        "server_lr": Field(1.0, positive, "server learning rate eta_g"),
    }

    def __init__(self, params: dict[str, Any], context: Any) -> None:
        super().__init__(params, context)
        self.size, self.server_lr = params["buffer_size"], params["server_lr"]
        self.buffer = self.model.w.new_zeros(self.model.w.shape)
        self.count = 0
        self.work = ClientWork(self.local_steps, self.lr, "delta")

    def apply(self, client: int, result: Any, staleness: int, version_step: int) -> None:
        lag = self.model.step - version_step  # result: delta_i = w_client - w_s
        self.buffer.add_(result, alpha=1.0 / math.sqrt(1.0 + lag))
        self.count += 1
        if self.count == self.size:
            self.model.add_(self.buffer, alpha=self.server_lr / self.size)
            self.buffer.zero_()
            self.count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.copy_(state["buffer"])
        self.count = int(state["count"])
