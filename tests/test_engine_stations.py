"""The extended network (links, server, energy) against exact mean value analysis, and its rules.

Statistical tests: fixed seeds; every station's mean number of tasks and time per visit, the
server's queue and busy fraction, the throughput, every client's staleness and power, and the
energy per update must lie within Bonferroni-corrected batch-means intervals (family-wise
error 1% per scenario) around the exact values, computed here by mean value analysis of the
closed product-form network (Reiser & Lavenberg 1980, visit ratios p_i on route i and 1 at the
server; delay stations have no queueing term), independently of fedsim.analytic. The
intervals must be narrow enough to catch a wrong model, and the same runs must reject two
plausible mistakes (a delay link treated as a FIFO queue; staleness without the server queue).

Exact tests: the base model's sample path against a bare heapq loop (benchmarks/bench_engine.py)
and against the station engine, event for event; the extended network against its bare loop;
conservation, FIFO order and stream independence on the trace.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import REPO, bonferroni_critical, bonferroni_z
from fedsim.engine import STAGES, CompletionRecords, Engine
from fedsim.scenario import Scenario, Streams, parse_scenario
from fedsim.stations import StationEngine
from fedsim.stations_tracking import StationTracker, power_vectors
from fedsim.tracking import Tracker

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_engine import run_bare, run_bare_extended  # noqa: E402

ROUTE = ("downlink", "compute", "uplink")


@dataclass
class Exact:
    """Exact stationary means by MVA: per route station (rows ROUTE) and the server."""

    throughput: float
    queue: np.ndarray  # E_C[X], shape (3, n)
    time: np.ndarray  # mean time per visit
    busy: np.ndarray  # mean tasks in service
    server_queue: float
    server_busy: float
    server_time: float
    staleness: np.ndarray
    power: np.ndarray
    energy_per_update: float


def exact(s: Scenario, *, delay_as_fifo: bool = False, server_in_staleness: bool = True) -> Exact:
    """MVA of the extended network; the two flags switch on the mistakes the tests must reject."""
    n, p = s.n_clients, s.p
    mean, fifo = np.zeros((3, n)), np.zeros((3, n), bool)
    for i, g in enumerate(s.client_group):
        group = s.groups[g]
        for row, station in ((0, group.downlink), (1, None), (2, group.uplink)):
            if row == 1:
                mean[row, i], fifo[row, i] = group.service.mean, True
            elif station is not None:
                mean[row, i], fifo[row, i] = station.law.mean, station.kind == "fifo" or delay_as_fifo
    server = s.server.law.mean if s.server is not None else 0.0
    queue, server_queue = np.zeros((3, n)), 0.0
    for k in range(1, s.concurrency + 1):
        prev, server_prev = queue, server_queue
        time = mean * (1 + fifo * prev)
        server_time = server * (1 + server_prev)
        lam = k / (np.sum(p * time) + server_time)
        queue, server_queue = lam * p * time, lam * server_time
    busy = lam * p * mean  # Little's law for the tasks in service, FIFO or delay
    # staleness: route-i tasks among the C - 1 others at an update epoch, per p_i (arrival theorem)
    staleness = prev.sum(axis=0) / p + (server_prev if server_in_staleness else 0.0)
    watts, server_watts = power_vectors(s)
    power = (watts["compute"] * busy[1] + watts["idle"] * (1 - busy[1]) + watts["downlink"] * busy[0]
             + watts["uplink"] * busy[2])
    u = lam * server
    total = power.sum() + server_watts.busy * u + server_watts.idle * (1 - u)
    return Exact(lam, queue, time, busy, server_queue, u, server_time, staleness, power, total / lam)


def scenario(clients, *, concurrency, server_rate=None, updates=150_000, seed=5, server_power=None) -> Scenario:
    doc = {"name": "ext", "seed": seed, "concurrency": concurrency,
           "horizon": {"updates": updates, "warmup": updates // 20}, "clients": clients}
    if server_rate is not None:
        doc["server"] = {"service": {"dist": "exponential", "rate": server_rate}}
    if server_power is not None:
        doc["server_power"] = server_power
    return parse_scenario(doc)


def exp(mean, station="delay"):
    return {"dist": "exponential", "mean": mean, "station": station}


POWER = {"compute": 4.0, "uplink": 1.5, "downlink": 0.7, "idle": 0.3}

SCENARIOS = {
    # FIFO links on both sides for one group, a delay uplink for another, a moderate server
    "fifo-links": lambda: scenario([
        {"group": "a", "count": 2, "service": {"dist": "exponential", "rate": 1.5}, "routing_weight": 1.0,
         "downlink": exp(0.3, "fifo"), "uplink": exp(0.4, "fifo"), "power": POWER},
        {"group": "b", "count": 2, "service": {"dist": "exponential", "rate": 3.0}, "routing_weight": 2.0,
         "uplink": exp(0.2)},
        {"group": "c", "count": 1, "service": {"dist": "exponential", "rate": 0.8}, "routing_weight": 1.0},
    ], concurrency=6, server_rate=6.0, server_power={"busy": 20.0, "idle": 5.0}),
    # the server is the bottleneck (utilisation near 0.95): its queue holds most tasks
    "server-bottleneck": lambda: scenario([
        {"group": "fast", "count": 3, "service": {"dist": "exponential", "rate": 4.0},
         "downlink": exp(0.1), "uplink": exp(0.15, "fifo")},
        {"group": "mid", "count": 2, "service": {"dist": "exponential", "rate": 2.0}, "power": POWER},
    ], concurrency=8, server_rate=2.5, seed=7),
    # non-exponential delay links (lognormal cv 2, gamma cv 0.5): insensitivity keeps the product form
    "lognormal-delay": lambda: scenario([
        {"group": "a", "count": 2, "service": {"dist": "exponential", "rate": 1.0}, "power": POWER,
         "downlink": {"dist": "lognormal", "mean": 0.8, "cv": 2.0}, "uplink": {"dist": "gamma", "mean": 0.5, "cv": 0.5}},
        {"group": "b", "count": 2, "service": {"dist": "exponential", "rate": 2.5},
         "downlink": {"dist": "lognormal", "mean": 1.5, "cv": 2.0}},
    ], concurrency=5, server_rate=8.0, seed=3),
}


@dataclass
class Run:
    scenario: Scenario
    stations: object
    stats: object
    engine: StationEngine


def simulate(s: Scenario, observers=()) -> Run:
    stations, tracker = StationTracker(s), Tracker(s)
    engine = Engine(s, [stations, tracker, *observers]).run()
    return Run(s, stations.result(), tracker.result(), engine)


@pytest.fixture(scope="module", params=list(SCENARIOS))
def run(request):
    return simulate(SCENARIOS[request.param]())


def comparisons(run: Run, model: Exact) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, simulated, half-width, exact) for every figure the tests check."""
    st, s = run.stations, run.scenario
    rows = [("throughput", st.throughput, st.throughput_ci, model.throughput),
            ("staleness", run.stats.clients.staleness_mean, run.stats.clients.staleness_ci, model.staleness)]
    for k, name in enumerate(ROUTE):
        f = st.stations[name]
        exists = model.queue[k] > 0
        rows += [(f"{name} queue", f.queue[exists], f.queue_ci[exists], model.queue[k][exists]),
                 (f"{name} time", f.time[exists], f.time_ci[exists], model.time[k][exists]),
                 (f"{name} busy", f.busy[exists], f.busy_ci[exists], model.busy[k][exists])]
    if s.server is not None:
        rows += [("server queue", st.server_queue, st.server_queue_ci, model.server_queue),
                 ("server busy", st.server_utilisation, st.server_utilisation_ci, model.server_busy)]
    powered = model.power > 0
    rows += [("power", st.client_power[powered], st.client_power_ci[powered], model.power[powered]),
             ("energy per update", st.energy_per_update, st.energy_per_update_ci, model.energy_per_update)]
    return [(name, *map(np.atleast_1d, values)) for name, *values in rows]


