"""Coverage as a test: do the 95% intervals of a run contain the exact values 95% of the time?

Each case runs R = 200 independent replications (seeds 1..200) of a small exponential
network in this process, at the default statistics settings (warm-up detected, batch size
tested), and compares every run's throughput and per-client mean staleness intervals with the
exact product-form values. A run either carries a flag (``warning``: not stationary, or batch
means that fail their independence test) or it claims its intervals. Tolerances are
binomial, with a family-wise error of 1% per case (Bonferroni over its m = n + 1 figures):

- honesty, every case: the number of runs that are *not* flagged and miss the exact value is
  at most the upper alpha/m quantile of Binomial(R, 0.05) (about 19 of 200 for m = 5): a
  run either says it is not to be trusted, or it is right 95% of the time;
- coverage, stationary cases: among the U unflagged runs, the number that cover lies in the
  central 1 - alpha/m region of Binomial(U, 0.95) (two-sided: intervals too wide fail too),
  and at least 75% of the runs are unflagged (flagging everything is not an answer);
- short and transient cases: at least 95% of the runs are flagged; in the transient case at
  least half of them as not stationary (the warm-up detection sees the transient; the
  others fail the independence test, the stragglers' queues moving slowly);
- power: the same band rejects the heavy-load intervals shrunk by 30% (a batch size too
  small gives intervals that narrow: coverage 0.76-0.80 in short runs with fixed batching).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import yaml
from scipy import stats

from conftest import REPO
from fedsim.analytic import solve
from fedsim.run import simulate
from fedsim.scenario import parse_scenario

REPLICATIONS = 200
LEVEL = 0.95
FAMILY_ALPHA = 0.01

HETEROGENEOUS = yaml.safe_load((REPO / "scenarios" / "heterogeneous.yaml").read_text())["clients"]


def one_per_client(rates, weights):
    return [{"group": f"c{k}", "count": 1, "routing_weight": w, "service": {"dist": "exponential", "rate": r}}
            for k, (r, w) in enumerate(zip(rates, weights))]


CASES = {
    # a strong bottleneck (client 0: rho = 0.4 against 0.15 and less), 20,000 updates
    "heavy-load": dict(concurrency=8, horizon={"updates": 20_000},
                       clients=one_per_client([1, 2, 5, 10], [0.4, 0.3, 0.2, 0.1])),
    # two clients sharing the bottleneck (rho 0.25 each), 20,000 updates
    "tied-bottlenecks": dict(concurrency=4, horizon={"updates": 20_000},
                             clients=one_per_client([1, 1, 4, 4], [1, 1, 1, 1])),
    # the mild bottleneck of rates 1, 1, 1, 0.6, C = 20, T = 1000: too short for its batch means
    "mild-short": dict(concurrency=20, horizon={"time": 1000.0}, clients=one_per_client([1, 1, 1, 0.6], [1] * 4)),
    # scenarios/heterogeneous.yaml's network stopped at T = 125: throughput 9.4 against 4.55
    "transient": dict(concurrency=100, horizon={"time": 125.0}, clients=HETEROGENEOUS, routing="uniform"),
}
STATIONARY = ("heavy-load", "tied-bottlenecks")


@dataclass
class Replications:
    covered: np.ndarray  # runs x figures: the interval contains the exact value
    shrunk: np.ndarray  # ... the interval shrunk by 30% does
    flagged: np.ndarray  # runs: a warning was raised
    transient: np.ndarray  # runs: flagged as not stationary


def scenario(case: str, seed: int):
    spec = CASES[case]
    return parse_scenario({"name": case, "seed": seed, "routing": spec.get("routing", "weights"),
                           "concurrency": spec["concurrency"], "horizon": spec["horizon"], "clients": spec["clients"]})


@pytest.fixture(scope="module", params=list(CASES))
def replications(request) -> tuple[str, Replications]:
    case = request.param
    first = scenario(case, 1)
    exact = solve(first.mu, first.p, first.concurrency)
    covered, shrunk, flagged, transient = [], [], [], []
    for seed in range(1, REPLICATIONS + 1):
        st = simulate(scenario(case, seed)).stats
        error = np.abs(np.r_[st.throughput - exact.throughput, st.clients.staleness_mean - exact.staleness])
        half = np.r_[st.throughput_ci, st.clients.staleness_ci]
        covered.append(error <= half)
        shrunk.append(error <= 0.7 * half)
        flagged.append(st.warning is not None)
        transient.append(st.stationary is False)
    return case, Replications(np.array(covered), np.array(shrunk), np.array(flagged), np.array(transient))


def band(runs: int, alpha: float) -> tuple[float, float]:
    """Central 1 - alpha region of Binomial(runs, LEVEL) (counts)."""
    return float(stats.binom.ppf(alpha / 2, runs, LEVEL)), float(stats.binom.isf(alpha / 2, runs, LEVEL))


def test_unflagged_runs_are_rarely_wrong(replications):
    case, r = replications
    m = r.covered.shape[1]
    misleading = (~r.covered & ~r.flagged[:, None]).sum(axis=0)
    limit = stats.binom.isf(FAMILY_ALPHA / m, REPLICATIONS, 1 - LEVEL)
    assert np.all(misleading <= limit), (case, misleading, limit)


def test_coverage_of_unflagged_runs_is_95_percent(replications):
    case, r = replications
    if case not in STATIONARY:
        pytest.skip("a run too short for its statistics: flagged, not covered")
    ok = ~r.flagged
    assert ok.mean() >= 0.75, (case, ok.mean())
    m = r.covered.shape[1]
    lo, hi = band(int(ok.sum()), FAMILY_ALPHA / m)
    count = r.covered[ok].sum(axis=0)
    assert np.all((lo <= count) & (count <= hi)), (case, count, ok.sum(), lo, hi)
    if case == "heavy-load":  # the band has the power to reject intervals 30% too narrow
        assert np.any(r.shrunk[ok].sum(axis=0) < lo)


def test_short_and_transient_runs_are_flagged(replications):
    case, r = replications
    if case in STATIONARY:
        pytest.skip("a stationary case")
    assert r.flagged.mean() >= 0.95, r.flagged.mean()
    if case == "transient":
        assert r.transient.mean() >= 0.5, r.transient.mean()


# --- ties -----------------------------------------------------------------------------------
# The tie rule (fedsim/stations.py): simultaneous completions are ordered uniformly at random
# from their own stream, and completion times of deterministic and empirical laws lie on an
# exact grid (so that means of 0.1, 0.2, 0.4, or those perturbed by 1e-7, tie exactly as 0.25,
# 0.5, 1 do). The exact values come from the Markov chain below. Ordering ties by SimPy's
# scheduling order instead puts the fastest client's staleness at 0.563 against the exact
# 0.428, which these tests reject.
TIE_REPLICATIONS = 100
TIE_UNITS = (1, 2, 4)  # service times in grid steps
TIE_CONCURRENCY = 4


def grid_staleness(units: tuple[int, ...], p: np.ndarray, concurrency: int) -> np.ndarray:
    """Exact E[tau_i] for deterministic services of ``units[i]`` grid steps, routing ``p``, and
    simultaneous completions applied in uniformly random order.

    The state at a grid instant, after its completions, is (tasks at each client, steps left in
    each service). From it, the clients whose service ends at the next instant complete in each
    of their orders (equally likely), each completion routing a new task by p; a client that
    finishes or receives a task while idle starts a service of its units. The stationary law of
    this chain and discrete Little's law (a task's staleness is the number of updates while it
    is at its client, its own excluded) give E[tau_i] = E[N_i^-] / p_i, with N_i^- the tasks at
    client i at an update, the completing one excluded, per update.
    """
    n = len(units)

    def successors(state):
        tasks, left = state
        done = [i for i in range(n) if tasks[i] > 0 and left[i] == 1]
        orders = list(itertools.permutations(done))
        for order in orders:
            for route in itertools.product(range(n), repeat=len(order)):
                x, r = list(tasks), list(left)
                started = [False] * n
                present = np.zeros(n)
                for i, j in zip(order, route):
                    x[i] -= 1
                    present += x
                    r[i], started[i] = (units[i], True) if x[i] else (0, False)
                    x[j] += 1
                    if x[j] == 1:
                        r[j], started[j] = units[j], True
                for i in range(n):
                    if x[i] and not started[i] and i not in order:
                        r[i] -= 1
                yield np.prod(p[list(route)]) / len(orders), (tuple(x), tuple(r)), present, len(order)

    first = tuple(concurrency // n + (i < concurrency % n) for i in range(n))
    states = [(first, tuple(units[i] if first[i] else 0 for i in range(n)))]
    index = {states[0]: 0}
    edges = []
    for a in itertools.count():
        if a == len(states):
            break
        for prob, nxt, present, updates in successors(states[a]):
            if nxt not in index:
                index[nxt] = len(states)
                states.append(nxt)
            edges.append((a, index[nxt], prob, present, updates))
    m = len(states)
    chain, present, updates = np.zeros((m, m)), np.zeros((m, n)), np.zeros(m)
    for a, b, prob, pres, upd in edges:
        chain[a, b] += prob
        present[a] += prob * pres
        updates[a] += prob * upd
    # stationary law: pi (P - I) = 0 with sum(pi) = 1, least squares on the stacked system
    system = np.vstack([chain.T - np.eye(m), np.ones(m)])
    pi = np.linalg.lstsq(system, np.r_[np.zeros(m), 1.0], rcond=None)[0]
    return (pi @ present) / (p * (pi @ updates))


def deterministic(means, concurrency, updates, seed):
    return parse_scenario({"name": "ties", "seed": seed, "concurrency": concurrency, "routing": "uniform",
                           "horizon": {"updates": updates},
                           "clients": [{"group": f"c{k}", "count": 1, "service": {"dist": "deterministic", "mean": m}}
                                       for k, m in enumerate(means)]})


def test_grid_chain_satisfies_the_staleness_identity():
    """The exact chain's values satisfy sum_i p_i E[tau_i] = C - 1 (docs/model.md), for any routing."""
    for p in (np.full(3, 1 / 3), np.array([0.5, 0.3, 0.2])):
        tau = grid_staleness(TIE_UNITS, p, TIE_CONCURRENCY)
        assert p @ tau == pytest.approx(TIE_CONCURRENCY - 1, rel=1e-9)
        assert np.all(np.diff(tau) > 0)  # slower clients are staler


