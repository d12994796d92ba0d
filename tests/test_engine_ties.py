"""The tie rule: atomic laws on a decimal grid, simultaneous events in uniformly random order.

Deterministic services with decimal means (0.1, 0.2, 0.3) make completions that coincide on
paper; the statistics must not depend on float round-off: not on a perturbation of the means by
1e-7, and not on the run length (before the rule, a client's staleness drifted from 0.53 to 0.74
across segments of one run). Exact ties are ordered uniformly at random (checked on dyadic
means and on three-way ties), and the whole rule is checked event for event against the bare
loop of benchmarks/bench_engine.py. Each statistical check states its level; the checks that
show their power run the same scenario with the rule switched off and must fail there.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from conftest import REPO, bonferroni_critical
from fedsim.distributions import Deterministic
from fedsim.engine import CompletionRecords, Engine
from fedsim.run import simulate
from fedsim.scenario import parse_scenario
from fedsim.stations import GRID_EXACT_UNTIL, TICKS_PER_UNIT, StationEngine

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_engine import run_bare_extended  # noqa: E402

DECIMAL = (0.1, 0.2, 0.3)


def deterministic(means, concurrency, updates, warmup=None, seed=1, shift=0.0):
    return parse_scenario({
        "name": "ties", "seed": seed, "concurrency": concurrency,
        "horizon": {"updates": updates, "warmup": updates // 10 if warmup is None else warmup},
        "clients": [{"group": f"g{k}", "count": 1, "service": {"dist": "deterministic", "mean": m + shift}}
                    for k, m in enumerate(means)]})


class Trace:
    def __init__(self) -> None:
        self.client: list[np.ndarray] = []
        self.time: list[np.ndarray] = []
        self.stages: list[np.ndarray] = []

    def on_records(self, r: CompletionRecords) -> None:
        self.client.append(r.client)
        self.time.append(r.completion_time)
        if r.stages is not None:
            self.stages.append(r.stages)


def tied_runs(s) -> list[np.ndarray]:
    """The clients of every group of two or more updates applied at the same instant."""
    trace = Trace()
    Engine(s, [trace]).run()
    client, time = np.concatenate(trace.client), np.concatenate(trace.time)
    cuts = np.flatnonzero(np.diff(time)) + 1
    return [group for group in np.split(client, cuts) if group.size > 1]


def test_grid_times_are_exact_decimals_within_the_documented_range():
    """(round(t T) + k) / T is the float nearest to a whole number of ticks: sums equal on
    paper are equal floats (0.1 + 0.2 == 0.3 on the grid), at any time below GRID_EXACT_UNTIL."""
    T = TICKS_PER_UNIT
    assert 0.1 + 0.2 != 0.3 and (round(0.1 * T) + round(0.2 * T)) / T == 0.3
    rng = np.random.default_rng(0)
    ticks = rng.integers(0, int(GRID_EXACT_UNTIL * T), 200_000, dtype=np.int64)
    now = ticks / T
    assert np.array_equal(np.rint(now * T).astype(np.int64), ticks)  # now goes back to its ticks exactly
    step = rng.integers(1, 10**7, ticks.size)
    assert np.array_equal(((np.rint(now * T).astype(np.int64) + step) / T), (ticks + step) / T)


def window_z(a, b, batches) -> np.ndarray:
    """|a - b| / SE of the difference, for every client's staleness and the throughput of two runs."""
    t = stats.t.ppf(0.975, batches - 1)
    sims = [(x.clients.staleness_mean, x.clients.staleness_ci, x.throughput, x.throughput_ci) for x in (a, b)]
    (ma, ca, ta, cta), (mb, cb, tb, ctb) = sims
    return np.abs(np.append(ma - mb, ta - tb)) / (np.hypot(np.append(ca, cta), np.append(cb, ctb)) / t)


def robustness_z(updates: int) -> tuple[np.ndarray, np.ndarray, float]:
    """z of a 1e-7 perturbation of the means, and of a later window of a longer run."""
    base = simulate(deterministic(DECIMAL, 3, updates)).stats
    shifted = simulate(deterministic(DECIMAL, 3, updates, shift=1e-7)).stats
    later = simulate(deterministic(DECIMAL, 3, 4 * updates, warmup=3 * updates)).stats
    k = min(base.batches, later.batches)
    return window_z(base, shifted, k), window_z(base, later, k), bonferroni_critical(2 * 4, k)


