"""Generalized AsyncSGD: the importance-weighted asynchronous SGD of Leconte et al. (2024)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.training.algorithms.base import UpdateRule, register_algorithm


@register_algorithm
class GeneralizedAsyncSGD(UpdateRule):
    """w <- w - lr / (n p_i) * g_i(w_s), applied as soon as client i's task completes.

    g_i(w_s) is a stochastic gradient of client i's loss f_i at the version w_s the task
    carried (s = the update index at dispatch). Since client i completes a fraction p_i of the
    updates, E[update] = sum_i p_i * g_i / (n p_i) = grad (1/n) sum_i f_i: the weight 1 / (n p_i)
    keeps the step unbiased for the federated objective under any routing p (Leconte et al.
    2024, Generalized AsyncSGD; arXiv 2502.08206). With ``local_steps`` K > 1 the client runs K
    SGD steps from w_s and the server adds its model change, weighted the same way:
    w <- w + (w_client - w_s) / (n p_i).
    """

    name = "generalized_async_sgd"

    def __init__(self, params: dict[str, Any], context: Any) -> None:
        super().__init__(params, context)
        p = np.asarray(context.p, dtype=float)
        with np.errstate(divide="ignore"):
            weight = np.where(p > 0, self.importance(p), 0.0)
        self.weight = [float(c) for c in weight]  # per client, a Python float for the hot path
        self.step = [-self.lr * c for c in self.weight]

    def importance(self, p: np.ndarray) -> np.ndarray:
        """The weight of each client's update: 1 / (n p_i)."""
        return 1.0 / (len(p) * p)

    def apply(self, client: int, result: Any, staleness: int, version_step: int) -> None:
        # result: g_i(w_s) (one local step) or w_client - w_s (several)
        self.model.add_(result, alpha=self.step[client] if self.local_steps == 1 else self.weight[client])