def z_scores(run: Run, model: Exact) -> tuple[dict[str, np.ndarray], float]:
    rows = comparisons(run, model)
    k, level = run.stats.batches, run.scenario.statistics.confidence
    m = sum(r[1].size for r in rows)
    z = {name: bonferroni_z(sim, ci, ex, batches=k, level=level) for name, sim, ci, ex in rows}
    return z, bonferroni_critical(m, k)


def test_stations_server_and_energy_match_mean_value_analysis(run):
    model = exact(run.scenario)
    z, crit = z_scores(run, model)
    for name, values in z.items():
        assert np.all(values < crit), (name, values, crit)
    # the intervals are narrow enough to mean something
    for name, sim, ci, ex in comparisons(run, model):
        assert np.all(ci / ex < 0.06), (name, ci / ex)
    assert run.stats.throughput == pytest.approx(run.stations.throughput, rel=1e-12)  # one window for both


@pytest.mark.parametrize("mistake", ["delay_as_fifo", "no_server_in_staleness"])
def test_plausible_mistakes_are_rejected(mistake):
    """Power: the same comparison rejects a delay link treated as FIFO, and staleness that
    leaves out the tasks waiting at the server."""
    name = "lognormal-delay" if mistake == "delay_as_fifo" else "server-bottleneck"
    run = simulate(SCENARIOS[name]())
    model = exact(run.scenario, delay_as_fifo=mistake == "delay_as_fifo",
                  server_in_staleness=mistake != "no_server_in_staleness")
    z, crit = z_scores(run, model)
    assert max(values.max() for values in z.values()) > crit