def test_decimal_ties_do_not_depend_on_round_off_or_run_length():
    """A 1e-7 perturbation is below the grid's resolution (the same run), and a later window
    of a 4x longer run agrees within Bonferroni intervals (family-wise 1%)."""
    perturbed, later, crit = robustness_z(40_000)
    assert np.all(perturbed == 0)
    assert np.all(later < crit), (later, crit)


def test_without_the_rule_the_same_checks_fail(monkeypatch):
    """Power: with the grid and the tie rule off (round-off decides), both checks fail."""
    monkeypatch.setattr(Deterministic, "atomic", False)
    perturbed, later, crit = robustness_z(40_000)
    assert perturbed.max() > crit and later.max() > crit, (perturbed, later, crit)


def test_dyadic_ties_are_ordered_uniformly_at_random(monkeypatch):
    """Means 0.25 and 0.5 tie exactly in binary too; which of the two clients goes first is a
    fair coin (two-sided binomial test at level 1e-3), where the scheduling order, the rule
    before, always puts the same client first."""
    s = deterministic((0.25, 0.5), 4, 20_000)
    pairs = [g for g in tied_runs(s) if g.size == 2 and g[0] != g[1]]
    first = sum(int(g[0] == 0) for g in pairs)
    assert len(pairs) > 1000
    assert stats.binomtest(first, len(pairs), 0.5).pvalue > 1e-3, (first, len(pairs))
    monkeypatch.setattr(Deterministic, "atomic", False)
    old = [g for g in tied_runs(s) if g.size == 2 and g[0] != g[1]]
    assert stats.binomtest(sum(int(g[0] == 0) for g in old), len(old), 0.5).pvalue < 1e-6


def test_three_way_ties_take_every_order_equally_often():
    """Three clients of mean 1 with C = 3 finish together whenever all three are busy; the six
    orders are equally likely (chi-square test at level 1e-3)."""
    s = deterministic((1.0, 1.0, 1.0), 3, 30_000)
    orders = Counter(tuple(g) for g in tied_runs(s) if g.size == 3 and len(set(g)) == 3)
    counts = np.array([orders[o] for o in sorted(orders)])
    assert len(counts) == 6 and counts.sum() > 600
    assert stats.chisquare(counts).pvalue > 1e-3, orders


def test_grid_network_is_the_bare_loop_event_for_event(tmp_path):
    """Empirical compute, deterministic links and server, all on the grid with tie keys: the
    engine and the bare loop (which implements the rule on its own heap) agree exactly."""
    (tmp_path / "durations.csv").write_text("seconds\n0.2\n0.3\n0.5\n0.5\n1.0\n")
    doc = {"name": "grid", "seed": 4, "concurrency": 6, "horizon": {"updates": 20_000},
           "server": {"service": {"dist": "deterministic", "mean": 0.1}},
           "clients": [{"group": "a", "count": 3, "service": {"dist": "empirical", "file": "durations.csv"},
                        "downlink": {"dist": "deterministic", "mean": 0.2},
                        "uplink": {"dist": "deterministic", "mean": 0.1, "station": "fifo"}},
                       {"group": "b", "count": 2, "service": {"dist": "deterministic", "mean": 0.3},
                        "uplink": {"dist": "exponential", "mean": 0.2}}]}
    s = parse_scenario(doc, base_dir=tmp_path)
    trace = Trace()
    engine = Engine(s, [trace]).run()
    assert isinstance(engine, StationEngine)
    bare = run_bare_extended(s)
    client = np.concatenate(trace.client)
    assert bare.count == np.bincount(client, minlength=s.n_clients).tolist()
    assert bare.time == engine.env.now
    # the scenario does exercise ties: tasks reaching the server at the same instant
    arrivals = np.concatenate(trace.stages)[:, 5]
    assert arrivals.size - np.unique(arrivals).size > 200


@pytest.mark.parametrize("mean", [0.1, 0.3, 1.7])
def test_deterministic_services_end_on_the_grid(mean):
    s = deterministic((mean,), 1, 1_000, warmup=0)
    trace = Trace()
    Engine(s, [trace]).run()
    time = np.concatenate(trace.time)
    ticks = round(mean * TICKS_PER_UNIT)
    assert np.array_equal(time, np.arange(1, 1_001) * ticks / TICKS_PER_UNIT)  # k * mean, as decimals
