"""The interface of an update rule and the registry of rules.

A rule has two halves. What a client computes on the model version its task carried is
declared, not coded: :attr:`Rule.work` (a :class:`ClientWork`: one gradient, or local SGD
steps returning the local model or its change). The simulator computes it, for many tasks in
one batched call when it can (:mod:`fedsim.training.batching`), possibly before the task's
completion. What the server does with the result is :meth:`UpdateRule.apply`, called at each
completion in update order with the task's staleness; it changes the global model through
``model`` (:class:`~fedsim.training.versions.ModelVersions`: ``model.w`` is the current flat
vector; ``model.add_``, ``model.lerp_``, ``model.copy_`` and ``model.writable()`` change it
without disturbing the versions tasks hold). A synchronous rule (:class:`RoundRule`) gets the
results of a round's clients at once (:meth:`RoundRule.aggregate`).

Every rule accepts the common fields ``lr`` (the client's SGD step size), ``batch_size`` and
``local_steps``, plus its own ``fields``. Rules only call tensor methods, so this package
imports without torch (a scenario is validated without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedsim.fields import Field, integer, positive

COMMON_FIELDS: dict[str, Field] = {
    "lr": Field(0.05, positive, "SGD step size of the client's local steps"),
    "batch_size": Field(32, integer(1), "samples per gradient"),
    "local_steps": Field(1, integer(1), "SGD steps a client runs per task"),
}


OUTPUTS = ("gradient", "model", "delta")


@dataclass(frozen=True)
class ClientWork:
    """What a client computes from the version x_0 = w_s its task carried: K = ``steps`` SGD
    steps x_{k+1} = x_k - lr (g_i(x_k) + prox (x_k - x_0)), g_i(x_k) the gradient of the mean
    cross-entropy on the client's next mini-batch, returning ``output``: ``gradient``
    (g_i(x_0), K = 1 only), ``model`` (x_K) or ``delta`` (x_K - x_0)."""

    steps: int
    lr: float
    output: str = "gradient"
    prox: float = 0.0

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS or (self.output == "gradient" and self.steps != 1):
            raise ValueError(f"invalid client work {self}")


@dataclass
class Context:
    """What a rule works with: the global model and the network.

    ``model`` is the global model and its versions (``model.w`` the current vector,
    ``model.step`` the number of changes so far); ``p`` the routing probabilities; ``sizes``
    the clients' numbers of training samples.
    """

    model: Any
    p: np.ndarray
    sizes: np.ndarray


class Rule:
    """What every rule shares: its name, fields, parameters, the client's work, and (empty)
    checkpoint state.

    ``work`` defaults to one gradient (``local_steps`` = 1) or the change x_K - x_0 of the
    local model (``local_steps`` > 1); a rule may set another in its ``__init__``.
    """

    name: ClassVar[str] = ""
    fields: ClassVar[dict[str, Field]] = {}
    synchronous: ClassVar[bool] = False

    def __init__(self, params: dict[str, Any], context: Context) -> None:
        self.params = params
        self.lr: float = params["lr"]
        self.local_steps: int = params["local_steps"]
        self.model = context.model
        self.context = context
        self.work = ClientWork(self.local_steps, self.lr, "gradient" if self.local_steps == 1 else "delta")

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep besides the global model (e.g. a buffer)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class UpdateRule(Rule):
    """An asynchronous rule, applied at every completion."""

    def apply(self, client: int, result: Any, staleness: int, version_step: int) -> None:
        """Apply the update of ``client``: ``result`` is its :attr:`work` (a flat tensor, or for a
        gradient possibly one tensor per parameter: pass it to ``model.add_`` as it is) computed
        on a version ``staleness`` updates old, which ``version_step`` model changes preceded
        (so ``model.step - version_step`` changes happened since)."""
        raise NotImplementedError


class RoundRule(Rule):
    """A synchronous rule, applied once per round to the clients that took part."""

    synchronous = True

    def aggregate(self, clients: list[int], results: list[Any]) -> None:
        """Set the global model from the round's clients and their :attr:`work`, all computed
        from the current model (flat tensors)."""
        raise NotImplementedError


ALGORITHMS: dict[str, type[Rule]] = {}


def register_algorithm(cls: type[Rule]) -> type[Rule]:
    """Class decorator: register a rule under ``cls.name``."""
    ALGORITHMS[cls.name] = cls
    return cls
