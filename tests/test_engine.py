"""The simulator against the exact product-form model, and the engine's sample-path rules.

Statistical tests: fixed seeds; every client's mean staleness and sojourn, and the
throughput, must lie within Bonferroni-corrected batch-means intervals (family-wise error 1%
per scenario); the intervals must also be narrow enough (relative half-width <= 8%) that a
wrong formula is caught, and the test checks that the classic mistake (E_C[X_i] / p_i
instead of E_{C-1}[X_i] / p_i) *is* rejected on the same run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import bonferroni_critical, bonferroni_z
import fedsim.engine as engine_module
from fedsim.analytic import solve
from fedsim.engine import Engine
from fedsim.run import simulate
from fedsim.scenario import parse_scenario
from fedsim.tracking import TraceWriter, Tracker


def exp_scenario(rates, weights, concurrency, updates=300_000, seed=11, name="t"):
    return parse_scenario({
        "name": name, "seed": seed, "concurrency": concurrency,
        "horizon": {"updates": updates, "warmup": updates // 20},
        "clients": [{"group": f"g{k}", "count": 1, "routing_weight": w,
                     "service": {"dist": "exponential", "rate": r}} for k, (r, w) in enumerate(zip(rates, weights))],
    })


SCENARIOS = {
    # the worked example of docs/model.md: a strong bottleneck (client 0 has rho = 0.4)
    "worked-example": (lambda: exp_scenario([1, 2, 5, 10], [0.4, 0.3, 0.2, 0.1], 6)),
    # 12 clients, three speeds, routing proportional to speed
    "proportional": (lambda: parse_scenario({
        "name": "prop", "seed": 3, "concurrency": 8, "routing": "proportional",
        "horizon": {"updates": 300_000, "warmup": 15_000},
        "clients": [{"group": "fast", "count": 3, "service": {"dist": "exponential", "rate": 4.0}},
                    {"group": "mid", "count": 4, "service": {"dist": "exponential", "rate": 1.0}},
                    {"group": "slow", "count": 5, "service": {"dist": "exponential", "mean": 4.0}}]})),
    # 10 clients, heterogeneous rates and weights, heavy load (C = 25)
    "heavy-load": (lambda: exp_scenario(np.geomspace(1, 6, 10), np.linspace(1, 3, 10), 25, updates=500_000, seed=5)),
}


@pytest.fixture(scope="module", params=list(SCENARIOS))
def run(request):
    scenario = SCENARIOS[request.param]()
    return simulate(scenario)


def test_staleness_and_throughput_match_product_form(run):
    st, an, s = run.stats, run.analytic, run.scenario
    level, k = s.statistics.confidence, st.batches
    assert k >= s.statistics.batches
    m = 3 * s.n_clients + 1
    crit = bonferroni_critical(m, k)
    c = st.clients
    z_stale = bonferroni_z(c.staleness_mean, c.staleness_ci, an.staleness, batches=k, level=level)
    z_soj = bonferroni_z(c.sojourn_mean, c.sojourn_ci, an.sojourn, batches=k, level=level)
    z_thr = bonferroni_z(np.array([st.throughput]), np.array([st.throughput_ci]), np.array([an.throughput]),
                         batches=k, level=level)
    assert np.all(z_stale < crit), (z_stale, crit)
    assert np.all(z_soj < crit), (z_soj, crit)
    assert z_thr[0] < crit
    # the intervals are tight enough to mean something
    assert np.all(c.staleness_ci / an.staleness < 0.08)
    assert st.throughput_ci / an.throughput < 0.01
    z_queue = bonferroni_z(c.queue_mean, c.queue_ci, an.mean_queue, batches=k, level=level)
    assert np.all(z_queue < crit), (z_queue, crit)


@pytest.mark.parametrize("name", ["worked-example", "proportional"])
def test_off_by_one_staleness_formula_is_rejected(name):
    """Power: the same test rejects the classic mistake E_C[X_i] / p_i (no arrival theorem)."""
    run = simulate(SCENARIOS[name]())
    st, an, s = run.stats, run.analytic, run.scenario
    c, k = st.clients, st.batches
    wrong = an.mean_queue / s.p
    z = bonferroni_z(c.staleness_mean, c.staleness_ci, wrong, batches=k, level=s.statistics.confidence)
    assert np.max(z) > bonferroni_critical(3 * s.n_clients + 1, k)


def test_update_weighted_staleness_is_c_minus_one(run):
    """Sample-path identity: the mean staleness over all updates is C - 1 (docs/model.md)."""
    st, s = run.stats, run.scenario
    assert abs(st.mean_staleness - (s.concurrency - 1)) < max(st.mean_staleness_ci, 1e-9) * 1.5
    assert run.analytic.mean_staleness == pytest.approx(s.concurrency - 1, rel=1e-10)
    # routing is i.i.d., so client i's share of updates is binomial around p_i, give or take
    # the C tasks in flight at the window's edges
    n = st.window_updates
    share = st.clients.completions / n
    assert np.all(np.abs(share - s.p) < 4.5 * np.sqrt(s.p * (1 - s.p) / n) + s.concurrency / n)


def test_concurrency_one_has_zero_staleness():
    scenario = exp_scenario([1.0, 3.0], [1, 1], 1, updates=5_000)
    st = simulate(scenario).stats
    assert np.all(st.clients.staleness_max == 0)
    assert st.mean_staleness == 0


def test_trace_rows_follow_the_model(tmp_path, monkeypatch):
    """Trace: staleness = apply - dispatch, FIFO order per client, C tasks always in flight."""
    monkeypatch.setattr(engine_module, "RECORD_CHUNK", 4096)  # several chunks, one partial
    scenario = exp_scenario([1.0, 2.0, 4.0], [1, 2, 1], 5, updates=20_000)
    trace = tmp_path / "trace.parquet"
    tracker = Tracker(scenario)
    engine = Engine(scenario, [tracker, TraceWriter(trace)]).run()
    df = pd.read_parquet(trace)
    assert len(df) == 20_000 and engine.updates == 20_000
    assert (df["apply_update"].to_numpy() == np.arange(20_000)).all()
    assert (df["staleness"] == df["apply_update"] - df["dispatch_update"]).all()
    assert (df["completion_time"].diff().dropna() >= 0).all()
    for _, part in df.groupby("client"):
        # FIFO: tasks leave a client in the order they arrived
        assert (part["dispatch_time"].diff().dropna() >= 0).all()
        assert (part["dispatch_update"].diff().dropna() >= 0).all()
    assert len(engine.in_flight()) == scenario.concurrency
    # every dispatched task except the C in flight has completed, and none twice
    dispatched = df["dispatch_update"].value_counts().sort_index()
    assert dispatched.iloc[1:].max() == 1 and dispatched.loc[0] <= scenario.concurrency
    # the tracker's quantiles and means agree with the raw trace over the window
    st = tracker.result()
    window = df[df["apply_update"] >= scenario.horizon.warmup]
    for client, part in window.groupby("client"):
        assert st.clients.staleness_mean[client] == pytest.approx(part["staleness"].mean(), rel=1e-12)
        assert st.clients.staleness_p90[client] == np.quantile(part["staleness"], 0.9, method="inverted_cdf")
        assert st.clients.staleness_max[client] == part["staleness"].max()
        sojourn = (part["completion_time"] - part["dispatch_time"]).mean()
        assert st.clients.sojourn_mean[client] == pytest.approx(sojourn, rel=1e-12)


def test_time_horizon_stops_at_time():
    scenario = parse_scenario({
        "name": "time", "seed": 2, "concurrency": 4, "horizon": {"time": 500.0, "warmup": 50.0},
        "clients": [{"count": 3, "service": {"dist": "exponential", "rate": 2.0}}],
    })
    st = simulate(scenario).stats
    assert st.sim_time == 500.0 and st.window_start == 50.0
    an = solve(scenario.mu, scenario.p, 4)
    assert abs(st.throughput - an.throughput) < 4 * st.throughput_ci


def test_same_seed_same_path_different_seed_different_path():
    a = simulate(exp_scenario([1.0, 2.0], [1, 1], 3, updates=10_000, seed=1)).stats
    b = simulate(exp_scenario([1.0, 2.0], [1, 1], 3, updates=10_000, seed=1)).stats
    c = simulate(exp_scenario([1.0, 2.0], [1, 1], 3, updates=10_000, seed=2)).stats
    assert a.sim_time == b.sim_time and np.array_equal(a.clients.staleness_mean, b.clients.staleness_mean)
    assert a.sim_time != c.sim_time