def test_update_weighted_staleness_is_c_minus_one(run):
    st, s = run.stats, run.scenario
    assert abs(st.mean_staleness - (s.concurrency - 1)) < 1.5 * st.mean_staleness_ci
    assert np.sum(s.p * exact(s).staleness) == pytest.approx(s.concurrency - 1, rel=1e-12)


class Trace:
    """Observer keeping every completion record."""

    def __init__(self) -> None:
        self.chunks: list[CompletionRecords] = []

    def on_records(self, r: CompletionRecords) -> None:
        self.chunks.append(r)

    def column(self, name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in self.chunks])


def traced(s: Scenario, cls=Engine) -> tuple[Trace, Engine]:
    trace = Trace()
    engine = cls(s, [trace]).run()
    return trace, engine


def test_trace_conservation_fifo_order_and_disciplines():
    s = scenario(SCENARIOS["fifo-links"]().raw["clients"], concurrency=6, server_rate=6.0, updates=20_000)
    trace, engine = traced(s)
    stages, client = trace.column("stages"), trace.column("client")
    dispatch, done = trace.column("dispatch_time"), trace.column("completion_time")
    apply, sent = np.arange(len(client)), trace.column("dispatch_update")
    # conservation: C tasks always in the network; every task dispatched after time 0 is applied
    # or still in flight, exactly once
    flight = engine.in_flight()
    assert len(flight) == s.concurrency and engine.updates == 20_000
    dispatched = np.concatenate([sent, [t.dispatch_update for t in flight]])
    counts = np.bincount(dispatched)
    assert counts[0] == s.concurrency and np.all(counts[1:] == 1) and counts.size == engine.updates + 1
    # times never decrease along a route, and updates are applied in time order
    route = np.column_stack([dispatch, stages])
    assert np.all(np.diff(route, axis=1) >= 0) and np.all(stages[:, -1] == done)
    assert np.all(np.diff(done) >= 0) and np.all(apply - sent >= 0)
    arrival = np.column_stack([dispatch, stages[:, 1:-1:2]])  # arrival at each stage
    for k, name in enumerate(STAGES):
        start, end = stages[:, 2 * k], stages[:, 2 * k + 1]
        for i in range(s.n_clients):
            group = s.groups[s.client_group[i]]
            spec = group.service if name == "compute" else s.server if name == "server" else getattr(group, name)
            mine = client == i if name != "server" else np.ones_like(client, bool)
            a, b, e = arrival[mine, k], start[mine], end[mine]
            if spec is None:
                assert np.all(a == b) and np.all(b == e)  # absent: takes no time
                continue
            kind = "fifo" if name in ("compute", "server") else spec.kind
            if kind == "delay":
                assert np.all(b == a)  # every transfer starts at once
                continue
            order = np.lexsort((b, a))  # by arrival (tasks arriving together: in service order)
            a, b, e = a[order], b[order], e[order]
            assert np.all(np.diff(b) >= 0) and np.all(np.diff(e) >= 0)  # served in arrival order
            assert np.all(b[1:] >= e[:-1])  # one at a time
            assert np.all(b == np.maximum(a, np.concatenate([[0.0], e[:-1]])))  # and never idle with work
            if name == "server":
                break


