"""The SimPy internals fedsim relies on (fedsim/simkernel.py), checked one by one.

If one of these fails after a SimPy upgrade, the engine's scheduling shortcuts are no longer
valid: fix fedsim/simkernel.py (or pin SimPy back) before trusting any simulation.
"""

from __future__ import annotations

import itertools
from heapq import heappush
from importlib.metadata import version

import simpy
from packaging.specifiers import SpecifierSet

from fedsim.simkernel import NORMAL, TESTED_SIMPY, URGENT, armed_event, event_queue, trigger_urgent


def test_installed_simpy_is_in_the_tested_range():
    assert version("simpy") in SpecifierSet(",".join(TESTED_SIMPY)), (version("simpy"), TESTED_SIMPY)
    assert simpy.__version__ == version("simpy")


def test_event_heap_entries_are_time_priority_id_event():
    env = simpy.Environment()
    heap, ids = event_queue(env)
    assert isinstance(heap, list) and isinstance(ids, itertools.count)
    timeout = env.timeout(2.5)
    assert heap == [(2.5, NORMAL, heap[0][2], timeout)]
    assert next(ids) == heap[0][2] + 1  # the counter numbers entries in scheduling order
    assert (URGENT, NORMAL) == (0, 1)


def test_an_armed_event_pushed_on_the_heap_fires_like_a_timeout_and_can_be_rearmed():
    env = simpy.Environment()
    heap, ids = event_queue(env)
    event = armed_event(env)
    assert event.triggered and event.ok and event.value is None
    fired = []

    def callback(e):
        fired.append((env.now, e))
        assert e.callbacks is None  # SimPy detached the list before calling it
        if len(fired) < 3:  # re-arm from inside the callback, as the stations do
            e.callbacks = [callback]
            heappush(heap, (env.now + 1.25, NORMAL, next(ids), e))

    event.callbacks = [callback]
    heappush(heap, (0.5, NORMAL, next(ids), event))
    env.run()
    assert fired == [(0.5, event), (1.75, event), (3.0, event)]


def test_one_event_on_the_heap_several_times_fires_once_per_entry():
    env = simpy.Environment()
    heap, ids = event_queue(env)
    event = armed_event(env)
    times = []

    def callback(e):
        times.append(env.now)
        if len(times) < 3:
            e.callbacks = [callback]

    event.callbacks = [callback]
    for t in (3.0, 1.0, 2.0):
        heappush(heap, (t, NORMAL, next(ids), event))
    env.run()
    assert times == [1.0, 2.0, 3.0]


def test_equal_times_go_by_priority_then_by_id_and_any_number_is_a_priority():
    env = simpy.Environment()
    heap, ids = event_queue(env)
    order = []
    for name, priority in (("b", NORMAL + 0.7), ("a", NORMAL), ("c", NORMAL + 0.2), ("d", NORMAL + 0.2)):
        event = armed_event(env)
        event.callbacks = [lambda e, name=name: order.append(name)]
        heappush(heap, (1.0, priority, next(ids), event))
    env.run()
    assert order == ["a", "c", "d", "b"]


def test_trigger_urgent_runs_before_ordinary_events_of_the_same_instant_and_stops_a_run():
    env = simpy.Environment()
    heap, ids = event_queue(env)
    stop = env.event()
    seen = []

    def first(_):
        seen.append("first")
        trigger_urgent(env, stop)

    for name, cb in (("first", first), ("second", lambda _: seen.append("second"))):
        event = armed_event(env)
        event.callbacks = [cb]
        heappush(heap, (1.0, NORMAL + (name == "second"), next(ids), event))
    env.run(until=stop)
    assert seen == ["first"] and env.now == 1.0 and stop.ok


def test_run_until_a_time_leaves_the_events_of_that_instant_unprocessed():
    env = simpy.Environment()
    heap, ids = event_queue(env)
    seen = []
    event = armed_event(env)
    event.callbacks = [lambda _: seen.append(env.now)]
    heappush(heap, (5.0, NORMAL, next(ids), event))
    env.run(until=5.0)
    assert seen == [] and env.now == 5.0
