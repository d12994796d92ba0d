"""Plug-ins: the user's own modules that register distributions, routing policies, update
rules, models, datasets or scenario sections, found without editing fedsim or PYTHONPATH.

A plug-in is an ordinary Python module whose import registers something with one of fedsim's
registries (``@register_distribution``, ``@register_routing``, ``@register_algorithm``,
``@register_model``, ``@register_dataset``, ``@register_partition``, ``register_section``). fedsim imports it in three
ways:

* ``plugins: [mylaws, mylab.policies]`` in a scenario or sweep file: imported before the rest
  of the file is parsed, each name looked up first in the file's own folder (``mylaws.py`` or
  a package ``mylab/`` next to the file), then on the Python path;
* the ``fedsim.plugins`` entry-point group of installed packages (``[project.entry-points.
  "fedsim.plugins"] mylab = "mylab.fedsim_plugin"`` in their pyproject.toml): every entry is
  loaded once per process, when the first scenario or sweep is parsed. An entry names a
  module (importing it registers its plug-ins) or a function (called once, without arguments);
* a factory path, ``model: "mynets:wide"``: the module is looked up next to the scenario, then
  on the Python path (:func:`resolve_callable`).

A sweep's worker processes (a local pool or Ray tasks) start without the driver's imports, so
the driver hands every cell the modules that registered plug-ins in it
(:func:`registered_modules`: entries of the registries defined outside fedsim, whichever way
they were imported, a notebook's ``import`` included) and the worker imports them before it
parses the cell's scenario.

This module sits at the bottom of the package, next to :mod:`fedsim.fields`: it imports
:mod:`fedsim.errors` only (the registries are read from ``sys.modules``, never imported).
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import machinery, metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from fedsim.errors import ScenarioError

__all__ = ["ENTRY_POINT_GROUP", "import_near", "load_entry_points", "load_plugins", "registered_modules",
           "resolve_callable"]

ENTRY_POINT_GROUP = "fedsim.plugins"
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
OBJECT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")

# registries whose entries may come from plug-ins: (module, attribute, field of an entry that
# holds the registered function, or None when the entry is the registered class or function)
REGISTRIES = (("fedsim.distributions", "DISTRIBUTIONS", None), ("fedsim.routing", "ROUTING_POLICIES", None),
              ("fedsim.training.algorithms.base", "ALGORITHMS", None), ("fedsim.training.models", "MODELS", "build"),
              ("fedsim.training.datasets", "DATASETS", "load"), ("fedsim.training.partition", "PARTITIONS", "split"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@contextmanager
def _search_first(folder: Path) -> Iterator[None]:
    """``folder`` at the front of the import path while a plug-in is imported (so that the
    plug-in's own ``import sibling`` works too); the path is restored afterwards."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        try:
            sys.path.remove(entry)
        except ValueError:  # the plug-in removed it itself
            pass


def _origin(module: ModuleType) -> Path | None:
    """The file or package folder a module was imported from."""
    locations = getattr(module, "__path__", None)
    if locations:
        return Path(next(iter(locations))).resolve()
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def import_near(name: str, folder: Path | None, path: str) -> ModuleType:
    """Import module ``name`` (dotted), looking first in ``folder``, then on the Python path.

    A top-level module ``name.split(".")[0]`` found in ``folder`` (a ``.py`` file or a package)
    wins over one of the same name elsewhere; if another module of that name is already
    imported, that is an error rather than a silent mix. Every failure (not found, an
    exception while the module runs) is a one-line ScenarioError at ``path``.
    """
    if not isinstance(name, str) or not MODULE_NAME.fullmatch(name):
        raise ScenarioError(path, f"must be a module name such as mylaws or mylab.policies, got {name!r}")
    top = name.partition(".")[0]
    spec = machinery.PathFinder.find_spec(top, [str(folder)]) if folder is not None and folder.is_dir() else None
    try:
        if spec is None:
            return importlib.import_module(name)
        local = Path(spec.submodule_search_locations[0] if spec.submodule_search_locations else spec.origin)
        loaded = sys.modules.get(top)
        if loaded is not None and _origin(loaded) != local.resolve():
            raise ScenarioError(path, f"{top!r} next to the file ({local}) clashes with the module of that name "
                                      f"already imported from {_origin(loaded)}; rename one of them")
        with _search_first(folder):
            return importlib.import_module(name)
    except ScenarioError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            where = f"in {folder} nor " if folder is not None else ""
            raise ScenarioError(path, f"cannot import {name!r}: no such module {where}on the Python path") from None
        raise ScenarioError(path, f"importing {name!r} failed: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 -- whatever the user's module raises is reported on one line
        raise ScenarioError(path, f"importing {name!r} failed: {_first_line(exc)}") from None


def resolve_callable(target: str, folder: Path | None, path: str) -> Callable[..., Any]:
    """The function (or class) named ``module:name``, the module found as by :func:`import_near`."""
    if not isinstance(target, str) or not OBJECT_PATH.fullmatch(target):
        raise ScenarioError(path, f"must be written module:name, such as mynets:wide, got {target!r}")
    module_name, _, attribute = target.partition(":")
    found = getattr(import_near(module_name, folder, path), attribute, None)
    if not callable(found):
        raise ScenarioError(path, f"{module_name!r} has no callable {attribute!r}")
    return found


@functools.cache
def load_entry_points() -> tuple[str, ...]:
    """Load every entry of the ``fedsim.plugins`` group once per process; their names.

    A failing entry is a ScenarioError naming the entry and its package.
    """
    names = []
    for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        where = f"plugins (entry point {entry.name} = {entry.value} of group {ENTRY_POINT_GROUP})"
        try:
            loaded = entry.load()
            if callable(loaded) and not isinstance(loaded, ModuleType):
                loaded()
        except Exception as exc:  # noqa: BLE001 -- an installed package's failure, reported on one line
            raise ScenarioError(where, f"loading it failed: {_first_line(exc)}") from None
        names.append(entry.name)
    return tuple(names)


def load_plugins(raw: Any, folder: Path | None, path: str = "plugins") -> tuple[str, ...]:
    """The ``plugins:`` field of a scenario or sweep file: check it, import every module
    (after the installed entry points); the module names, in order.

    ``raw`` is None (no field) or a list of module names; ``folder`` is the file's folder.
    """
    load_entry_points()
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ScenarioError(path, f"must be a list of module names, such as [mylaws], got {raw!r}")
    names = []
    for k, name in enumerate(raw):
        import_near(name, folder, f"{path}[{k}]")
        names.append(name)
    return tuple(names)


def registered_modules() -> tuple[tuple[str, Path | None], ...]:
    """The modules outside fedsim that registered plug-ins in this process, with the folder
    their top-level package was imported from: ``((module, folder), ...)``, sorted.

    A worker process imports them (:func:`import_near`) to know what the driver knows.
    Definitions in ``__main__`` (a script, a notebook) cannot be imported elsewhere and are
    left out.
    """
    defined: set[str] = set()
    for module_name, attribute, registered in REGISTRIES:
        registry = getattr(sys.modules.get(module_name), attribute, {})
        for entry in registry.values():
            defined.add(getattr(getattr(entry, registered) if registered else entry, "__module__", "") or "")
    sections = getattr(sys.modules.get("fedsim.sections"), "SECTIONS", {})
    defined.update(section.target.partition(":")[0] for section in sections.values())
    out = []
    for name in sorted(defined):
        if not name or name == "__main__" or name == "fedsim" or name.startswith("fedsim."):
            continue
        top = sys.modules.get(name.partition(".")[0])
        origin = _origin(top) if top is not None else None
        out.append((name, None if origin is None else origin.parent))
    return tuple(out)
