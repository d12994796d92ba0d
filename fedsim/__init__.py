"""fedsim: asynchronous federated learning simulated as a closed queueing network.

The Python API (:mod:`fedsim.api`) is reachable from the package, loaded on first use so
that ``import fedsim`` stays light (no torch, no matplotlib, no simulation code)::

    import fedsim
    res = fedsim.run("scenarios/two_speeds.yaml", concurrency=20)

``fedsim.run`` and ``fedsim.sweep`` are the modules of those names, made callable
(:mod:`fedsim.entry`): ``fedsim.run(...)`` is :func:`fedsim.api.run` and ``fedsim.sweep(...)``
:func:`fedsim.api.sweep`, however the modules were imported.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("fedsim")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_API = {"load_scenario": "fedsim.api", "open_run": "fedsim.api", "Run": "fedsim.report",
        "Scenario": "fedsim.scenario", "ScenarioError": "fedsim.errors"}
__all__ = ["Run", "Scenario", "ScenarioError", "load_scenario", "open_run", "run", "sweep"]


def __getattr__(name: str) -> Any:
    if name in ("run", "sweep"):
        return import_module(f"fedsim.{name}")  # a callable module, bound as fedsim.<name>
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