def test_base_model_sample_path_is_the_bare_loop_and_the_station_engines():
    """Exact: the fast path, the station engine on a base scenario and an independent bare
    heapq loop drawing from the same streams give the same updates at the same times."""
    s = parse_scenario({
        "name": "base", "seed": 9, "concurrency": 7, "horizon": {"updates": 30_000},
        "clients": [{"group": "a", "count": 3, "service": {"dist": "exponential", "rate": 1.0}},
                    {"group": "b", "count": 4, "service": {"dist": "lognormal", "mean": 0.5, "cv": 1.5}},
                    {"group": "c", "count": 2, "service": {"dist": "exponential", "rate": 4.0}}]})
    fast, fast_engine = traced(s)
    stations, station_engine = traced(s, StationEngine)
    assert type(fast_engine) is Engine and type(station_engine) is StationEngine
    for name in ("client", "dispatch_update", "dispatch_time", "completion_time"):
        assert np.array_equal(fast.column(name), stations.column(name)), name
    bare = run_bare(s)
    client, staleness = fast.column("client"), np.arange(30_000) - fast.column("dispatch_update")
    assert bare.count == np.bincount(client, minlength=s.n_clients).tolist()
    assert bare.stale_sum == np.bincount(client, weights=staleness, minlength=s.n_clients).astype(int).tolist()
    assert bare.time == fast.column("completion_time")[-1] == fast_engine.env.now


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_extended_sample_path_is_the_bare_loop(name):
    s = SCENARIOS[name]()
    s = parse_scenario(s.raw | {"horizon": {"updates": 20_000}})
    trace, engine = traced(s)
    bare = run_bare_extended(s)
    client = trace.column("client")
    staleness = np.arange(20_000) - trace.column("dispatch_update")
    assert bare.count == np.bincount(client, minlength=s.n_clients).tolist()
    assert bare.stale_sum == np.bincount(client, weights=staleness, minlength=s.n_clients).astype(int).tolist()
    assert bare.time == engine.env.now


def service_sequences(trace: Trace, n: int) -> dict[tuple[int, int], np.ndarray]:
    """Per (stage, client): the service durations in the order the services started."""
    stages, client = trace.column("stages"), trace.column("client")
    out = {}
    for k in range(len(STAGES) - 1):
        start, end = stages[:, 2 * k], stages[:, 2 * k + 1]
        for i in range(n):
            mine = client == i
            order = np.argsort(start[mine], kind="stable")
            out[k, i] = (end[mine] - start[mine])[order]
    return out


def test_adding_a_link_or_a_server_changes_no_other_stations_draws():
    """Stream independence: compute, link and routing draws are the same sequences whether or
    not other links and a server exist."""
    base = [{"group": "a", "count": 2, "service": {"dist": "exponential", "rate": 2.0}},
            {"group": "b", "count": 2, "service": {"dist": "exponential", "rate": 1.0},
             "downlink": {"dist": "lognormal", "mean": 0.4, "cv": 1.0}}]
    more = [dict(base[0], uplink=exp(0.3, "fifo")), base[1]]
    a = scenario(base, concurrency=1, updates=3_000)
    b = scenario(more, concurrency=1, server_rate=5.0, updates=3_000)
    # C = 1: one task at a time, so every service is a whole draw (durations, not waits)
    ta, _ = traced(a)
    tb, _ = traced(b)
    sa, sb = service_sequences(ta, 4), service_sequences(tb, 4)
    for key in sa:
        if key[0] == 2:
            continue  # the uplink only exists in b
        m = min(sa[key].size, sb[key].size)
        # durations are differences of absolute times: equal up to the round-off of those times
        atol = 8 * np.finfo(float).eps * max(ta.column("completion_time")[-1], tb.column("completion_time")[-1])
        assert m > 100 and np.allclose(sa[key][:m], sb[key][:m], rtol=0, atol=atol), key
    assert np.array_equal(ta.column("client"), tb.column("client"))  # routing: the same clients in order
    assert not np.allclose(ta.column("completion_time"), tb.column("completion_time"))


def test_new_streams_are_appended_after_the_old_ones():
    """Streams are indexed by position: the purposes of the base model keep theirs, so its
    sample path for a given seed is the one it always had."""
    assert Streams.PURPOSES[:3] == ("service", "routing", "training")
    assert set(Streams.PURPOSES[3:7]) == {"downlink", "uplink", "server", "ties"}


def test_time_horizon_and_energy_without_power():
    s = parse_scenario({"name": "t", "seed": 1, "concurrency": 3, "horizon": {"time": 4000.0, "warmup": 400.0},
                        "server": {"service": {"dist": "exponential", "rate": 5.0}},
                        "clients": [{"count": 3, "service": {"dist": "exponential", "rate": 1.0},
                                     "uplink": exp(0.5)}]})
    run = simulate(s)
    assert run.engine.env.now == 4000.0 and run.stats.window_start == 400.0
    assert run.stations.power == 0 and np.all(run.stations.client_power == 0)
    assert np.all(run.stations.stations["downlink"].queue == 0)
    # Little's law on the sample path: tasks present = each client's visit rate x time per visit,
    # up to the tasks in flight at the window's edges
    f, st = run.stations.stations["uplink"], run.stats
    rate = st.clients.completions / (st.sim_time - st.window_start)
    assert np.allclose(f.queue, rate * f.time, rtol=0.01)
