"""Update rules of asynchronous (and synchronous) federated learning, one module each.

Adding a rule takes one file in this package: a subclass of
:class:`~fedsim.training.algorithms.base.UpdateRule` (or ``RoundRule``) decorated with
:func:`~fedsim.training.algorithms.base.register_algorithm`. Every module here is imported
when the package is, so the new rule is known by its ``name`` at once.
"""

from __future__ import annotations

import importlib
import pkgutil

from fedsim.training.algorithms.base import (
    ALGORITHMS,
    COMMON_FIELDS,
    ClientWork,
    Context,
    Rule,
    RoundRule,
    UpdateRule,
    register_algorithm,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ALGORITHMS", "COMMON_FIELDS", "ClientWork", "Context", "RoundRule", "Rule", "UpdateRule",
           "register_algorithm"]
