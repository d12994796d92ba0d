"""Modules that are also the API function of their name: ``fedsim.run`` and ``fedsim.sweep``.

``fedsim.run(...)`` and ``fedsim.sweep(...)`` are the functions of :mod:`fedsim.api`, but
``fedsim.run`` and ``fedsim.sweep`` are also modules, and importing a module binds it as the
package's attribute of that name. So these two modules are made callable: calling the module
calls the API function, and ``fedsim.run`` is the same object however it was reached.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class CallableModule(types.ModuleType):
    """A module whose call is ``fedsim.api.<its name>(...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from fedsim import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


def make_callable(name: str) -> None:
    """Make the module ``name`` (being imported) callable as its API function."""
    sys.modules[name].__class__ = CallableModule
