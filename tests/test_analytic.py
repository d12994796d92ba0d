"""Tests of the product-form model against computations that do not use it.

References used here:
* the Markov chain of the network itself (generator on all states, stationary law by
  linear algebra), with staleness read off the chain in two ways: the state a moving task
  sees on arrival (jump chain), and the definition (count the updates during a tagged
  task's stay, by first-step analysis);
* Buzen's recursion in exact rational arithmetic (``fractions.Fraction``), and the direct
  sum ``E_C[X_i] = sum_k rho_i^k G(C-k) / G(C)``;
* closed forms: ``lambda(1) = 1 / sum_i rho_i``; identical loads give
  ``G(k) = binom(n+k-1, k) rho^k``;
* the published worked example (docs/model.md).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.analytic import (
    NetworkSolution,
    log_normalizing_constants,
    mva,
    solve,
    throughput_curve,
)

# --------------------------------------------------------------------------- references


def _states(n: int, C: int) -> np.ndarray:
    """All queue vectors x >= 0 with sum(x) = C, one per row."""
    rows = []
    for bars in itertools.combinations(range(C + n - 1), n - 1):
        edges = (-1, *bars, C + n - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(n)])
    return np.array(rows, dtype=np.int64)


def _stationary(mu: np.ndarray, p: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    """States and stationary law of the CTMC, by solving pi Q = 0, sum(pi) = 1."""
    n = mu.size
    states = _states(n, C)
    index = {tuple(x): s for s, x in enumerate(states)}
    Q = np.zeros((len(states), len(states)))
    for s, x in enumerate(states):
        for i in range(n):
            if x[i] == 0:
                continue
            for j in range(n):
                if j == i or p[j] == 0:
                    continue  # a task routed back to its own client leaves the state as is
                y = x.copy()
                y[i] -= 1
                y[j] += 1
                Q[s, index[tuple(y)]] += mu[i] * p[j]
        Q[s, s] = -Q[s].sum()
    A = Q.T.copy()
    A[-1, :] = 1.0
    b = np.zeros(len(states))
    b[-1] = 1.0
    return states, np.linalg.solve(A, b)


def _chain_measures(mu, p, C):
    """Throughput, E_C[X], staleness (arrival theorem), P(X_i >= 1) read off the Markov chain.

    A completion at client k in state x happens at rate pi(x) mu_k 1[x_k > 0]; the new task
    goes to j with probability p_j (independent of x and k) and sees x - e_k there, so the
    mean number of tasks a task joining j finds is E_{Palm}[(x - e_k)_j] and
    E[tau_j] = that / p_j by the discrete Little's law.
    """
    mu, p = np.asarray(mu, float), np.asarray(p, float)
    states, pi = _stationary(mu, p, C)
    busy = states > 0
    completion = pi[:, None] * mu[None, :] * busy  # rate of completions at k in state x
    throughput = completion.sum()
    queue = pi @ states
    seen = np.zeros(mu.size)
    for k in range(mu.size):
        seen_after_k = states.astype(float)
        seen_after_k[:, k] -= 1
        seen += completion[:, k] @ seen_after_k
    seen /= throughput
    return throughput, queue, seen / p, pi @ busy


def _tagged_staleness(mu, p, C, i):
    """E[tau_i] by its definition: updates applied while a task sits at client i.

    The tagged task joins client i in the state seen at a completion epoch (weight
    pi(x) mu_k 1[x_k > 0], state x - e_k + e_i, position (x - e_k)_i + 1 in the FIFO queue).
    Each completion before its own is an update it misses (self-routed ones included);
    h(state, position) = expected number of those, by first-step analysis on the jump chain.
    """
    mu, p = np.asarray(mu, float), np.asarray(p, float)
    states, pi = _stationary(mu, p, C)
    aug = [(tuple(x), pos) for x in states for pos in range(1, x[i] + 1)]
    index = {a: s for s, a in enumerate(aug)}
    M = np.zeros((len(aug), len(aug)))
    reward = np.zeros(len(aug))
    for s, (x, pos) in enumerate(aug):
        x = np.array(x)
        rates = mu * (x > 0)
        for j in np.flatnonzero(rates):
            prob = rates[j] / rates.sum()
            if j == i and pos == 1:
                continue  # the tagged task completes: its own update is not counted
            reward[s] += prob
            for dest in np.flatnonzero(p):
                y = x.copy()
                y[j] -= 1
                y[dest] += 1
                M[s, index[(tuple(y), pos - 1 if j == i else pos)]] += prob * p[dest]
    h = np.linalg.solve(np.eye(len(aug)) - M, reward)
    total = weight = 0.0
    for x, pi_x in zip(states, pi):
        for k in np.flatnonzero(x):
            seen = x.copy()
            seen[k] -= 1
            joined = seen.copy()
            joined[i] += 1
            w = pi_x * mu[k]
            total += w * h[index[(tuple(joined), seen[i] + 1)]]
            weight += w
    return total / weight


def _buzen(rho: list[Fraction], C: int) -> list[Fraction]:
    """Plain Buzen, G(0..C), in exact rational arithmetic."""
    g = [Fraction(1)] + [Fraction(0)] * C
    for r in rho:
        for k in range(1, C + 1):
            g[k] += r * g[k - 1]
    return g


def _log(x: Fraction) -> float:
    return math.log(x.numerator) - math.log(x.denominator)


def _exact(mu, p, C):
    """log G(0..C), E_C[X], E_{C-1}[X] and lambda(C) from exact Buzen and the direct sums.

    The loads rho_i = p_i / mu_i are rounded to float64 as in the code under test, then
    converted exactly (binary fractions, which keep the rational arithmetic cheap); the
    only other rounding is the final conversion to float.
    """
    rho = np.asarray(p, float) / np.asarray(mu, float)
    return _exact_loads([Fraction(r) for r in rho], C)


def _exact_loads(rho: list[Fraction], C: int):
    G = _buzen(rho, C)

    def queue(c):
        return np.array([float(sum(r**k * G[c - k] for k in range(1, c + 1)) / G[c]) for r in rho])

    return np.array([_log(g) for g in G]), queue(C), queue(C - 1), float(G[C - 1] / G[C])


def _network(rng: np.random.Generator, n: int, span: float = 1.0):
    """Heterogeneous rates 10^U(-span, span) and Dirichlet routing."""
    mu = 10.0 ** rng.uniform(-span, span, n)
    p = rng.dirichlet(np.ones(n))
    return mu, p


# ---------------------------------------------------------------- exact Markov chain

CHAIN_CASES = [
    ([2.5], [1.0], 3),
    ([1.0, 3.0], [0.5, 0.5], 1),
    ([1.0, 3.0], [0.5, 0.5], 5),
    ([0.7, 2.0, 5.0], [0.6, 0.3, 0.1], 4),
    ([1.0, 2.0, 5.0, 10.0], [0.4, 0.3, 0.2, 0.1], 6),
    ([3.0, 0.2, 1.0, 7.0, 0.05], [0.96, 0.01, 0.01, 0.01, 0.01], 7),
    ([0.3, 1.1, 4.0, 0.9, 2.2], [0.1, 0.25, 0.3, 0.05, 0.3], 5),
    ([5.0, 5.0, 0.5], [0.001, 0.009, 0.99], 7),
]


@pytest.mark.parametrize(("mu", "p", "C"), CHAIN_CASES)
def test_solve_matches_markov_chain(mu, p, C):
    throughput, queue, staleness, busy = _chain_measures(mu, p, C)
    sol = solve(np.array(mu), np.array(p), C)
    assert sol.throughput == pytest.approx(throughput, rel=1e-9)
    np.testing.assert_allclose(sol.mean_queue, queue, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sol.staleness, staleness, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sol.utilisation, busy, rtol=1e-9)


@pytest.mark.parametrize(("mu", "p", "C"), [CHAIN_CASES[3], CHAIN_CASES[4], CHAIN_CASES[7]])
def test_staleness_matches_its_definition_on_the_chain(mu, p, C):
    sol = solve(np.array(mu), np.array(p), C)
    direct = [_tagged_staleness(mu, p, C, i) for i in range(len(mu))]
    np.testing.assert_allclose(sol.staleness, direct, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------- exact Buzen


@pytest.mark.parametrize(
    ("n", "C", "span", "seed"),
    [(1, 5, 1.0, 0), (3, 7, 1.0, 1), (10, 25, 1.0, 2), (25, 40, 3.0, 3), (60, 60, 3.0, 4)],
)
def test_matches_exact_buzen_and_direct_sums(n, C, span, seed):
    mu, p = _network(np.random.default_rng(seed), n, span)
    log_G, queue, queue_prev, throughput = _exact(mu, p, C)
    sol = solve(mu, p, C)
    np.testing.assert_allclose(sol.log_G, log_G, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(log_normalizing_constants(p / mu, C), log_G, rtol=1e-12, atol=1e-11)
    assert sol.throughput == pytest.approx(throughput, rel=1e-12)
    np.testing.assert_allclose(sol.mean_queue, queue, rtol=1e-11)
    np.testing.assert_allclose(sol.mean_queue_prev, queue_prev, rtol=1e-11)


def test_extreme_loads_match_exact_buzen():
    """Rates over six decades and routing over five: loads rho from ~1e-8 to ~1e3."""
    rng = np.random.default_rng(5)
    n, C = 30, 40
    mu = 10.0 ** rng.uniform(-3, 3, n)
    w = 10.0 ** rng.uniform(-5, 0, n)
    p = w / w.sum()
    log_G, queue, queue_prev, throughput = _exact(mu, p, C)
    sol = solve(mu, p, C)
    assert np.ptp(np.log10(p / mu)) > 8
    np.testing.assert_allclose(sol.log_G, log_G, rtol=1e-12, atol=1e-11)
    assert sol.throughput == pytest.approx(throughput, rel=1e-12)
    np.testing.assert_allclose(sol.mean_queue, queue, rtol=1e-11)
    np.testing.assert_allclose(sol.mean_queue_prev, queue_prev, rtol=1e-11)


def test_log_normalizing_constants_keeps_the_scale_of_rho():
    rho = np.array([2e5, 3e5, 7e4])
    log_G, *_ = _exact_loads([Fraction(r) for r in rho], 12)
    np.testing.assert_allclose(log_normalizing_constants(rho, 12), log_G, rtol=1e-13)
    assert log_normalizing_constants(rho, 12)[0] == 0.0


# -------------------------------------------------------------- published example


def test_worked_example():
    sol = solve(np.array([1.0, 2.0, 5.0, 10.0]), np.array([0.4, 0.3, 0.2, 0.1]), 6)
    assert sol.throughput == pytest.approx(2.494422, abs=5e-7)
    np.testing.assert_allclose(sol.staleness, [10.7106, 1.9336, 0.5510, 0.2548], atol=5e-5)
    np.testing.assert_allclose(sol.mean_queue, [5.2724, 0.5912, 0.1108, 0.0256], atol=5e-5)
    assert sol.mean_staleness == pytest.approx(5.0, rel=1e-12)


# ---------------------------------------------------------------- closed forms


def test_single_task_has_no_staleness():
    mu, p = np.array([0.5, 2.0, 9.0]), np.array([0.2, 0.5, 0.3])
    rho = p / mu
    sol = solve(mu, p, 1)
    assert sol.throughput == pytest.approx(1.0 / rho.sum(), rel=1e-14)
    np.testing.assert_array_equal(sol.staleness, 0.0)
    np.testing.assert_array_equal(sol.mean_queue_prev, 0.0)
    np.testing.assert_allclose(sol.mean_queue, rho / rho.sum(), rtol=1e-14)
    assert sol.mean_staleness == 0.0


def test_identical_loads_closed_form_at_scale():
    """Equal rho: G(k) = binom(n+k-1, k) rho^k, lambda(C) = C / ((n+C-1) rho), E_C[X_i] = C/n."""
    n, C = 10_000, 1_000
    mu = np.random.default_rng(6).uniform(0.5, 4.0, n)
    p = mu / mu.sum()
    rho = p[0] / mu[0]
    sol = solve(mu, p, C)
    k = np.arange(C + 1)
    log_binom = np.array([math.lgamma(n + j) - math.lgamma(j + 1) - math.lgamma(n) for j in k])
    np.testing.assert_allclose(sol.log_G, log_binom + k * np.log(rho), rtol=1e-12, atol=1e-9)
    assert sol.throughput == pytest.approx(C / ((n + C - 1) * rho), rel=1e-12)
    np.testing.assert_allclose(sol.mean_queue, C / n, rtol=1e-10)
    np.testing.assert_allclose(sol.staleness, (C - 1) / n / p, rtol=1e-10)


def test_unrouted_client_is_idle_and_leaves_the_rest_unchanged():
    mu = np.array([1.0, 2.0, 0.3, 5.0])
    p = np.array([0.5, 0.3, 0.0, 0.2])
    C = 5
    sol = solve(mu, p, C)
    rest = solve(mu[[0, 1, 3]], p[[0, 1, 3]], C)
    assert sol.throughput == pytest.approx(rest.throughput, rel=1e-14)
    np.testing.assert_allclose(sol.mean_queue[[0, 1, 3]], rest.mean_queue, rtol=1e-14)
    np.testing.assert_allclose(sol.staleness[[0, 1, 3]], rest.staleness, rtol=1e-14)
    assert sol.mean_queue[2] == 0.0 and sol.utilisation[2] == 0.0
    assert np.isnan(sol.staleness[2]) and np.isnan(sol.sojourn[2])
    assert sol.mean_staleness == pytest.approx(C - 1, rel=1e-12)


def test_rarely_chosen_client_sees_the_others_throughput():
    """As p_i -> 0, E[tau_i] -> lambda_{-i}(C-1) / mu_i: the updates the other clients, with
    C - 1 tasks, apply during one service at i. E_C[X_i] underflows for p_i = 1e-300; the
    staleness and the sojourn (-> 1 / mu_i) must not."""
    mu = np.array([1.0, 2.0, 0.25, 5.0])
    p = np.array([0.5, 0.3, 1e-300, 0.2])
    C = 6
    sol = solve(mu, p, C)
    others = solve(mu[[0, 1, 3]], p[[0, 1, 3]], C - 1)
    assert sol.staleness[2] == pytest.approx(others.throughput / mu[2], rel=1e-12)
    assert sol.sojourn[2] == pytest.approx(1.0 / mu[2], rel=1e-12)
    assert sol.mean_staleness == pytest.approx(C - 1, rel=1e-12)


# ---------------------------------------------------------------- throughput in C


def test_throughput_increases_to_the_bottleneck_capacity():
    mu = np.array([1.0, 2.0, 5.0, 10.0, 0.8])
    p = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    rho = p / mu
    curve = throughput_curve(mu, p, 300)
    assert np.all(np.diff(curve[:30]) > 0)  # beyond, lambda equals its limit to rounding
    assert np.all(np.diff(curve) > -1e-15 * curve[1:])
    assert np.all(curve[:30] < 1.0 / rho.max())
    assert curve[0] == pytest.approx(1.0 / rho.sum(), rel=1e-14)
    assert curve[-1] == pytest.approx(1.0 / rho.max(), rel=1e-12)
    for C in (1, 2, 7, 60, 300):
        assert curve[C - 1] == pytest.approx(solve(mu, p, C).throughput, rel=1e-14)


def test_throughput_with_tied_bottlenecks_approaches_capacity_slowly():
    """Two clients share the largest load rho_max, a third has load q rho_max.

    Rescaled, G(C) = sum_j (C - j + 1) q^j = (C + 1) / (1 - q) - q / (1 - q)^2 + O(q^C), so
    1/rho_max - lambda(C) = (1/rho_max) / (C + 1 - q / (1 - q)): only like 1/C.
    """
    mu = np.array([1.0, 2.0, 6.0])
    p = np.array([0.25, 0.5, 0.25])
    q = (0.25 / 6.0) / 0.25
    C = np.arange(1, 2001)
    curve = throughput_curve(mu, p, 2000)
    assert np.all(np.diff(curve) > 0)
    assert np.all(curve < 4.0)
    np.testing.assert_allclose((4.0 - curve)[30:], 4.0 / (C + 1 - q / (1 - q))[30:], rtol=1e-9)


# ---------------------------------------------------------------- properties

networks = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-3, 3), min_size=n, max_size=n),
        st.lists(st.floats(0, 1), min_size=n, max_size=n).filter(lambda w: sum(w) > 1e-3),
        st.integers(1, 80),
    )
)


@settings(max_examples=150, deadline=None)
@given(networks)
def test_properties_of_random_networks(network):
    log_mu, w, C = network
    mu = 10.0 ** np.array(log_mu)
    p = np.array(w) / sum(w)
    sol = solve(mu, p, C)
    assert sol.mean_staleness == pytest.approx(C - 1, rel=1e-10, abs=1e-10)
    assert sol.mean_queue.sum() == pytest.approx(C, rel=1e-10)
    assert sol.mean_queue_prev.sum() == pytest.approx(C - 1, rel=1e-10, abs=1e-10)
    assert np.all(sol.utilisation <= 1.0 + 1e-12)
    assert sol.throughput == pytest.approx(np.exp(sol.log_G[C - 1] - sol.log_G[C]), rel=1e-9)
    throughput, queue, queue_prev = mva(mu, p, C)
    assert sol.throughput == pytest.approx(throughput, rel=1e-10)
    np.testing.assert_allclose(sol.mean_queue, queue, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(sol.mean_queue_prev, queue_prev, rtol=1e-9, atol=1e-13)
    routed = p > 1e-200  # Little's law in time, where E_C[X_i] does not underflow
    np.testing.assert_allclose(
        sol.sojourn[routed], sol.mean_queue[routed] / (sol.throughput * p[routed]), rtol=1e-12
    )


def test_mva_on_the_worked_example():
    throughput, queue, queue_prev = mva([1.0, 2.0, 5.0, 10.0], [0.4, 0.3, 0.2, 0.1], 6)
    assert throughput == pytest.approx(2.494422, abs=5e-7)
    np.testing.assert_allclose(queue, [5.2724, 0.5912, 0.1108, 0.0256], atol=5e-5)
    staleness = queue_prev / np.array([0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(staleness, [10.7106, 1.9336, 0.5510, 0.2548], atol=5e-5)


def test_large_heterogeneous_network():
    rng = np.random.default_rng(7)
    n, C = 10_000, 1_000
    mu, p = _network(rng, n, span=3.0)
    sol = solve(mu, p, C)
    for field in ("log_G", "mean_queue", "mean_queue_prev", "utilisation", "staleness", "sojourn"):
        assert np.all(np.isfinite(getattr(sol, field))), field
    assert np.isfinite(sol.throughput)
    assert sol.mean_staleness == pytest.approx(C - 1, rel=1e-8)
    assert sol.mean_queue.sum() == pytest.approx(C, rel=1e-8)
    throughput, queue, _ = mva(mu, p, C)
    assert sol.throughput == pytest.approx(throughput, rel=1e-10)
    np.testing.assert_allclose(sol.mean_queue, queue, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------- guards


def test_solution_is_immutable():
    sol = solve([1.0, 2.0], [0.5, 0.5], 3)
    assert isinstance(sol, NetworkSolution)
    with pytest.raises(ValueError):
        sol.staleness[0] = 0.0
    with pytest.raises(AttributeError):
        sol.throughput = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mu", "p", "C"),
    [
        ([1.0, 2.0], [1.0], 3),
        ([[1.0, 2.0]], [[0.5, 0.5]], 3),
        ([], [], 3),
        ([1.0, 0.0], [0.5, 0.5], 3),
        ([1.0, -2.0], [0.5, 0.5], 3),
        ([1.0, np.inf], [0.5, 0.5], 3),
        ([1.0, 2.0], [1.2, -0.2], 3),
        ([1.0, 2.0], [0.5, 0.5 + 1e-8], 3),
        ([1.0, 2.0], [0.5, np.nan], 3),
        ([1.0, 2.0], [0.5, 0.5], 0),
        ([1.0, 2.0], [0.5, 0.5], 2.0),
        ([1.0, 2.0], [0.5, 0.5], True),
    ],
)
def test_invalid_networks_are_refused(mu, p, C):
    for function in (solve, mva, throughput_curve):
        with pytest.raises(ValueError):
            function(mu, p, C)


def test_integer_types_and_routing_tolerance_are_accepted():
    sol = solve([1.0, 2.0], [0.5, 0.5 + 5e-10], np.int64(3))
    assert sol.concurrency == 3 and type(sol.concurrency) is int


@pytest.mark.parametrize(
    ("rho", "C"), [([0.0, 0.0], 2), ([-1.0, 1.0], 2), ([np.nan, 1.0], 2), ([[1.0]], 2), ([1.0], 0)]
)
def test_invalid_loads_are_refused(rho, C):
    with pytest.raises(ValueError):
        log_normalizing_constants(np.array(rho), C)
