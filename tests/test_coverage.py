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

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

from fedsim.analytic import solve
from fedsim.run import simulate
from fedsim.scenario import parse_scenario

REPLICATIONS = 200
LEVEL = 0.95
FAMILY_ALPHA = 0.01

HETEROGENEOUS = [{"group": "fast", "count": 20, "service": {"dist": "exponential", "rate": 4.0}},
                 {"group": "medium", "count": 40, "service": {"dist": "exponential", "rate": 1.0}},
                 {"group": "slow", "count": 30, "service": {"dist": "exponential", "rate": 0.25}},
                 {"group": "straggler", "count": 10, "service": {"dist": "exponential", "rate": 0.05}}]


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
