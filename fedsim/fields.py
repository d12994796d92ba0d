"""The schema system of fedsim: field checks and declared plug-in parameters, in one room.

Everything that reads user input (the scenario and its sections, sweep files, plug-ins'
parameters, command-line values) checks it with these helpers, so that every problem is a
:class:`~fedsim.errors.ScenarioError` carrying the full field path (``clients[1].service.rate``,
``training.algorithm.lr``) and what is allowed. Two layers:

* checks: ``check_*(value, path, ...) -> value`` for one field (mapping keys, integers,
  numbers, strings, choices, lists);
* declared parameters: a plug-in (dataset, model, update rule, ...) lists its parameters as
  :class:`Field` objects (default and check), and :func:`parse_fields` validates a YAML
  mapping against them and fills the defaults.

This module sits at the bottom of the package: it depends on :mod:`fedsim.errors` only, and
imports neither torch nor any other fedsim room.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedsim.errors import ScenarioError

Check = Callable[[Any, str], Any]


# ---------------------------------------------------------------------------------------
# field checks: each returns the checked value or raises ScenarioError(path, ...)


def check_mapping(value: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    """``value`` must be a mapping whose keys are all in ``allowed``."""
    if not isinstance(value, Mapping):
        raise ScenarioError(path, f"must be a mapping with fields {', '.join(allowed)}, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise ScenarioError(f"{path}.{key}" if path else str(key), f"unknown field; allowed: {', '.join(allowed)}")
    return value


def check_int(value: Any, path: str, minimum: int, maximum: int | None = None) -> int:
    """An integer (not a bool, not a float) >= ``minimum`` (and <= ``maximum`` when given)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(path, f"must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ScenarioError(path, f"must be an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ScenarioError(path, f"must be an integer between {minimum} and {maximum}, got {value}")
    return value


def check_number(value: Any, path: str, *, positive: bool = False, low: float | None = None,
                 high: float | None = None) -> float:
    """A finite real number, > 0 if ``positive``, within [low, high] when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScenarioError(path, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ScenarioError(path, f"must be a positive number, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ScenarioError(path, f"must be between {low} and {high}, got {value}")
    return float(value)


def check_str(value: Any, path: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ScenarioError(path, f"must be a non-empty string, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------
# declared parameters of plug-ins


@dataclass(frozen=True)
class Field:
    """One parameter of a plug-in: its default (``None``: required) and its check."""

    default: Any
    check: Check
    doc: str = ""


@dataclass(frozen=True)
class Component:
    """A named plug-in with its checked parameters (a hashable, immutable value).

    ``params`` holds ``(field, value)`` pairs in declaration order; lists are stored as tuples.
    """

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    def __getitem__(self, key: str) -> Any:
        return self.kwargs[key]

    def to_dict(self) -> dict[str, Any]:
        """The YAML form, defaults filled in: ``{name: ..., field: value, ...}``."""
        return {"name": self.name, **{k: _plain(v) for k, v in self.params}}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def frozen(value: Any) -> Any:
    """Lists (recursively) to tuples, so that parameters are hashable."""
    if isinstance(value, list | tuple):
        return tuple(frozen(v) for v in value)
    return value


def parse_fields(raw: Mapping[str, Any], path: str, fields: Mapping[str, Field],
                 ignore: tuple[str, ...] = ("name",)) -> tuple[tuple[str, Any], ...]:
    """Check ``raw`` against ``fields`` (keys in ``ignore`` are skipped) and fill the defaults."""
    check_mapping(raw, path, (*ignore, *fields))
    out = []
    for key, field in fields.items():
        if key in raw:
            value = field.check(raw[key], f"{path}.{key}")
        elif field.default is None:
            raise ScenarioError(f"{path}.{key}", f"missing required field{': ' + field.doc if field.doc else ''}")
        else:
            value = field.default
        out.append((key, frozen(value)))
    return tuple(out)


# ---------------------------------------------------------------------------------------
# checks as values (for Field.check), each ``check(value, path) -> value``


def positive(value: Any, path: str) -> float:
    return check_number(value, path, positive=True)


def nonnegative(value: Any, path: str) -> float:
    return check_number(value, path, low=0.0)


def between(low: float, high: float, *, open_low: bool = False) -> Check:
    """A number in [low, high] (or (low, high] with ``open_low``)."""

    def check(value: Any, path: str) -> float:
        x = check_number(value, path, low=low, high=high)
        if open_low and x == low:
            raise ScenarioError(path, f"must be in ({low}, {high}], got {x}")
        return x

    return check


def integer(minimum: int) -> Check:
    return lambda value, path: check_int(value, path, minimum)


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(path, f"must be true or false, got {value!r}")
    return value


def string(value: Any, path: str) -> str:
    return check_str(value, path)


def choice(*allowed: str) -> Check:
    def check(value: Any, path: str) -> str:
        if value not in allowed:
            raise ScenarioError(path, f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    return check


def int_list(minimum: int, *, min_length: int = 0) -> Check:
    """A list of integers >= ``minimum`` (a single integer is a list of one)."""

    def check(value: Any, path: str) -> tuple[int, ...]:
        items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(items, list | tuple) or len(items) < min_length:
            raise ScenarioError(path, f"must be a list of at least {min_length} integers >= {minimum}, got {value!r}")
        return tuple(check_int(v, f"{path}[{k}]", minimum) for k, v in enumerate(items))

    return check


def named(raw: Any, path: str, default: str | None = None) -> tuple[str, Mapping[str, Any]]:
    """A plug-in given as ``name`` or ``{name: ..., field: ...}``: its name and its mapping."""
    if isinstance(raw, str):
        return check_str(raw, path), {}
    if not isinstance(raw, Mapping):
        raise ScenarioError(path, f"must be a name or a mapping with a name field, got {raw!r}")
    if "name" not in raw and default is None:
        raise ScenarioError(f"{path}.name", "missing required field")
    return check_str(raw.get("name", default), f"{path}.name"), raw
