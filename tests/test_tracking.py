"""The tracker and its output analysis against independent computations.

Exact tests: the streaming tracker (sparse per-slot sums folded in chunks, slot and segment
merges, memory budgets) gives the same means, interval half-widths, time-average queues and
quantiles as a direct computation from every completion record of the run, for the window
and batch size it chose. The quantile sketch is checked against exact quantiles (relative
error at most ALPHA, exact below 128). Statistical tests of the procedures themselves (fixed
seeds, stated levels): MSER-5 finds a known transient, the stationarity test rejects a trend
that MSER misses, von Neumann's statistic is standard normal for independent means and
rejects autocorrelated ones. Runs are flagged when their intervals are not to be trusted.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from scipy import stats

import fedsim.engine as engine_module
import fedsim.tracking as tracking
from conftest import REPO
from fedsim.cli import main
from fedsim.engine import Engine
from fedsim.errors import ScenarioError
from fedsim.outputanalysis import (CVM_QUANTILES, mser_truncation, stationary_start, stationarity_statistic,
                                   von_neumann_critical, von_neumann_z)
from fedsim.plots import staleness_figure
from fedsim.report import clients_table
from fedsim.run import simulate
from fedsim.scenario import parse_scenario
from fedsim.sketch import ALPHA, EXACT_BELOW, bucket_of, sketch_quantiles
from fedsim.tracking import KeyedSums, Tracker, _residual_sums


def scenario_doc(rates, weights, concurrency, horizon, seed=3, counts=None):
    counts = counts or [1] * len(rates)
    return {"name": "t", "seed": seed, "concurrency": concurrency, "horizon": horizon, "routing": "weights",
            "clients": [{"group": f"g{k}", "count": c, "routing_weight": w, "service": {"dist": "exponential", "rate": r}}
                        for k, (r, w, c) in enumerate(zip(rates, weights, counts))]}


class Recorder:
    """Keeps every completion record and the engine (for the tasks in flight at the end)."""

    def __init__(self) -> None:
        self.chunks = []

    def on_records(self, r) -> None:
        self.chunks.append(r)

    def on_finish(self, engine) -> None:
        self.engine = engine


def ci(y: np.ndarray, x: np.ndarray, level: float) -> np.ndarray:
    """Batch-means ratio half-width, written out (rows: batches)."""
    k = y.shape[0]
    r = y.sum(0) / x.sum(0)
    se = np.sqrt(((y - r * x) ** 2).sum(0) / (k * (k - 1))) / (x.sum(0) / k)
    return stats.t.ppf(0.5 + level / 2, k - 1) * se


def direct(rec: Recorder, scenario, st):
    """Every figure of the tracker recomputed from the raw records, for st's window and batches."""
    client = np.concatenate([c.client for c in rec.chunks])
    d_upd = np.concatenate([c.dispatch_update for c in rec.chunks])
    d_time = np.concatenate([c.dispatch_time for c in rec.chunks])
    done = np.concatenate([c.completion_time for c in rec.chunks])
    n, level, end = scenario.n_clients, scenario.statistics.confidence, rec.engine.env.now
    apply = np.arange(len(client))
    stale = apply - d_upd
    first, b, k = st.window_first_update, st.batch_size, st.batches
    t_w = st.window_start
    w = apply >= first
    out = {"completions": np.bincount(client[w], minlength=n)}
    out["staleness_mean"] = np.bincount(client[w], stale[w], n) / out["completions"]
    out["sojourn_mean"] = np.bincount(client[w], (done - d_time)[w], n) / out["completions"]
    # every task's time at its client within [t_w, end]: completed tasks and those still in flight
    flight = rec.engine.in_flight()
    t_from = np.r_[d_time, [t.dispatch_time for t in flight]]
    t_to = np.r_[done, np.full(len(flight), end)]
    owner = np.r_[client, [t.client for t in flight]].astype(int)
    overlap = np.clip(np.minimum(t_to, end) - np.maximum(t_from, t_w), 0, None)
    out["queue_mean"] = np.bincount(owner, overlap, n) / (end - t_w)
    # k batches of b updates from the window's first update
    edges = np.r_[t_w, done[first + b * np.arange(1, k + 1) - 1]]
    batch = (apply - first) // b
    in_b = w & (batch < k)
    dense = {name: np.zeros((k, n)) for name in ("count", "stale", "sojourn")}
    for name, v in (("count", np.ones(len(client))), ("stale", stale), ("sojourn", done - d_time)):
        np.add.at(dense[name], (batch[in_b], client[in_b]), v[in_b])
    presence = np.zeros((k, n))
    for j in range(k):
        part = np.clip(np.minimum(t_to, edges[j + 1]) - np.maximum(t_from, edges[j]), 0, None)
        presence[j] = np.bincount(owner, part, n)
    durations = np.diff(edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["staleness_ci"] = ci(dense["stale"], dense["count"], level)
        out["sojourn_ci"] = ci(dense["sojourn"], dense["count"], level)
        out["queue_ci"] = ci(presence, np.repeat(durations[:, None], n, axis=1), level)
    out["throughput"] = w.sum() / (end - t_w)
    out["throughput_ci"] = ci(np.full((k, 1), float(b)), durations[:, None], level)[0]
    out["mean_staleness_ci"] = ci(dense["stale"].sum(1, keepdims=True), dense["count"].sum(1, keepdims=True),
                                  level)[0]
    groups = np.zeros((len(scenario.groups), n))
    groups[scenario.client_group, np.arange(n)] = 1
    out["group_ci"] = ci(dense["stale"] @ groups.T, dense["count"] @ groups.T, level)
    out["staleness_max"] = np.array([stale[w & (client == i)].max() for i in range(n)], dtype=float)
    q = apply >= st.quantile_first_update
    out["quantiles"] = {p: np.array([np.quantile(stale[q & (client == i)], p, method="inverted_cdf")
                                     if (q & (client == i)).any() else np.nan for i in range(n)])
                        for p in (0.5, 0.9, 0.99)}
    return out


CASES = {
    # fixed warm-up in updates, many chunks, slot merges and sketch segment merges
    "fixed-updates": (scenario_doc([1.0, 2.0, 4.0, 0.7], [1, 2, 1, 0.5], 9, {"updates": 40_000, "warmup": 3_333},
                                   counts=[1, 2, 3, 1]), {}),
    # detected warm-up, large staleness (above the exact buckets), a tight slot-row budget
    "auto-heavy": (scenario_doc([1.0, 2.0, 5.0, 10.0], [0.4, 0.3, 0.2, 0.1], 300, {"updates": 60_000}),
                   {"SLOT_ENTRY_BUDGET": 300}),
    # fixed warm-up in time
    "fixed-time": (scenario_doc([1.0, 3.0, 2.0], [1, 1, 2], 6, {"time": 4_000.0, "warmup": 333.3}), {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tracker_equals_direct_computation(case, monkeypatch):
    doc, budgets = CASES[case]
    monkeypatch.setattr(engine_module, "RECORD_CHUNK", 1000)
    monkeypatch.setattr(tracking, "MAX_SLOTS", 128)
    monkeypatch.setattr(tracking, "MIN_SLOTS", 32)
    monkeypatch.setattr(tracking, "SKETCH_ENTRY_BUDGET", 400)
    for name, value in budgets.items():
        monkeypatch.setattr(tracking, name, value)
    scenario = parse_scenario(doc | {"statistics": {"batches": 5}})  # few batches: 128 slots are enough
    rec, tracker = Recorder(), Tracker(scenario)
    Engine(scenario, [tracker, rec]).run()
    st = tracker.result()
    assert st.batches >= scenario.statistics.batches and st.window_updates > 0
    if case == "auto-heavy":
        assert tracker.slots < 128  # the budget halved the slots
    assert tracker.sketch.count < tracking.SKETCH_SEGMENTS  # the sketch budget merged segments
    ref = direct(rec, scenario, st)
    c = st.clients
    assert np.array_equal(c.completions, ref["completions"])
    for name in ("staleness_mean", "sojourn_mean", "queue_mean", "staleness_ci", "sojourn_ci", "queue_ci"):
        np.testing.assert_allclose(getattr(c, name), ref[name], rtol=1e-9, err_msg=name)
    np.testing.assert_array_equal(c.staleness_max, ref["staleness_max"])
    assert st.throughput == pytest.approx(ref["throughput"], rel=1e-12)
    assert st.throughput_ci == pytest.approx(ref["throughput_ci"], rel=1e-9)
    assert st.mean_staleness_ci == pytest.approx(ref["mean_staleness_ci"], rel=1e-9)
    np.testing.assert_allclose(st.groups.staleness_ci, ref["group_ci"], rtol=1e-9)
    for p, got in zip((0.5, 0.9, 0.99), (c.staleness_p50, c.staleness_p90, c.staleness_p99)):
        exact = ref["quantiles"][p]
        small = ~(exact >= EXACT_BELOW)  # nan (no update in the quantiles' window) included
        np.testing.assert_array_equal(got[small], exact[small])
        assert np.all(np.abs(got - exact)[~small] <= ALPHA * exact[~small] + 1e-9)
    if case == "auto-heavy":
        assert (ref["quantiles"][0.99] >= EXACT_BELOW).any()  # the relative-error buckets were used


def test_keyed_sums_equal_a_dictionary():
    """Adding in chunks, compacting and re-keying give the per-key sums and maxima of a dict."""
    rng = np.random.default_rng(0)
    store = KeyedSums(2, 1)
    store.MIN_PENDING = 50
    expect: dict[int, list[float]] = {}
    for step in range(40):
        keys = rng.integers(0, 300, rng.integers(1, 80))
        sums = rng.normal(size=(2, len(keys)))
        maxima = rng.normal(size=(1, len(keys)))
        store.add(keys, sums, maxima)
        for j, key in enumerate(keys):
            row = expect.setdefault(int(key), [0.0, 0.0, -np.inf])
            row[0] += sums[0, j]
            row[1] += sums[1, j]
            row[2] = max(row[2], maxima[0, j])
        if step % 13 == 12:  # merge keys pairwise, as the tracker merges slots
            store.rekey(lambda k: k // 2)
            merged: dict[int, list[float]] = {}
            for key, (a, b, m) in expect.items():
                row = merged.setdefault(key // 2, [0.0, 0.0, -np.inf])
                row[0] += a
                row[1] += b
                row[2] = max(row[2], m)
            expect = merged
    keys, sums, maxima = store.table()
    assert list(keys) == sorted(expect)
    np.testing.assert_allclose(sums.T, [expect[k][:2] for k in keys], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(maxima[0], [expect[k][2] for k in keys])


def test_sketch_quantiles_within_alpha_of_exact():
    """Relative error at most ALPHA (1.08%) against exact inverted-CDF quantiles, exact below 128."""
    rng = np.random.default_rng(5)
    owners = 60
    sizes = rng.integers(1, 3000, owners)
    data = [np.floor(rng.lognormal(rng.uniform(0, 9), rng.uniform(0.1, 2), size)).astype(np.int64) for size in sizes]
    owner = np.repeat(np.arange(owners), sizes)
    values = np.concatenate(data)
    key = owner * 10_000 + bucket_of(values)
    keys, counts = np.unique(key, return_counts=True)
    qs = (0.01, 0.25, 0.5, 0.9, 0.99, 1.0)
    got = sketch_quantiles(keys // 10_000, keys % 10_000, counts.astype(float), owners, qs)
    worst = 0.0
    for i, x in enumerate(data):
        for k, q in enumerate(qs):
            exact = np.quantile(x, q, method="inverted_cdf")
            if exact < EXACT_BELOW:
                assert got[k, i] == exact
            else:
                worst = max(worst, abs(got[k, i] - exact) / exact)
    assert worst <= ALPHA
    assert worst > ALPHA / 4  # large values were really approximated (the bound is not vacuous)
    assert ALPHA == pytest.approx(0.0108, abs=1e-4)


def test_mser_finds_a_transient_and_the_stationarity_test_catches_a_trend():
    rng = np.random.default_rng(11)
    m = 2000
    j = np.arange(m)
    d_transient = [mser_truncation(6 * np.exp(-j / 60) + rng.normal(size=m)) for _ in range(20)]
    assert 100 < np.median(d_transient) < 400  # the bias 6 exp(-j/60) falls below the noise near j = 110-250
    d_iid = [mser_truncation(rng.normal(size=m)) for _ in range(50)]
    assert np.median(d_iid) < 20 and max(d_iid) < m / 2
    # a run that is all transient: a slow trend buried in noise. MSER keeps everything; the
    # stationarity test refuses every truncation point up to half the run
    trend = np.linspace(0, 1.5, m) + rng.normal(size=m)
    assert mser_truncation(trend) < m / 2
    start, w2 = stationary_start(trend, mser_truncation(trend), 0.025)
    assert start is None and w2 > CVM_QUANTILES[0.975]
    # and it accepts a stationary series at its level: about 2.5% rejections over 400 series
    rejected = sum(stationary_start(rng.normal(size=m), 0, 0.025)[0] != 0 for _ in range(400))
    assert rejected <= stats.binom.ppf(0.999, 400, 0.025)


def test_stationarity_statistic_of_a_bridge():
    """W^2 of iid noise with the true variance follows the bridge's law: P(W^2 > 0.461) = 5%."""
    rng = np.random.default_rng(2)
    w2 = np.array([stationarity_statistic(rng.normal(size=1000), 1.0) for _ in range(2000)])
    assert abs((w2 > CVM_QUANTILES[0.95]).mean() - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 2000)
    assert abs(w2.mean() - 1 / 6) < 0.01  # E W^2 = int_0^1 t (1 - t) dt = 1/6


def test_von_neumann_standard_normal_under_independence_and_rejects_ar1():
    rng = np.random.default_rng(4)
    k = 100
    x = rng.exponential(size=(4000, k))
    d = x - x.mean(1, keepdims=True)
    z = von_neumann_z((d**2).sum(1), (np.diff(x, axis=1) ** 2).sum(1), k)
    assert abs(z.mean()) < 0.07 and abs(z.std() - 1) < 0.05
    crit = von_neumann_critical(0.1, 1)
    assert abs((z > crit).mean() - 0.1) < 3 * np.sqrt(0.09 / 4000)
    e = rng.normal(size=(500, k))
    ar = np.zeros_like(e)
    for t in range(1, k):
        ar[:, t] = 0.4 * ar[:, t - 1] + e[:, t]
    d = ar - ar.mean(1, keepdims=True)
    assert (von_neumann_z((d**2).sum(1), (np.diff(ar, axis=1) ** 2).sum(1), k) > crit).mean() > 0.95


def test_sparse_residual_sums_equal_dense():
    rng = np.random.default_rng(8)
    n, k = 7, 30
    dense = rng.normal(size=(n, k)) * (rng.random((n, k)) < 0.4)
    client, batch = np.nonzero(dense)
    sq, sq_diff = _residual_sums(client, batch, dense[client, batch], k, n)
    np.testing.assert_allclose(sq, (dense**2).sum(1), rtol=1e-12)
    np.testing.assert_allclose(sq_diff, (np.diff(dense, axis=1) ** 2).sum(1), rtol=1e-12, atol=1e-12)


HETEROGENEOUS = yaml.safe_load((REPO / "scenarios" / "heterogeneous.yaml").read_text())["clients"]


def test_transient_run_is_flagged_everywhere(tmp_path, write_yaml, capsys):
    """The network of scenarios/heterogeneous.yaml stopped at T = 125, long before its transient
    ends (throughput 9.4 against 4.55): one warning line, stationary false, the figure marked."""
    path = write_yaml({"name": "short", "seed": 1, "concurrency": 100, "horizon": {"time": 125.0},
                       "clients": HETEROGENEOUS})
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0  # --quiet would silence the warning
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: not stationary")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stationary"] is False and summary["stationary_reason"].startswith("not stationary")
    assert summary["warning"].startswith(summary["stationary_reason"])
    assert summary["warmup_method"] == "mser-5" and summary["scenario"]["horizon"]["warmup"] == "auto"
    assert (tmp_path / "out" / "staleness.png").stat().st_size > 0
    result = simulate(parse_scenario({"name": "short", "seed": 1, "concurrency": 100, "horizon": {"time": 125.0},
                                      "clients": HETEROGENEOUS}))
    fig = staleness_figure(clients_table(result), "t", warning=result.stats.warning)
    assert any(t.get_text().startswith("NOT TO BE TRUSTED") for t in fig.texts)


def test_long_stationary_run_passes_and_reports_its_batches():
    st = simulate(parse_scenario(scenario_doc([1.0, 2.0, 5.0], [1, 1, 1], 4, {"updates": 200_000}))).stats
    assert st.warning is None and st.stationary is True and st.batch_test.passed
    assert st.batch_test.batches >= 4 * 20 and st.batch_test.statistic <= st.batch_test.critical
    assert st.batch_size >= 2 * st.batch_test.batch_size and 20 <= st.batches < 40
    assert st.window_first_update == st.warmup.updates < 200_000 // 2


def test_fixed_warmup_is_not_assessed():
    st = simulate(parse_scenario(scenario_doc([1.0, 2.0], [1, 1], 3, {"updates": 50_000, "warmup": 5_000}))).stats
    assert st.warmup.method == "fixed" and st.stationary is None and st.window_first_update == 5_000


def test_too_few_updates_is_flagged():
    st = simulate(parse_scenario(scenario_doc([1.0, 2.0], [1, 1], 3, {"updates": 150}))).stats
    assert st.stationary is False and "too few" in st.warmup.reason and not st.batch_test.passed


@pytest.mark.parametrize("horizon, expect", [
    ({"updates": 100}, None), ({"updates": 100, "warmup": "auto"}, None), ({"time": 9.0, "warmup": 1.5}, 1.5),
])
def test_warmup_parsing(horizon, expect):
    s = parse_scenario(scenario_doc([1.0], [1], 1, horizon))
    assert s.horizon.warmup == expect
    assert parse_scenario(s.to_dict()).horizon == s.horizon


def test_warmup_bad_string():
    with pytest.raises(ScenarioError, match=r"horizon.warmup: must be auto or a number"):
        parse_scenario(scenario_doc([1.0], [1], 1, {"updates": 100, "warmup": "half"}))


def test_memory_does_not_grow_with_the_run():
    """The tracker's tables are bounded by the slots times n (and the fine series by its cap),
    however many updates: ten times the run, the same bound."""
    for updates in (30_000, 300_000):
        scenario = parse_scenario(scenario_doc([1.0, 2.0, 3.0, 0.5, 1.5, 2.5], [1] * 6, 12, {"updates": updates}))
        tracker = Tracker(scenario)
        Engine(scenario, [tracker]).run()
        keys, _, _ = tracker.per_slot.table()
        n = scenario.n_clients
        assert len(keys) <= tracker.slots * n + 2 * tracker.slots * scenario.concurrency
        assert tracker.sketch.rows() <= (tracker.sketch.count + 1) * n * (bucket_of(np.array([updates]))[0] + 1)
        assert len(tracker.fine_stale) == tracking.FINE_CAP
