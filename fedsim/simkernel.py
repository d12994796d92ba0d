"""The one place where fedsim relies on SimPy's private internals, and what it relies on.

fedsim's stations schedule their service ends straight onto SimPy's event heap instead of
creating a ``Timeout`` per service (a ``Timeout`` allocates an event and goes through
``Environment.schedule``; one re-armed event per station is lighter, see :mod:`fedsim.engine`).
That needs four facts about SimPy that are not public API:

1. ``env._queue`` is the event heap, a list ordered by ``heapq`` of entries
   ``(time, priority, id, event)``; ``env.step()`` pops the smallest, sets ``env.now`` to its
   time, detaches the event's ``callbacks`` list (sets it to ``None``) and calls each callback
   with the event. Entries at equal times are taken by priority (``URGENT = 0`` before
   ``NORMAL = 1``; any number compares), then by id.
2. ``env._eid`` is the counter (``itertools.count``) that numbers entries in scheduling order.
3. An event whose ``_ok`` is True and ``_value`` None is a succeeded event, which is what a
   ``Timeout`` is when it fires: pushing such an event onto the heap is ``env.timeout``
   without the allocation. Since ``step`` detaches the callbacks before calling them, the same
   event can be pushed again, with its callbacks set again, as soon as it has fired; it can
   even sit on the heap several times, provided its callbacks are set again by each firing
   that leaves another entry of it pending.
4. Setting ``_ok``/``_value`` and scheduling with ``URGENT`` triggers an event before every
   ``NORMAL`` event of the same instant (``Event.succeed`` would schedule it ``NORMAL``).

``tests/test_simkernel.py`` checks every one of these facts, and that the installed SimPy is
in :data:`TESTED_SIMPY` (the range pinned in pyproject.toml): if SimPy changes them, that test
fails by name before any statistics go wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import simpy
from simpy.core import NORMAL, URGENT

__all__ = ["NORMAL", "TESTED_SIMPY", "URGENT", "armed_event", "event_queue", "trigger_urgent"]

TESTED_SIMPY = (">=4.1.1", "<4.2")
"""SimPy versions whose internals were checked against the facts above (pyproject.toml pins it)."""


def event_queue(env: simpy.Environment) -> tuple[list[tuple[float, Any, int, simpy.Event]], Iterator[int]]:
    """SimPy's event heap and its entry counter (facts 1 and 2).

    ``heappush(heap, (time, priority, next(ids), event))`` is ``env.schedule(event,
    priority, time - env.now)`` with the absolute time given exactly (no subtraction and
    re-addition of ``env.now``, so a time computed on a grid stays on it).
    """
    return env._queue, env._eid


def armed_event(env: simpy.Environment) -> simpy.Event:
    """A succeeded event with no value, to be pushed onto the heap as a timeout (fact 3).

    Set its ``callbacks`` before each push; SimPy detaches them when it fires.
    """
    event = simpy.Event(env)
    event._ok = True
    event._value = None
    return event


def trigger_urgent(env: simpy.Environment, event: simpy.Event) -> None:
    """Succeed ``event`` now, before every ordinary event of this instant (fact 4)."""
    event._ok = True
    event._value = None
    env.schedule(event, URGENT)
