"""FedAsync (Xie, Koyejo and Gupta 2019): staleness-discounted mixing of the client model."""

from __future__ import annotations

from typing import Any

from fedsim.fields import Field, between, choice, nonnegative
from fedsim.training.algorithms.base import ClientWork, UpdateRule, register_algorithm


def staleness_weight(kind: str, tau: int, a: float, b: float) -> float:
    """s(tau) of Xie et al. (2019), §5.2: constant 1; polynomial (tau + 1)^(-a);
    hinge 1 if tau <= b, else 1 / (a (tau - b) + 1)."""
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return (tau + 1.0) ** -a
    return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)


@register_algorithm
class FedAsync(UpdateRule):
    """w <- (1 - a_t) w + a_t w_client, a_t = alpha * s(staleness).

    The client runs ``local_steps`` SGD steps from the version w_s it received, on
    f_i(x) + rho/2 ||x - w_s||^2 (the proximal term of FedAsync; rho = 0 by default),
    giving w_client.
    """

    name = "fedasync"
    fields = {
        "alpha": Field(0.6, between(0.0, 1.0, open_low=True), "mixing weight before the staleness discount"),
        "staleness": Field("polynomial", choice("constant", "polynomial", "hinge"), "staleness function s"),
        "a": Field(0.5, nonnegative, "exponent (polynomial) or slope (hinge) of s"),
        "b": Field(4.0, nonnegative, "hinge: staleness up to which s = 1"),
        "rho": Field(0.0, nonnegative, "proximal weight of the client's local objective"),
    }

    def __init__(self, params: dict[str, Any], context: Any) -> None:
        super().__init__(params, context)
        self.alpha, self.kind = params["alpha"], params["staleness"]
        self.a, self.b, self.rho = params["a"], params["b"], params["rho"]
        self.work = ClientWork(self.local_steps, self.lr, "model", prox=self.rho)

    def mixing(self, staleness: int) -> float:
        """a_t = alpha * s(staleness)."""
        return self.alpha * staleness_weight(self.kind, staleness, self.a, self.b)

    def apply(self, client: int, result: Any, staleness: int, version_step: int) -> None:
        self.model.lerp_(result, self.mixing(staleness))  # result: w_client
