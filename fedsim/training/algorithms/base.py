"""The interface of an update rule and the registry of rules.

An asynchronous rule (:class:`UpdateRule`) is called at every completion with the client, the
model version the task carried and the task's staleness; it runs the client's work on that
version (one gradient, or local SGD steps) through the :class:`Context`'s trainer and changes
the global model through ``model`` (:class:`~fedsim.training.versions.ModelVersions`:
``model.w`` is the current flat float32 vector; ``model.add_``, ``model.lerp_``,
``model.copy_`` and ``model.writable()`` change it without disturbing the versions tasks
hold). A synchronous rule (:class:`RoundRule`) is called once per round with the clients that
took part.

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


@dataclass
class Context:
    """What a rule works with: the global model, the clients' trainer and the network.

    ``model`` is the global model and its versions (``model.w`` the current vector,
    ``model.step`` the number of changes so far); ``trainer`` computes gradients and local
    models (:class:`fedsim.training.client.LocalTrainer`); ``p`` the routing probabilities;
    ``sizes`` the clients' numbers of training samples.
    """

    model: Any
    trainer: Any
    p: np.ndarray
    sizes: np.ndarray


class Rule:
    """What every rule shares: its name, fields, parameters, and (empty) checkpoint state."""

    name: ClassVar[str] = ""
    fields: ClassVar[dict[str, Field]] = {}
    synchronous: ClassVar[bool] = False

    def __init__(self, params: dict[str, Any], context: Context) -> None:
        self.params = params
        self.lr: float = params["lr"]
        self.local_steps: int = params["local_steps"]
        self.model = context.model
        self.trainer = context.trainer
        self.context = context

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep besides the global model (e.g. a buffer)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class UpdateRule(Rule):
    """An asynchronous rule, applied at every completion."""

    def complete(self, client: int, version: Any, staleness: int) -> None:
        """Apply the update of ``client``, computed on ``version`` (``version.flat`` the snapshot
        as a flat tensor, ``version.views`` the same as parameter-shaped views, ``version.step``
        the model changes before it), which is ``staleness`` updates old."""
        raise NotImplementedError


class RoundRule(Rule):
    """A synchronous rule, applied once per round to the clients that took part."""

    synchronous = True

    def round(self, clients: list[int]) -> None:
        """Run the round's clients from the current model and aggregate into it."""
        raise NotImplementedError


ALGORITHMS: dict[str, type[Rule]] = {}


def register_algorithm(cls: type[Rule]) -> type[Rule]:
    """Class decorator: register a rule under ``cls.name``."""
    ALGORITHMS[cls.name] = cls
    return cls