@pytest.mark.parametrize("step", [0.25, 0.1, "0.1 perturbed by 1e-7"])
def test_deterministic_ties_cover_the_exact_values(step):
    """Clients with deterministic services of 1, 2 and 4 grid steps (exact ties on a dyadic
    grid, round-off ties on 0.1, and 0.1 with every mean perturbed by 1e-7), uniform routing,
    C = 4: every client's interval covers the exact value in the binomial band of 95%
    (unflagged runs; at least 75% unflagged)."""
    exact = grid_staleness(TIE_UNITS, np.full(3, 1 / 3), TIE_CONCURRENCY)
    perturbation = 1e-7 if step == "0.1 perturbed by 1e-7" else 0.0
    means = [(0.1 if perturbation else step) * u + perturbation for u in TIE_UNITS]
    covered, flagged = [], []
    for seed in range(1, TIE_REPLICATIONS + 1):
        st = simulate(deterministic(means, TIE_CONCURRENCY, 20_000, seed)).stats
        covered.append(np.abs(st.clients.staleness_mean - exact) <= st.clients.staleness_ci)
        flagged.append(st.warning is not None)
    covered, ok = np.array(covered), ~np.array(flagged)
    assert ok.mean() >= 0.75
    lo, hi = band(int(ok.sum()), FAMILY_ALPHA / 3)
    count = covered[ok].sum(axis=0)
    assert np.all((lo <= count) & (count <= hi)), (count, ok.sum(), lo, hi)
