"""Client behaviour in the engine: on/off periods, pause and drop, speed profiles, dropout,
``per: step``, against independent computations.

Exact tests: always-on behaviour reproduces the base model's sample path (records equal);
a client following a trace, or exponential on/off periods, serves exactly its (speed-weighted)
on-time (completion times recomputed here from the trace, or from the engine's own streams
redrawn); conservation of tasks. Statistical tests (fixed seeds, batch-means or i.i.d.
intervals, stated levels): C = 1 with exponential on/off periods against the Markov chain
written out by hand here; dropout against the thinned product form (mean value analysis
written here); a task of K exponential steps against the Erlang mean and variance. Each also
rejects a plausible wrong formula.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy import stats

from conftest import bonferroni_critical, bonferroni_z
from fedsim.behaviour import exact_case
from fedsim.behaviour_analytic import solve_single_task
from fedsim.engine import Engine, draw_blocks
from fedsim.run import simulate
from fedsim.scenario import Streams, parse_scenario
from fedsim.stations import StationEngine


def exp(rate: float) -> dict:
    return {"dist": "exponential", "rate": rate}


class Records:
    """Observer keeping every applied update (client, dispatch update, dispatch and completion time)."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def on_records(self, r) -> None:
        self.rows.append(np.column_stack([r.client, r.dispatch_update, r.dispatch_time, r.completion_time]))

    @property
    def table(self) -> np.ndarray:
        return np.concatenate(self.rows)


class Counts:
    """Observer counting dispatches, applications and losses through the hooks."""

    def __init__(self) -> None:
        self.dispatched = self.applied = self.lost = 0

    def on_dispatch(self, task) -> None:
        self.dispatched += 1

    def on_complete(self, task, update, now) -> None:
        self.applied += 1

    def on_lost(self, task, now) -> None:
        self.lost += 1


def run_records(doc: dict) -> tuple[Engine, np.ndarray]:
    rec = Records()
    engine = Engine(parse_scenario(doc), [rec]).run()
    return engine, rec.table


# ---------------------------------------------------------------------------------------
# always on: today's sample path


BASE = {
    "name": "base", "seed": 11, "concurrency": 7, "horizon": {"updates": 30000},
    "clients": [{"group": "a", "count": 3, "service": {"dist": "lognormal", "mean": 1.0, "cv": 1.5}},
                {"group": "b", "count": 4, "service": exp(2.0)},
                {"group": "c", "count": 2, "service": {"dist": "gamma", "mean": 0.7, "cv": 0.5}}],
}


def neutral(doc: dict, trace) -> dict:
    """The same network with behaviour that changes nothing: an on-interval covering the whole
    (repeating) period, speed factors of 1, dropout 0, per: task written out."""
    doc = copy.deepcopy(doc)
    a, b, c = doc["clients"][:3]
    a["speed_profile"] = {"period": 7.0, "factors": [1.0, 1.0, 1.0]}
    b["availability"] = {"trace": str(trace), "period": 50.0, "offline": "drop"}
    c["dropout"] = 0.0
    c["speed_profile"] = {"period": 3.0, "factors": [1.0]}
    b["service"] = dict(b["service"], per="task")
    return doc


def test_always_on_behaviour_reproduces_the_base_sample_path(tmp_path):
    trace = tmp_path / "always.csv"
    trace.write_text("client,start,end\nd0,0,50\n")
    engine, base = run_records(BASE)
    assert type(engine) is Engine  # the base model's fast path
    engine, behaving = run_records(neutral(BASE, trace))
    assert isinstance(engine, StationEngine) and engine.scenario.behaves
    assert np.array_equal(base, behaving)
    # with an atomic law (grid and tie keys) as well
    doc = copy.deepcopy(BASE)
    doc["clients"].append({"group": "d", "count": 2, "service": {"dist": "deterministic", "mean": 0.5}})
    _, base = run_records(doc)
    changed = neutral(doc, trace)
    changed["clients"][3]["speed_profile"] = {"period": 2.0, "factors": [1.0, 1.0]}
    _, behaving = run_records(changed)
    assert np.array_equal(base, behaving)


