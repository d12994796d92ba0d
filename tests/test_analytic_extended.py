"""Tests of the extended network (links, server, energy) against computations that do not use it.

References used here:
* the Markov chain of the network itself, built state by state: every station holds its tasks
  in order (FIFO: the head is served; delay: every task is served), the server queue keeps the
  route of each task in FIFO order, and a task in service carries the phase of its service law
  (exponential, or phase-type at delay stations for insensitivity); stationary law by linear
  algebra;
* staleness by its definition on that chain: a tagged task joins its route at an update epoch
  (Palm weights), and the expected number of other updates applied before its own comes from
  first-step analysis, with no formula of the code under test;
* the base model's :func:`fedsim.analytic.solve`, and mean value analysis (:func:`mva_extended`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.analytic import (
    ExtendedNetwork,
    PowerModel,
    mva_extended,
    power_draw,
    solve,
    solve_extended,
)

# --------------------------------------------------------------------------- the Markov chain


@dataclass(frozen=True)
class Law:
    """A phase-type service law: start in phase k with probability ``start[k]``; phase k lasts
    Exp(``rates[k]``) and then moves to phase k' with probability ``moves[k][k']`` (else ends)."""

    start: tuple[float, ...]
    rates: tuple[float, ...]
    moves: tuple[tuple[float, ...], ...]

    @property
    def mean(self) -> float:
        start, rates, moves = np.array(self.start), np.array(self.rates), np.array(self.moves)
        # expected time in each phase: start (I - moves)^{-1} / rates
        return float(np.linalg.solve((np.eye(len(rates)) - moves).T, start) @ (1.0 / rates))


def exponential(mean: float) -> Law:
    return Law((1.0,), (1.0 / mean,), ((0.0,),))


def erlang(mean: float, k: int) -> Law:
    moves = tuple(tuple(1.0 if b == a + 1 else 0.0 for b in range(k)) for a in range(k))
    return Law((1.0,) + (0.0,) * (k - 1), (k / mean,) * k, moves)


def hyperexponential(mean: float, a: float, ratio: float) -> Law:
    """Two exponential branches, chosen with probabilities (a, 1 - a), means in the ratio ``ratio``."""
    m2 = mean / (a * ratio + 1 - a)
    return Law((a, 1 - a), (1.0 / (ratio * m2), 1.0 / m2), ((0.0, 0.0), (0.0, 0.0)))


@dataclass(frozen=True)
class ChainStation:
    route: int | None  # None: the server
    kind: str  # "fifo" | "delay"
    law: Law


class Chain:
    """The network's continuous-time Markov chain, with an optional tagged task.

    A state is a tuple (one entry per station) of tuples of tasks; a task is
    ``(route, tagged, phase)`` with phase -1 while it waits. FIFO stations keep arrival order;
    delay stations are kept sorted (their tasks are exchangeable).
    """

    def __init__(self, routes: list[list[ChainStation]], server: ChainStation | None, p) -> None:
        self.routes = routes
        self.p = np.asarray(p, float)
        self.stations: list[ChainStation] = [s for route in routes for s in route]
        self.first = []  # station index of the first station of each route
        self.next: dict[int, int | None] = {}  # None: the task's update is applied on leaving
        self.server = None
        k = 0
        for route in routes:
            self.first.append(k)
            for j in range(len(route)):
                self.next[k + j] = k + j + 1 if j + 1 < len(route) else -1
            k += len(route)
        if server is not None:
            self.server = k
            self.stations.append(server)
            self.next = {m: (k if nxt == -1 else nxt) for m, nxt in self.next.items()}
            self.next[k] = None
        else:
            self.next = {m: (None if nxt == -1 else nxt) for m, nxt in self.next.items()}

    # -- building blocks
    def _arrive(self, state: list, m: int, task: tuple) -> list[tuple[float, tuple]]:
        """Task (route, tagged) joins station m: [(probability, new state)]."""
        station, queue = self.stations[m], state[m]
        if station.kind == "fifo" and queue:
            new = list(state)
            new[m] = queue + ((*task, -1),)
            return [(1.0, tuple(new))]
        out = []
        for phase, prob in enumerate(station.law.start):
            if prob > 0:
                new = list(state)
                entries = queue + ((*task, phase),)
                new[m] = tuple(sorted(entries)) if station.kind == "delay" else entries
                out.append((prob, tuple(new)))
        return out

    def _dispatch(self, state: tuple, tagged: bool, only_route: int | None = None) -> list[tuple[float, tuple, int]]:
        """A new task routed by p (or to ``only_route``): [(probability, new state, route)]."""
        out = []
        for j, pj in enumerate(self.p):
            if pj == 0 or (only_route is not None and j != only_route):
                continue
            weight = 1.0 if only_route is not None else pj
            for prob, new in self._arrive(list(state), self.first[j], (j, tagged)):
                out.append((weight * prob, new, j))
        return out

    def transitions(self, state: tuple) -> list[tuple[float, tuple, str]]:
        """[(rate, next state, what)], what in {"move", "update", "tagged-update"}."""
        out = []
        for m, queue in enumerate(state):
            station = self.stations[m]
            law = station.law
            served = range(len(queue)) if station.kind == "delay" else range(min(1, len(queue)))
            for e in served:
                route, tagged, phase = queue[e]
                rate = law.rates[phase]
                rest = queue[:e] + queue[e + 1:]
                for nxt_phase, prob in enumerate(law.moves[phase]):  # next phase, same station
                    if prob > 0:
                        entries = rest[:e] + ((route, tagged, nxt_phase),) + rest[e:]
                        new = list(state)
                        new[m] = tuple(sorted(entries)) if station.kind == "delay" else entries
                        out.append((rate * prob, tuple(new), "move"))
                leave = rate * (1.0 - sum(law.moves[phase]))
                if leave <= 0:
                    continue
                after = [list(state)]
                after[0][m] = rest
                starts = [(1.0, after[0])]
                if station.kind == "fifo" and rest:  # the next task starts its service
                    starts = []
                    for ph, prob in enumerate(law.start):
                        if prob > 0:
                            new = list(after[0])
                            new[m] = ((rest[0][0], rest[0][1], ph),) + rest[1:]
                            starts.append((prob, new))
                for prob, new in starts:
                    dest = self.next[m]
                    if dest is not None:
                        for prob2, new2 in self._arrive(new, dest, (route, tagged)):
                            out.append((leave * prob * prob2, new2, "move"))
                    elif tagged:
                        out.append((leave * prob, tuple(new), "tagged-update"))
                    else:
                        for prob2, new2, _ in self._dispatch(tuple(new), False):
                            out.append((leave * prob * prob2, new2, "update"))
        return out

    def states_from(self, starts: list[tuple]) -> tuple[list[tuple], dict[tuple, int]]:
        """All states reachable from ``starts`` (without the tagged task's own update)."""
        seen = {start: k for k, start in enumerate(dict.fromkeys(starts))}
        order = list(seen)
        todo = deque(order)
        while todo:
            for _, new, what in self.transitions(todo.popleft()):
                if what != "tagged-update" and new not in seen:
                    seen[new] = len(order)
                    order.append(new)
                    todo.append(new)
        return order, seen

    def start_state(self, C: int) -> tuple:
        """C tasks at the first station of route 0."""
        state = [()] * len(self.stations)
        for _ in range(C):
            state = list(self._arrive(state, self.first[0], (0, False))[0][1])
        return tuple(state)

    def stationary(self, C: int) -> tuple[list[tuple], np.ndarray]:
        """The states (all reachable ones: the chain is irreducible) and the stationary law."""
        states, index = self.states_from([self.start_state(C)])
        Q = np.zeros((len(states), len(states)))
        for s, x in enumerate(states):
            for rate, new, _ in self.transitions(x):
                Q[s, index[new]] += rate
        np.fill_diagonal(Q, Q.diagonal() - Q.sum(axis=1))
        A = Q.T.copy()
        A[-1, :] = 1.0
        b = np.zeros(len(states))
        b[-1] = 1.0
        return states, np.linalg.solve(A, b)


def chain_measures(chain: Chain, C: int) -> dict:
    """Throughput, mean tasks and busy fraction per station, and tagged-task staleness per route."""
    states, pi = chain.stationary(C)
    throughput = 0.0
    palm: list[list[tuple[float, tuple]]] = [[] for _ in chain.routes]  # (weight, state a tagged task joins)
    for x, w in zip(states, pi):
        for rate, _, what in chain.transitions(x):
            if what == "update":
                throughput += w * rate
        # update epochs seen by a tagged task routed to i: redo each update with a tagged new task
        for m, queue in enumerate(x):
            if chain.next[m] is not None or not queue:
                continue
            station = chain.stations[m]
            served = range(len(queue)) if station.kind == "delay" else range(1)
            for e in served:
                phase = queue[e][2]
                leave = station.law.rates[phase] * (1.0 - sum(station.law.moves[phase]))
                rest = queue[:e] + queue[e + 1:]
                starts = [(1.0, rest)]
                if station.kind == "fifo" and rest:
                    starts = [(prob, ((rest[0][0], rest[0][1], ph),) + rest[1:])
                              for ph, prob in enumerate(station.law.start) if prob > 0]
                for prob, left in starts:
                    after = list(x)
                    after[m] = left
                    for i in range(len(chain.routes)):
                        for prob2, joined, _ in chain._dispatch(tuple(after), True, only_route=i):
                            palm[i].append((w * leave * prob * prob2, joined))
    queue = np.array([[len(x[m]) for m in range(len(chain.stations))] for x in states], float)
    busy = np.array([[sum(1 for t in x[m] if t[2] >= 0) for m in range(len(chain.stations))] for x in states], float)
    staleness = np.array([_tagged_staleness(chain, joins) if chain.p[i] > 0 else np.nan
                          for i, joins in enumerate(palm)])
    return {"throughput": throughput, "queue": pi @ queue, "in_service": pi @ busy, "staleness": staleness}


def _tagged_staleness(chain: Chain, joins: list[tuple[float, tuple]]) -> float:
    """E[number of other updates before the tagged task's own], averaged over the Palm weights."""
    states, index = chain.states_from([z for _, z in joins])
    M = np.zeros((len(states), len(states)))
    reward = np.zeros(len(states))
    for s, x in enumerate(states):
        moves = chain.transitions(x)
        total = sum(rate for rate, _, _ in moves)
        for rate, new, what in moves:
            if what == "tagged-update":
                continue
            if what == "update":
                reward[s] += rate / total
            M[s, index[new]] += rate / total
    h = np.linalg.solve(np.eye(len(states)) - M, reward)
    weight = sum(w for w, _ in joins)
    return sum(w * h[index[z]] for w, z in joins) / weight


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """A small extended network: per client compute rate, links (kind, law or None), server law."""

    mu: tuple[float, ...]
    p: tuple[float, ...]
    C: int
    downlink: tuple[tuple[str, Law] | None, ...]
    uplink: tuple[tuple[str, Law] | None, ...]
    server: Law | None

    def network(self) -> ExtendedNetwork:
        def means(links):
            return [0.0 if link is None else link[1].mean for link in links]

        def delay(links):
            return [link is None or link[0] == "delay" for link in links]

        return ExtendedNetwork(np.array(self.mu), downlink=means(self.downlink), downlink_delay=delay(self.downlink),
                               uplink=means(self.uplink), uplink_delay=delay(self.uplink),
                               server=0.0 if self.server is None else self.server.mean)

    def chain(self) -> Chain:
        routes = []
        for i, mu in enumerate(self.mu):
            route = []
            if self.downlink[i] is not None:
                route.append(ChainStation(i, *self.downlink[i]))
            route.append(ChainStation(i, "fifo", exponential(1.0 / mu)))
            if self.uplink[i] is not None:
                route.append(ChainStation(i, *self.uplink[i]))
            routes.append(route)
        server = None if self.server is None else ChainStation(None, "fifo", self.server)
        return Chain(routes, server, self.p)


E = exponential
CASES = {
    # both kinds of link on both routes, and a server
    "two-routes-server": Case((1.0, 3.0), (0.6, 0.4), 4, (("delay", E(0.7)), ("fifo", E(0.3))),
                              (("fifo", E(0.5)), ("delay", E(1.2))), E(0.2)),
    # a route without links, a busy server
    "three-routes-server": Case((0.8, 2.0, 5.0), (0.5, 0.3, 0.2), 3, (None, ("fifo", E(0.4)), ("delay", E(0.9))),
                                (("delay", E(0.6)), None, ("fifo", E(0.25))), E(0.5)),
    # links, no server (instantaneous updates)
    "links-no-server": Case((1.5, 0.5), (0.3, 0.7), 4, (("fifo", E(0.2)), ("delay", E(1.0))),
                            (("delay", E(0.4)), ("fifo", E(0.8))), None),
    # a server, no links
    "server-only": Case((1.0, 2.0, 4.0), (0.2, 0.3, 0.5), 4, (None, None, None), (None, None, None), E(0.3)),
}


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """Chain measures of every case (each chain is solved once for the module)."""
    return {name: chain_measures(case.chain(), case.C) for name, case in CASES.items()}


def _chain_station_means(case: Case, measures: dict) -> dict[str, np.ndarray]:
    """Chain means laid out as the solution's: per route station (absent: 0) and the server."""
    out = {name: np.zeros(len(case.mu)) for name in ("downlink", "compute", "uplink")}
    busy = {name: np.zeros(len(case.mu)) for name in out}
    m = 0
    for i in range(len(case.mu)):
        for name, link in (("downlink", case.downlink[i]), ("compute", True), ("uplink", case.uplink[i])):
            if link is not None:
                out[name][i], busy[name][i] = measures["queue"][m], measures["in_service"][m]
                m += 1
    server = (measures["queue"][m], measures["in_service"][m]) if case.server is not None else (0.0, 0.0)
    return {"queue": out, "in_service": busy, "server": server}


# --------------------------------------------------------------------------- against the chain


@pytest.mark.parametrize("name", list(CASES))
def test_extended_solution_matches_markov_chain(name, measured):
    case, chain = CASES[name], measured[name]
    sol = solve_extended(case.network(), np.array(case.p), case.C)
    means = _chain_station_means(case, chain)
    assert sol.throughput == pytest.approx(chain["throughput"], rel=1e-9)
    for station, values in sol.stations.items():
        np.testing.assert_allclose(values.mean_queue, means["queue"][station], rtol=1e-9, atol=1e-12)
        fifo = ~np.isnan(values.utilisation)
        np.testing.assert_allclose(values.utilisation[fifo], means["in_service"][station][fifo], rtol=1e-9, atol=1e-12)
        # time per visit by Little's law on the chain's means
        np.testing.assert_allclose(values.time, means["queue"][station] / (chain["throughput"] * np.array(case.p)),
                                   rtol=1e-9, atol=1e-12)
    server_queue, server_busy = means["server"]
    assert sol.server.mean_queue == pytest.approx(server_queue, rel=1e-9, abs=1e-12)
    assert sol.server.utilisation == pytest.approx(server_busy, rel=1e-9, abs=1e-12)
    assert sol.server.time == pytest.approx(server_queue / chain["throughput"], rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(sol.staleness, chain["staleness"], rtol=1e-9)
    assert sol.mean_staleness == pytest.approx(case.C - 1, rel=1e-12)


def test_plausible_wrong_staleness_formulas_are_rejected(measured):
    """The chain tells apart the formula from close variants: no server share, the server share
    divided by p_i, and E_C in place of E_{C-1}."""
    for name in ("two-routes-server", "three-routes-server"):
        case, chain = CASES[name], measured[name]
        sol = solve_extended(case.network(), np.array(case.p), case.C)
        p = np.array(case.p)
        route_prev = sum(s.mean_queue_prev for s in sol.stations.values()) / p
        route_now = sum(s.mean_queue for s in sol.stations.values()) / p
        wrong = {
            "no server share": route_prev,
            "server share over p_i": route_prev + sol.server.mean_queue_prev / p,
            "E_C instead of E_{C-1}": route_now + sol.server.mean_queue,
        }
        for label, values in wrong.items():
            gap = np.max(np.abs(values - chain["staleness"]) / chain["staleness"])
            assert gap > 1e-2, (name, label, gap)


def test_delay_stations_are_insensitive_to_their_law():
    """Same means at the delay links, other laws (Erlang-3, a hyperexponential of cv > 1): the
    chain's throughput, queues and staleness do not move, so the formula (which sees means only)
    is exact there too. At a FIFO link the same change moves them."""
    base = CASES["two-routes-server"]
    exact = solve_extended(base.network(), np.array(base.p), base.C)
    swapped = Case(base.mu, base.p, base.C, (("delay", erlang(0.7, 3)), base.downlink[1]),
                   (base.uplink[0], ("delay", hyperexponential(1.2, 0.2, 6.0))), base.server)
    chain = chain_measures(swapped.chain(), swapped.C)
    assert chain["throughput"] == pytest.approx(exact.throughput, rel=1e-9)
    np.testing.assert_allclose(chain["staleness"], exact.staleness, rtol=1e-9)
    means = _chain_station_means(swapped, chain)
    for station, values in exact.stations.items():
        np.testing.assert_allclose(means["queue"][station], values.mean_queue, rtol=1e-9, atol=1e-12)
    # the negative control: an Erlang-3 law at the FIFO uplink of route 0
    fifo_swapped = Case(base.mu, base.p, base.C, base.downlink, (("fifo", erlang(0.5, 3)), base.uplink[1]), base.server)
    other = chain_measures(fifo_swapped.chain(), fifo_swapped.C)
    assert abs(other["throughput"] / exact.throughput - 1) > 1e-3


def test_power_matches_the_chain(measured):
    """Client power: compute while the compute station is busy, idle otherwise, link power per
    transfer in service (every task at a delay link, the head at a FIFO link); server busy/idle."""
    case, chain = CASES["two-routes-server"], measured["two-routes-server"]
    sol = solve_extended(case.network(), np.array(case.p), case.C)
    power = PowerModel(compute=np.array([3.0, 5.0]), uplink=np.array([1.5, 0.7]), downlink=np.array([0.8, 2.0]),
                       idle=np.array([0.2, 0.4]), server_busy=150.0, server_idle=60.0)
    draw = power_draw(sol, power)
    means = _chain_station_means(case, chain)
    busy = means["in_service"]
    client = (power.compute * busy["compute"] + power.idle * (1 - busy["compute"])
              + power.uplink * busy["uplink"] + power.downlink * busy["downlink"])
    np.testing.assert_allclose(draw.client, client, rtol=1e-9)
    server_busy = means["server"][1]
    assert draw.server == pytest.approx(150.0 * server_busy + 60.0 * (1 - server_busy), rel=1e-9)
    assert draw.per_update == pytest.approx((client.sum() + draw.server) / chain["throughput"], rel=1e-9)


# --------------------------------------------------------------------------- special cases and scale


def _random_extended(rng: np.random.Generator, n: int, server: float | None = None) -> tuple[ExtendedNetwork, np.ndarray]:
    mu = 10.0 ** rng.uniform(-1, 1, n)
    links = {}
    for link in ("downlink", "uplink"):
        mean = 10.0 ** rng.uniform(-1.5, 0.5, n) * (rng.random(n) < 0.8)
        links[link], links[f"{link}_delay"] = mean, rng.random(n) < 0.5
    server = float(rng.uniform(0.001, 0.05)) if server is None else server
    return ExtendedNetwork(mu, **links, server=server), rng.dirichlet(np.ones(n))


@pytest.mark.parametrize("C", [1, 2, 7, 40])
def test_no_links_no_server_is_the_base_model(C):
    rng = np.random.default_rng(C)
    mu, p = 10.0 ** rng.uniform(-1, 1, 12), rng.dirichlet(np.ones(12))
    p[3] = 0.0
    p /= p.sum()
    base = solve(mu, p, C)
    ext = solve_extended(ExtendedNetwork(mu), p, C)
    assert ext.throughput == pytest.approx(base.throughput, rel=1e-12)
    np.testing.assert_allclose(ext.log_G, base.log_G, rtol=1e-12)
    np.testing.assert_allclose(ext.compute.mean_queue, base.mean_queue, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ext.compute.utilisation, base.utilisation, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ext.staleness, base.staleness, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ext.sojourn, base.sojourn, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ext.compute.time, base.sojourn, rtol=1e-12, atol=0)
    assert ext.server.mean_queue == 0 and np.all(ext.downlink.mean_queue == 0) and np.all(ext.uplink.time[p > 0] == 0)


@pytest.mark.parametrize(("n", "C"), [(5, 1), (30, 12), (200, 150)])
def test_mva_cross_check(n, C):
    network, p = _random_extended(np.random.default_rng(n + C), n)
    sol = solve_extended(network, p, C)
    throughput, queue, queue_prev = mva_extended(network, p, C)
    assert sol.throughput == pytest.approx(throughput, rel=1e-10)
    for station, values in sol.stations.items():
        np.testing.assert_allclose(values.mean_queue, queue[station], rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(values.mean_queue_prev, queue_prev[station], rtol=1e-9, atol=1e-13)
    assert sol.server.mean_queue == pytest.approx(queue["server"], rel=1e-9)
    assert sol.server.mean_queue_prev == pytest.approx(queue_prev["server"], rel=1e-9, abs=1e-300)


def test_large_extended_network_stays_finite():
    rng = np.random.default_rng(11)
    n, C = 10_000, 1_000
    network, p = _random_extended(rng, n, server=2e-3)
    sol = solve_extended(network, p, C)
    assert np.isfinite(sol.throughput) and np.all(np.isfinite(sol.log_G))
    for values in sol.stations.values():
        assert np.all(np.isfinite(values.mean_queue)) and np.all(np.isfinite(values.time))
    assert np.all(np.isfinite(sol.staleness))
    assert sol.mean_staleness == pytest.approx(C - 1, rel=1e-8)
    total = sum(v.mean_queue.sum() for v in sol.stations.values()) + sol.server.mean_queue
    assert total == pytest.approx(C, rel=1e-8)
    throughput, queue, _ = mva_extended(network, p, C)
    assert sol.throughput == pytest.approx(throughput, rel=1e-9)
    assert sol.server.mean_queue == pytest.approx(queue["server"], rel=1e-8)


def test_heavy_load_reaches_the_bottleneck_capacity():
    """lambda -> 1 / max(rho) over FIFO stations; with a slow server it is the server's rate."""
    network = ExtendedNetwork(np.array([4.0, 6.0]), downlink=[0.5, 0.5], uplink=[0.1, 0.2], server=0.5)
    p = np.array([0.5, 0.5])
    lam = [solve_extended(network, p, C).throughput for C in (1, 3, 8, 20, 400)]
    assert np.all(np.diff(lam[:-1]) > 0)
    assert lam[-2] == pytest.approx(2.0, rel=1e-3) and lam[-2] < 2.0
    assert lam[-1] == pytest.approx(2.0, rel=1e-12)


networks = st.builds(
    lambda seed, n, C: (*_random_extended(np.random.default_rng(seed), n), C),
    st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(1, 60),
)


@settings(max_examples=60, deadline=None)
@given(networks)
def test_staleness_identity_and_conservation(case):
    network, p, C = case
    sol = solve_extended(network, p, C)
    assert sol.mean_staleness == pytest.approx(C - 1, rel=1e-10, abs=1e-12)
    total = sum(v.mean_queue.sum() for v in sol.stations.values()) + sol.server.mean_queue
    assert total == pytest.approx(C, rel=1e-10)
    # Little's law: the mean response time of a route is its sojourn
    np.testing.assert_allclose(sum(v.mean_queue for v in sol.stations.values()) / (sol.throughput * p)
                               + sol.server.mean_queue / sol.throughput, sol.sojourn, rtol=1e-10)


def test_energy_per_update_closed_form():
    """P / lambda = P_idle / lambda + sum_i p_i ((compute_i - idle_i) / mu_i + uplink_i E[U_i]
    + downlink_i E[D_i]) + (busy - idle) / mu_s: idle power per update plus the energy of one task."""
    network, p = _random_extended(np.random.default_rng(3), 6)
    rng = np.random.default_rng(4)
    watts = {k: rng.uniform(0.1, 5.0, 6) for k in ("compute", "uplink", "downlink", "idle")}
    power = PowerModel(**watts, server_busy=100.0, server_idle=30.0)
    for C in (1, 4, 30):
        sol = solve_extended(network, p, C)
        idle = watts["idle"].sum() + 30.0
        task = float(p @ ((watts["compute"] - watts["idle"]) / network.mu + watts["uplink"] * network.uplink
                          + watts["downlink"] * network.downlink)) + 70.0 * network.server
        assert power_draw(sol, power).per_update == pytest.approx(idle / sol.throughput + task, rel=1e-12)


# --------------------------------------------------------------------------- guards


def test_solution_is_immutable():
    sol = solve_extended(ExtendedNetwork([1.0, 2.0], uplink=[0.5, 0.1]), [0.5, 0.5], 3)
    with pytest.raises(ValueError):
        sol.uplink.mean_queue[0] = 0.0
    with pytest.raises(ValueError):
        sol.network.uplink[0] = 0.0


@pytest.mark.parametrize("kwargs", [
    {"mu": [1.0, 0.0]},
    {"mu": [1.0, 2.0], "uplink": [0.5]},
    {"mu": [1.0, 2.0], "downlink": [0.5, -1.0]},
    {"mu": [1.0, 2.0], "downlink": [0.5, np.nan]},
    {"mu": [1.0, 2.0], "uplink_delay": [True]},
    {"mu": [1.0, 2.0], "server": -0.1},
    {"mu": [1.0, 2.0], "server": np.inf},
])
def test_invalid_networks_are_refused(kwargs):
    with pytest.raises(ValueError):
        ExtendedNetwork(**kwargs)


def test_invalid_routing_and_power_are_refused():
    network = ExtendedNetwork([1.0, 2.0], uplink=[0.5, 0.1])
    for p, C in (([0.5, 0.6], 3), ([1.0], 3), ([0.5, 0.5], 0)):
        with pytest.raises(ValueError):
            solve_extended(network, p, C)
        with pytest.raises(ValueError):
            mva_extended(network, p, C)
    with pytest.raises(ValueError):
        PowerModel(compute=[1.0], uplink=[1.0], downlink=[1.0], idle=[-1.0])
    with pytest.raises(ValueError):
        power_draw(solve_extended(network, [0.5, 0.5], 2), PowerModel([1.0], [1.0], [1.0], [1.0]))
