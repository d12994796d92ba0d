"""Field paths: naming one field of a scenario mapping, and setting it before validation.

A field path is the path :class:`~fedsim.errors.ScenarioError` reports:
``name(.name | [index])*``, e.g. ``concurrency``, ``horizon.updates`` or
``clients[1].service.cv``. Sweeps set grid values with it, and ``fedsim run --set PATH=VALUE``
and ``fedsim.load_scenario(file, **overrides)`` set overrides with it; in every case the
field is set on the YAML mapping *before* it is parsed, so the result is validated as if it
had been written in the file.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from fedsim.errors import ScenarioError
from fedsim.inputs import parse_yaml

__all__ = ["apply_overrides", "parse_assignment", "set_path", "split_path"]

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*")
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def split_path(path: str, where: str) -> list[str | int]:
    """``clients[1].service.cv`` -> ``["clients", 1, "service", "cv"]``; ``where`` locates errors."""
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise ScenarioError(where, f"{path!r} is not a field path; write e.g. concurrency or clients[1].service.cv")
    return [name if name else int(index) for name, index in _STEP.findall(path)]


def set_path(doc: dict[str, Any], path: str, value: Any, where: str) -> bool:
    """Set the field at ``path`` of the scenario mapping ``doc`` (in place).

    Every step but the last must exist; the last may be absent from a mapping, and is then
    added. Returns whether the field was already there. Raises ScenarioError(``where``, ...).
    """
    steps = split_path(path, where)
    node: Any = doc
    walked = ""  # the path up to the current step
    for depth, step in enumerate(steps):
        prefix = walked or "the scenario"
        if isinstance(step, int):
            if not isinstance(node, list):
                raise ScenarioError(where, f"no such field in the base scenario ({prefix} is not a list)")
            if step >= len(node):
                noun = "groups" if prefix == "clients" else "entries"
                raise ScenarioError(where, f"no such field in the base scenario ({prefix} has {len(node)} {noun})")
        elif not isinstance(node, dict):
            raise ScenarioError(where, f"no such field in the base scenario ({prefix} is not a mapping)")
        elif step not in node and depth < len(steps) - 1:
            raise ScenarioError(where, f"no such field in the base scenario ({prefix} has no field {step!r})")
        if depth < len(steps) - 1:
            node = node[step]
            walked += f"[{step}]" if isinstance(step, int) else (f".{step}" if walked else step)
    existed = isinstance(step, int) or step in node
    node[step] = copy.deepcopy(value)
    return existed


def apply_overrides(doc: Mapping[str, Any], overrides: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """A copy of the scenario mapping ``doc`` with each ``path: value`` of ``overrides`` set.

    Errors name ``where`` followed by the path (``--set concurrency``, ``overrides.seed``).
    """
    if not isinstance(doc, Mapping):
        raise ScenarioError("", f"a scenario must be a mapping, got {type(doc).__name__}")
    out = copy.deepcopy(dict(doc))
    for path, value in overrides.items():
        set_path(out, path, value, f"{where}{path}")
    return out


def parse_assignment(text: str, where: str = "--set") -> tuple[str, Any]:
    """``PATH=VALUE`` (the value read as one YAML scalar or flow value) -> ``(path, value)``.

    ``concurrency=50`` gives 50 (an integer), ``routing=uniform`` the string,
    ``clients[0].service={dist: exponential, rate: 2}`` a mapping.
    """
    path, sep, raw = text.partition("=")
    path = path.strip()
    if not sep:
        raise ScenarioError(where, f"expected PATH=VALUE, such as concurrency=50; got {text!r}")
    split_path(path, f"{where} {path}")
    return path, parse_yaml(raw, f"{where} {path}")