def test_per_step_with_one_step_is_per_task():
    doc = copy.deepcopy(BASE)
    doc["clients"][0]["service"] = dict(doc["clients"][0]["service"], per="step")
    assert np.array_equal(run_records(BASE)[1], run_records(doc)[1])


# ---------------------------------------------------------------------------------------
# on-time: a client serves exactly its (speed-weighted) on-time


def completions_from_rate(edges: np.ndarray, rates: np.ndarray, works: np.ndarray) -> np.ndarray:
    """Completion times of consecutive tasks of the given works at one always-busy client whose
    working rate is ``rates[k]`` on ``[edges[k], edges[k+1])``: task k ends when the integral of
    the rate since the previous end reaches its work (computed by walking the segments)."""
    cumulative = np.concatenate([[0.0], np.cumsum(rates * np.diff(edges))])  # work done by each edge
    targets = np.cumsum(works)
    k = np.searchsorted(cumulative, targets, side="left") - 1  # the segment where each target is reached
    return edges[k] + (targets - cumulative[k]) / rates[k]


def trace_segments(intervals: list[tuple[float, float]], period: float, factors: list[float] | None,
                   horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """Edges and rates of online x speed factor up to ``horizon``, from the trace and profile."""
    cuts = {0.0, horizon}
    for r in range(int(horizon // period) + 1):
        for s, e in intervals:
            cuts |= {r * period + s, r * period + e}
    m = len(factors or [1])
    cuts |= {k * period / m for k in range(int(horizon / (period / m)) + 1)}
    edges = np.array(sorted(c for c in cuts if c <= horizon))
    mid = (edges[:-1] + edges[1:]) / 2
    phase = mid % period
    on = np.zeros(len(mid), bool)
    for s, e in intervals:
        on |= (phase >= s) & (phase < e)
    factor = np.array(factors)[(phase // (period / m)).astype(int)] if factors else np.ones(len(mid))
    return edges, np.where(on, factor, 0.0)


INTERVALS = [(0.0, 2.5), (4.0, 7.25), (9.0, 9.5), (11.0, 14.0)]  # period 14: the last joins the first


@pytest.mark.parametrize("factors", [None, [1.0, 0.5]])
def test_a_traced_client_serves_exactly_its_on_time(tmp_path, factors):
    trace = tmp_path / "device.csv"
    rows = "".join(f"phone,{s},{e}\n" for s, e in INTERVALS)
    trace.write_text(f"# one device, repeating every 14 time units\nclient,start,end\n{rows}")
    group = {"group": "phone", "count": 1, "service": {"dist": "deterministic", "mean": 1.0},
             "availability": {"trace": str(trace), "period": 14.0}}
    if factors:
        group["speed_profile"] = {"period": 14.0, "factors": factors}
    doc = {"name": "on-time", "seed": 1, "concurrency": 1, "horizon": {"time": 300.0, "warmup": 0.0},
           "clients": [group]}
    run = simulate(parse_scenario(doc))
    _, table = run_records(doc)
    edges, rates = trace_segments(INTERVALS, 14.0, factors, 400.0)
    expected = completions_from_rate(edges, rates, np.ones(len(table)))
    assert len(table) > 100 and np.allclose(table[:, 3], expected, rtol=0, atol=2e-6)
    # the tracker's availability is the trace's on-fraction over the window (whole periods and a part)
    on_time = np.clip(np.minimum(edges[1:], 300.0) - edges[:-1], 0, None) @ (rates > 0)
    assert run.behaviour.availability[0] == pytest.approx(on_time / 300.0, rel=1e-12)
    assert run.behaviour_model.availability[0] == pytest.approx(9.25 / 14.0)


def test_exponential_on_off_pause_keeps_the_remaining_work():
    """One busy client with exponential services and on/off periods: the k-th completion comes
    when the on-time since 0 equals the sum of the first k service draws (both redrawn here
    from the engine's streams), so no work is lost or added across a pause."""
    doc = {"name": "pause", "seed": 5, "concurrency": 1, "horizon": {"updates": 3000, "warmup": 0},
           "clients": [{"count": 1, "service": exp(1.0),
                        "availability": {"on": {"dist": "exponential", "mean": 2.0},
                                         "off": {"dist": "gamma", "mean": 1.0, "cv": 0.5}}}]}
    s = parse_scenario(doc)
    _, table = run_records(doc)
    streams = Streams(s.seed)
    block = int(draw_blocks(s.p)[0])
    works = streams.per_client("service", 1)[0].exponential(1.0, 4 * block)[: len(table)]
    on_rng, off_rng = (np.random.Generator(np.random.PCG64(c))
                       for c in streams.seed_sequence("availability").spawn(1)[0].spawn(2))
    ons = on_rng.exponential(2.0, 8 * block)
    offs = off_rng.gamma(1 / 0.25, 0.25, 8 * block)
    switches = np.cumsum(np.column_stack([ons, offs]).ravel())
    edges = np.concatenate([[0.0], switches])
    rates = np.tile([1.0, 0.0], len(switches) // 2)
    assert edges[-1] > table[-1, 3]
    expected = completions_from_rate(edges, rates, works)
    assert np.allclose(table[:, 3], expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------
# lost tasks


LOSSY = {
    "name": "lossy", "seed": 4, "concurrency": 9, "horizon": {"updates": 40000},
    "clients": [{"group": "phones", "count": 5, "service": exp(1.0), "dropout": 0.1,
                 "availability": {"on": {"dist": "exponential", "mean": 4.0},
                                  "off": {"dist": "lognormal", "mean": 2.0, "cv": 1.0}, "offline": "drop"}},
                {"group": "laptops", "count": 3, "service": {"dist": "gamma", "mean": 0.5, "cv": 0.7},
                 "speed_profile": {"period": 10.0, "factors": [1.0, 0.25]}, "dropout": 0.05},
                {"group": "servers", "count": 2, "service": exp(4.0)}],
}


def test_conservation_dispatched_equals_applied_lost_and_in_flight():
    counts = Counts()
    engine = Engine(parse_scenario(LOSSY), [counts]).run()
    lost = {cause: int(v.sum()) for cause, v in engine.lost.items()}
    assert lost["dropout"] > 1000 and lost["offline"] > 1000
    assert counts.lost == sum(lost.values()) and counts.applied == engine.updates == 40000
    assert counts.dispatched == counts.applied + counts.lost + len(engine.in_flight())
    assert len(engine.in_flight()) == 9  # replacements keep C tasks in circulation
    # only the clients that drop or lose tasks do
    assert np.all(engine.lost["offline"][5:] == 0) and np.all(engine.lost["dropout"][8:] == 0)


def test_dropout_is_a_binomial_coin_at_completion():
    records = Records()
    engine = Engine(parse_scenario(LOSSY), [records]).run()
    completed = np.bincount(records.table[:, 0].astype(int), minlength=10)[:8]
    d = np.array([0.1] * 5 + [0.05] * 3)
    lost = engine.lost["dropout"][:8]
    finished = lost + completed
    z = (lost - d * finished) / np.sqrt(d * (1 - d) * finished)
    assert np.all(np.abs(z) < stats.norm.ppf(1 - 0.001 / 16))  # 99.9% family-wise, two-sided


# ---------------------------------------------------------------------------------------
# C = 1, exponential on/off: the Markov chain


def chain_throughput(mu_a: float, mu_b: float, alpha: float, beta: float, d_a: float, drop: bool) -> float:
    """Applied updates per unit time of one task, client a (rate mu_a, on -> off at alpha,
    off -> on at beta, dropout d_a) and an always-on client b (rate mu_b), p = (1/2, 1/2).

    States: A1 (task at a, a on), A0 (at a, a off), B1 (at b, a on), B0 (at b, a off).
    A completion sends the next task to a or b with probability 1/2 each; with drop, a going off
    while it holds the task loses it, and the replacement goes to a (A0) or b (B0).
    """
    A1, A0, B1, B0 = range(4)
    Q = np.zeros((4, 4))
    Q[A1, A1] += mu_a / 2
    Q[A1, B1] += mu_a / 2
    if drop:
        Q[A1, A0] += alpha / 2
        Q[A1, B0] += alpha / 2
    else:
        Q[A1, A0] += alpha
    Q[A0, A1] += beta
    Q[B1, A1] += mu_b / 2
    Q[B1, B1] += mu_b / 2
    Q[B1, B0] += alpha
    Q[B0, A0] += mu_b / 2
    Q[B0, B0] += mu_b / 2
    Q[B0, B1] += beta
    np.fill_diagonal(Q, 0.0)
    Q -= np.diag(Q.sum(axis=1))
    A = np.vstack([Q.T, np.ones(4)])
    pi = np.linalg.lstsq(A, np.r_[np.zeros(4), 1.0], rcond=None)[0]
    return pi[A1] * mu_a * (1 - d_a) + (pi[B1] + pi[B0]) * mu_b


@pytest.mark.parametrize("offline", ["pause", "drop"])
def test_single_task_with_exponential_on_off_equals_its_markov_chain(offline):
    doc = {"name": "c1", "seed": 21, "concurrency": 1, "horizon": {"updates": 150000, "warmup": 5000},
           "clients": [{"group": "a", "service": exp(1.0), "dropout": 0.1,
                        "availability": {"on": {"dist": "exponential", "mean": 5.0},
                                         "off": {"dist": "exponential", "mean": 5.0}, "offline": offline}},
                       {"group": "b", "service": exp(2.0)}]}
    s = parse_scenario(doc)
    exact = chain_throughput(1.0, 2.0, 0.2, 0.2, 0.1, offline == "drop")
    solution, _ = solve_single_task(s)
    assert solution.throughput == pytest.approx(exact, rel=1e-10)
    assert s.exact
    run = simulate(s)
    st = run.stats
    z = stats.t.ppf(0.995, st.batches - 1)
    assert abs(st.throughput - exact) < z * st.throughput_ci / stats.t.ppf(0.975, st.batches - 1)
    # the effective-rate approximation (availability x rate) is not the chain, and the run says so
    a = 0.5
    effective = 1.0 / (0.5 / (a * 1.0) + 0.5 / 2.0) * (1 - 0.05)
    assert abs(st.throughput - effective) > 3 * st.throughput_ci


# ---------------------------------------------------------------------------------------
# dropout alone keeps the product form, thinned


def mva(mu: np.ndarray, p: np.ndarray, C: int) -> tuple[float, np.ndarray]:
    """Mean value analysis (Reiser & Lavenberg 1980): throughput and E_{C-1}[X]."""
    q = np.zeros_like(mu)
    for k in range(1, C + 1):
        prev = q
        w = (1 + prev) / mu
        lam = k / np.sum(p * w)
        q = lam * p * w
    return lam, prev


def test_dropout_thins_throughput_and_staleness_exactly():
    doc = {"name": "dropout", "seed": 8, "concurrency": 6, "horizon": {"updates": 150000, "warmup": 10000},
           "clients": [{"group": "fast", "count": 2, "service": exp(3.0), "dropout": 0.3},
                       {"group": "slow", "count": 3, "service": exp(0.8), "dropout": 0.1},
                       {"group": "steady", "count": 1, "service": exp(1.5)}]}
    s = parse_scenario(doc)
    assert s.exact and exact_case(s) == "dropout"
    p, mu = s.p, s.mu
    lam, prev = mva(mu, p, s.concurrency)
    applied = 1 - np.array([0.3] * 2 + [0.1] * 3 + [0.0])
    D = float(p @ applied)
    run = simulate(s)
    st, m = run.stats, run.behaviour_model
    staleness = D * prev / p
    group = s.client_group
    sim = np.r_[st.throughput, st.groups.staleness_mean]
    ci = np.r_[st.throughput_ci, st.groups.staleness_ci]
    expected = np.r_[lam * D, [staleness[group == g][0] for g in range(3)]]
    crit = bonferroni_critical(4, st.batches)
    assert np.all(bonferroni_z(sim, ci, expected, batches=st.batches, level=0.95) < crit)
    assert np.allclose(run.analytic.staleness, staleness) and run.analytic.throughput == pytest.approx(lam * D)
    # staleness counted over every completion (lost ones too) is rejected
    wrong = np.r_[lam * D, [(prev / p)[group == g][0] for g in range(3)]]
    assert np.any(bonferroni_z(sim, ci, wrong, batches=st.batches, level=0.95) > crit)
    assert m.exact and m.always_on_throughput == pytest.approx(lam)


# ---------------------------------------------------------------------------------------
# per: step


def test_a_task_of_k_exponential_steps_is_erlang():
    K, rate = 4, 2.0
    doc = {"name": "steps", "seed": 3, "concurrency": 1, "horizon": {"updates": 20000, "warmup": 0},
           "clients": [{"count": 1, "service": {"dist": "exponential", "rate": rate, "per": "step", "steps": K}}]}
    _, table = run_records(doc)
    durations = table[:, 3] - table[:, 2]  # one task at a time: its sojourn is its service
    n = len(durations)
    mean, var = K / rate, K / rate**2
    mu4 = 3 * K * (K + 2) / rate**4  # E[(S - ES)^4] of Erlang(K, rate)
    z = stats.norm.ppf(1 - 0.001 / 4)  # 99.9% family-wise, two statistics, two-sided
    assert abs(durations.mean() - mean) < z * np.sqrt(var / n)
    se_var = np.sqrt((mu4 - var**2) / n)  # asymptotic s.e. of the sample variance
    assert abs(durations.var(ddof=1) - var) < z * se_var
    # one draw scaled by K (variance K^2 / rate^2) is rejected
    assert abs(durations.var(ddof=1) - K**2 / rate**2) > 10 * se_var


class Losses:
    """Observer keeping (client, dispatch time, time) of every lost task."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float]] = []

    def on_lost(self, task, now) -> None:
        self.rows.append((task.client, task.dispatch_time, now))


def test_drop_loses_exactly_the_tasks_present_when_the_client_goes_offline(tmp_path):
    trace = tmp_path / "phones.csv"
    trace.write_text("client,start,end\np,0,3\np,5,6.5\np,8,9\nq,1,4\n")
    doc = {"name": "drop", "seed": 2, "concurrency": 5, "horizon": {"time": 2000.0, "warmup": 0.0},
           "clients": [{"group": "phones", "count": 2, "service": exp(2.0),
                        "availability": {"trace": str(trace), "period": 10.0, "offline": "drop"}},
                       {"group": "servers", "count": 1, "service": exp(1.0)}]}
    records, losses = Records(), Losses()
    engine = Engine(parse_scenario(doc), [records, losses]).run()
    lost = np.array(losses.rows)
    table = records.table
    offs = {0: np.array([3.0, 6.5, 9.0]), 1: np.array([4.0])}
    for client, ends in offs.items():
        mine = lost[lost[:, 0] == client]
        assert len(mine) > 100
        phase = np.round(mine[:, 2] % 10.0, 9)
        assert np.all(np.isin(phase, ends))  # lost only when the client goes offline
        applied = table[table[:, 0] == client]
        cycles = np.arange(200)[:, None] * 10.0 + ends[None, :]
        cut = cycles.ravel()
        # no applied task was at the client when it went offline ...
        inside = (applied[:, 2][:, None] < cut[None, :]) & (cut[None, :] < applied[:, 3][:, None])
        assert not inside.any()
        # ... and none completes while it is offline
        schedule = engine.scenario.groups[0].availability.schedule
        assert all(schedule.online_at(client, t) for t in applied[:, 3])
    assert engine.lost["dropout"].sum() == 0 and engine.lost["offline"][2] == 0


def test_replayed_durations_come_in_order_and_repeat(tmp_path):
    trace = tmp_path / "steps.csv"
    trace.write_text("client,duration\nx,0.5\ny,2.0\nx,1.25\nx,0.75\ny,1.0\n")
    doc = {"name": "replay", "seed": 1, "concurrency": 1, "horizon": {"updates": 12, "warmup": 0},
           "clients": [{"group": "g", "count": 1, "service": {"dist": "trace", "file": str(trace), "per": "step",
                                                              "steps": 2}}]}
    _, table = run_records(doc)
    # client 0 replays device x: 0.5, 1.25, 0.75, 0.5, 1.25, 0.75, ... two steps per task
    steps = np.tile([0.5, 1.25, 0.75], 8)
    assert np.allclose(table[:, 3] - table[:, 2], steps[0::2] + steps[1::2], rtol=0, atol=1e-9)
