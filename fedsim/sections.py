"""Scenario sections parsed by their own modules, through one small registry.

The core of a scenario (clients, routing, concurrency, horizon, statistics) is parsed by
:mod:`fedsim.scenario`. Larger optional sections (``training:``, ``optimization:``, and any a
plug-in adds) belong to the rooms that use them and are registered here by *name* and
*import target*, so that :mod:`fedsim.scenario` depends on nothing above it and a section's
module (and whatever it imports) is loaded only when a scenario uses that section.

A section parser is ``parse(raw, draft) -> value``: ``raw`` is the YAML value of the section
(``None`` when the section is absent but one of its routings is used) and ``draft`` the
:class:`ScenarioDraft` parsed so far. The value must be immutable and have ``to_dict()``
giving the section back in the YAML schema, defaults filled in. A section that *provides a
routing* (``routing: optimal-wall-clock`` is provided by ``optimization``) may replace the
draft's ``groups``, ``routing`` and ``concurrency``: after it, the scenario has concrete
values and reproduces without the section's help. Sections are parsed in registration order.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SECTIONS", "ScenarioDraft", "Section", "provided_routings", "register_section"]


@dataclass
class ScenarioDraft:
    """The fields of a scenario being parsed, handed to each section parser in turn.

    ``concurrency`` is None while a section-provided routing has yet to choose it.
    ``sections`` holds the values of the sections parsed so far, by name.
    """

    name: str
    seed: int
    concurrency: int | None
    horizon: Any
    routing: str
    groups: tuple[Any, ...]
    server: Any
    base_dir: Path | None
    sections: dict[str, Any] = field(default_factory=dict)


SectionParser = Callable[[Any, ScenarioDraft], Any]


@dataclass(frozen=True)
class Section:
    """A registered section: its YAML key, ``"module:function"`` of its parser, and the
    routing names it provides (parsed then even when the key is absent)."""

    name: str
    target: str
    routings: tuple[str, ...] = ()

    def parser(self) -> SectionParser:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


SECTIONS: dict[str, Section] = {}


def register_section(name: str, target: str, routings: tuple[str, ...] = ()) -> None:
    """Register the section ``name`` parsed by ``target`` (``"package.module:function"``)."""
    SECTIONS[name] = Section(name, target, tuple(routings))


def provided_routings() -> dict[str, str]:
    """Routing name -> the section that resolves it."""
    return {routing: s.name for s in SECTIONS.values() for routing in s.routings}


register_section("training", "fedsim.training.config:parse_section")
register_section("optimization", "fedsim.optimize.config:parse_section",
                 routings=("optimal-per-update", "optimal-wall-clock"))
