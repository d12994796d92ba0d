r"""Analysis of a network whose clients go offline, change speed and lose tasks.

Every case starts from three numbers per client i (:func:`client_factors`):

- the **capacity factor** ``c_i``, the long-run fraction of its speed client i delivers: the
  time-average of ``on_i(t) f_i(t)``. With on/off laws and a speed profile the two are
  independent in the long run, ``c_i = a_i fbar_i``, with ``a_i = E[on] / (E[on] + E[off])``
  (renewal-reward) and ``fbar_i = (1/m) sum_k f_k`` the time-average factor (the arithmetic
  mean: it is the work per unit time of a client that always has a task, so it is what the
  throughput sees; the harmonic mean would be a lone task's slowdown). A trace and a profile
  of the same period (or one a whole multiple of the other) are integrated over that period;
  otherwise ``c_i = a_i fbar_i``.
- the **dropout** ``d_i``;
- the **offline loss** ``l_i`` (``offline: drop``), the probability that a task at client i is
  lost because an on period ends before it completes. Approximation: the on-time a task
  spends at the client, ``w_i = a_i W_i`` (``W_i`` the product-form sojourn), is taken
  exponential, and on periods end at rate ``1 / E[on_i]``, so ``l_i = w_i / (w_i + E[on_i])``.

A task sent to client i is applied with probability ``s_i = (1 - l_i)(1 - d_i)``, and every
lost task is replaced by a dispatch routed by p. With ``D = sum_i p_i s_i``:

    lambda_applied = D lambda(mu c, p, C),      E[tau_i] = D E_{C-1}[X_i] / p_i,

the second because a task counts only the updates that are applied during its stay: at an
update epoch the others present are the C - 1 of the arrival theorem, and one at client j is
eventually applied with probability s_j, which cancels against client i's share of the
applied updates, ``p_i s_i / D``. The update-weighted mean staleness is then
``sum_i s_i E_{C-1}[X_i]`` (not C - 1: a lost task's stay counts for nobody).

**Exact cases** (:func:`fedsim.behaviour.exact_case`):

1. ``dropout``: always-on clients (exponential services, the base network): the queue
   process is exactly the product-form network's (a lost task is followed by a dispatch
   routed by p, like an applied one) and the coins are independent, so the formulas above
   are exact with ``l = 0``, ``c = 1``.
2. ``shared speed profile``: on top of 1, every client has the same profile: the network
   runs on the clock ``u(t) = int_0^t f``, so the throughput is ``fbar`` times the
   time-changed one, the time-average queues are unchanged (the weight ``1/f`` is
   deterministic) and so is the staleness (counted in updates); ``c_i = fbar`` for all.
3. ``Markov chain (C = 1)``: one task, exponential services and exponential on/off periods:
   the continuous-time chain of (the task's client, the on/off state of every client that
   switches) is solved numerically (:func:`solve_single_task`).

Elsewhere the formulas are the product-form approximation with effective rates ``mu_i c_i``,
reported with their error as every approximation is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from fractions import Fraction

import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as splinalg

from fedsim.analytic import ExtendedSolution, NetworkSolution
from fedsim.behaviour import SpeedProfile, exact_case
from fedsim.scenario import Scenario
from fedsim.traces import OnIntervals

Solution = NetworkSolution | ExtendedSolution


@dataclass(frozen=True, eq=False)
class BehaviourNetworkSolution(NetworkSolution):
    """A :class:`~fedsim.analytic.NetworkSolution` of applied updates: ``throughput`` and
    ``staleness`` count applied updates only, ``applied`` is ``s_i``, the probability that a task
    sent to client i is applied."""

    applied: np.ndarray | None = None

    @property
    def mean_staleness(self) -> float:
        """Update-weighted mean staleness, each client weighted by its share of applied updates."""
        return _applied_mean(self.p, self.applied, self.staleness)


@dataclass(frozen=True, eq=False)
class BehaviourExtendedSolution(ExtendedSolution):
    """An :class:`~fedsim.analytic.ExtendedSolution` of applied updates (see
    :class:`BehaviourNetworkSolution`)."""

    applied: np.ndarray | None = None

    @property
    def mean_staleness(self) -> float:
        return _applied_mean(self.p, self.applied, self.staleness)


def _applied_mean(p: np.ndarray, applied: np.ndarray, staleness: np.ndarray) -> float:
    w = p * applied
    routed = w > 0
    return float(np.sum(w[routed] * staleness[routed]) / np.sum(w[routed]))


@dataclass(frozen=True, eq=False)
class BehaviourModel:
    """The analysis of a scenario with client behaviour (module docstring).

    ``case`` names the exact case (None: the effective-rate approximation). Arrays are per
    client: ``availability`` a_i, ``capacity`` c_i, ``dropout`` d_i, ``offline_loss`` l_i,
    ``applied`` s_i. ``always_on_throughput`` is the throughput of the same network with every
    client always online at full speed and no loss.
    """

    case: str | None
    availability: np.ndarray
    capacity: np.ndarray
    dropout: np.ndarray
    offline_loss: np.ndarray
    applied: np.ndarray
    throughput: float
    always_on_throughput: float

    @property
    def exact(self) -> bool:
        return self.case is not None

    @property
    def loss_fraction(self) -> np.ndarray:
        """Probability that a task sent to client i is lost, ``1 - s_i``."""
        return 1.0 - self.applied


def client_factors(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """Per client: the availability fraction a_i and the capacity factor c_i (module docstring)."""
    availability, capacity = [], []
    for g in scenario.groups:
        a = np.ones(g.count) if g.availability is None else g.availability.fractions(g.count)
        profile = g.speed_profile
        fbar = 1.0 if profile is None else profile.mean_factor
        c = a * fbar
        if profile is not None and g.availability is not None and isinstance(g.availability.schedule, OnIntervals):
            trace = g.availability.schedule
            c = np.array([_trace_capacity(trace, k, profile, a[k] * fbar) for k in range(g.count)])
        availability.append(a)
        capacity.append(c)
    return np.concatenate(availability), np.concatenate(capacity)


def _trace_capacity(trace: OnIntervals, k: int, profile: SpeedProfile, independent: float) -> float:
    """Time-average of on(t) f(t) over a common period of the trace and the profile, when one
    period is a whole multiple of the other; else ``independent`` (= a fbar)."""
    longer, shorter = max(trace.period, profile.period), min(trace.period, profile.period)
    ratio = Fraction(longer / shorter).limit_denominator(1000)
    if ratio.denominator != 1 or abs(float(ratio) * shorter - longer) > 1e-9 * longer:
        return independent
    starts, ends = trace.intervals(k)
    reps = round(longer / trace.period)
    on_s = np.concatenate([starts + r * trace.period for r in range(reps)])
    on_e = np.concatenate([ends + r * trace.period for r in range(reps)])
    m = len(profile.factors)
    seg = profile.period / m
    total = 0.0
    for r in range(round(longer / profile.period)):
        for j, f in enumerate(profile.factors):
            lo, hi = r * profile.period + j * seg, r * profile.period + (j + 1) * seg
            total += f * np.clip(np.minimum(on_e, hi) - np.maximum(on_s, lo), 0, None).sum()
    return float(total / longer)


def analyse(scenario: Scenario, solve_at: Callable[[np.ndarray], Solution]) -> tuple[Solution, BehaviourModel]:
    """The analytical solution of a scenario with client behaviour, and its :class:`BehaviourModel`.

    ``solve_at(mu)`` solves the scenario's network (base or extended) with compute rates ``mu``.
    The solution's ``throughput`` and ``staleness`` count applied updates
    (:class:`BehaviourNetworkSolution`).
    """
    case = exact_case(scenario)
    availability, capacity = client_factors(scenario)
    dropout = np.concatenate([np.full(g.count, g.dropout) for g in scenario.groups])
    always_on = solve_at(scenario.mu).throughput
    if case == "Markov chain (C = 1)":
        solution, offline_loss = solve_single_task(scenario)
        applied = (1.0 - offline_loss) * (1.0 - dropout)
        return solution, BehaviourModel(case, availability, capacity, dropout, offline_loss, applied,
                                        solution.throughput, always_on)
    base = solve_at(scenario.mu * capacity)
    mean_on = np.concatenate([np.full(g.count, np.inf) if g.availability is None or not g.availability.drop
                              else g.availability.mean_on(g.count) for g in scenario.groups])
    on_time = availability * base.sojourn
    with np.errstate(invalid="ignore"):
        offline_loss = np.where(np.isfinite(mean_on), on_time / (on_time + mean_on), 0.0)
    applied = (1.0 - offline_loss) * (1.0 - dropout)
    solution = thinned(base, applied)
    return solution, BehaviourModel(case, availability, capacity, dropout, offline_loss, applied,
                                    solution.throughput, always_on)


def thinned(solution: Solution, applied: np.ndarray) -> Solution:
    """``solution`` with its throughput and staleness counting only the applied updates:
    ``lambda D`` and ``D E[tau_i]``, ``D = sum_i p_i s_i`` (module docstring)."""
    D = float(np.sum(solution.p * applied))
    values = {f.name: getattr(solution, f.name) for f in fields(solution)}
    values |= {"throughput": solution.throughput * D, "staleness": solution.staleness * D, "applied": applied}
    cls = BehaviourNetworkSolution if isinstance(solution, NetworkSolution) else BehaviourExtendedSolution
    return cls(**values)


# ---------------------------------------------------------------------------------------
# one task, exponential on/off periods: the Markov chain


def solve_single_task(scenario: Scenario) -> tuple[BehaviourNetworkSolution, np.ndarray]:
    """The exact solution at C = 1 with exponential services and exponential on/off periods.

    State ``(j, e)``: the task is at client j, ``e`` the on/off bits of the m clients that
    switch. Rates: a switching client goes off at ``1 / E[on]`` and on at ``1 / E[off]``; the
    task's client, when on, completes at ``mu_j`` and the next task goes to k with probability
    ``p_k`` (dropout or not); with ``offline: drop`` a switch-off of the task's client loses it
    and the replacement goes to k with probability p_k. From the stationary law pi:
    throughput ``sum pi(j, e) mu_j [j on] (1 - d_j)``, ``E[X_i] = pi(task at i)``, staleness 0,
    and the mean sojourn of the applied tasks at i by Little's law (pause: every visit ends in a
    completion) or, with drop, from the law of i's state when a task arrives.

    Returns the solution and the offline loss l_i (the fraction of visits to i that are lost).
    """
    n, p, mu = scenario.n_clients, scenario.p, scenario.mu
    groups = [scenario.groups[g] for g in scenario.client_group]
    switching = [i for i in range(n) if groups[i].availability is not None]
    m = len(switching)
    bit = {i: b for b, i in enumerate(switching)}
    alpha = np.array([1.0 / groups[i].availability.schedule.on.mean for i in switching])
    beta = np.array([1.0 / groups[i].availability.schedule.off.mean for i in switching])
    drop = np.array([groups[i].availability.drop for i in switching], dtype=bool)
    dropout = np.array([g.dropout for g in groups])
    E = 1 << m
    envs = np.arange(E)
    on_bits = (envs[:, None] >> np.arange(m)) & 1  # E x m, 1 = on
    rows, cols, vals = [], [], []

    def add(src: np.ndarray, dst: np.ndarray, rate: np.ndarray) -> None:
        rows.append(src)
        cols.append(dst)
        vals.append(rate)

    for j in range(n):
        state = j * E + envs
        j_on = np.ones(E, bool) if j not in bit else on_bits[:, bit[j]] == 1
        for b in range(m):  # switches of client switching[b]
            flipped = envs ^ (1 << b)
            rate = np.where(on_bits[:, b] == 1, alpha[b], beta[b])
            lost = (switching[b] == j) & drop[b] & (on_bits[:, b] == 1)
            keep = ~lost
            add(state[keep], j * E + flipped[keep], rate[keep])
            for k in range(n):  # a lost task's replacement goes to k
                add(state[lost], k * E + flipped[lost], rate[lost] * p[k])
        for k in range(n):  # completion at j, the next task to k
            add(state[j_on], k * E + envs[j_on], np.full(j_on.sum(), mu[j] * p[k]))
    size = n * E
    Q = sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(size, size))
    Q = Q.tocsr()
    Q = Q - sparse.diags(np.asarray(Q.sum(axis=1)).ravel())
    A = Q.T.tolil()
    A[0, :] = 1.0  # replace one balance equation by the normalisation
    rhs = np.zeros(size)
    rhs[0] = 1.0
    pi = splinalg.spsolve(A.tocsc(), rhs).reshape(n, E)
    on = np.ones((n, E), bool)
    for i in switching:
        on[i] = on_bits[:, bit[i]] == 1
    completions = (pi * on).sum(axis=1) * mu  # completion rate at each client
    present = pi.sum(axis=1)
    loss_rate = np.zeros(n)
    for b, i in enumerate(switching):
        if drop[b]:
            loss_rate[i] = (pi[i] * (on_bits[:, b] == 1)).sum() * alpha[b]
    visits = completions + loss_rate
    with np.errstate(invalid="ignore", divide="ignore"):
        offline_loss = np.where(visits > 0, loss_rate / visits, 0.0)
    throughput = float(np.sum(completions * (1.0 - dropout)))
    sojourn = _single_task_sojourn(scenario, pi, on_bits, switching, alpha, beta, drop, completions, loss_rate)
    zeros = np.zeros(n)
    solution = BehaviourNetworkSolution(
        mu=mu, p=p, concurrency=1, log_G=np.array([0.0, math.nan]), throughput=throughput, mean_queue=present,
        mean_queue_prev=zeros, utilisation=(pi * on).sum(axis=1), staleness=np.where(p > 0, 0.0, np.nan),
        sojourn=sojourn, applied=(1.0 - offline_loss) * (1.0 - dropout))
    return solution, offline_loss


def _single_task_sojourn(scenario: Scenario, pi: np.ndarray, on_bits: np.ndarray, switching: list[int],
                         alpha: np.ndarray, beta: np.ndarray, drop: np.ndarray, completions: np.ndarray,
                         loss_rate: np.ndarray) -> np.ndarray:
    """Mean time from dispatch to completion of the tasks that complete at each client.

    Without loss at i, Little's law: ``pi(task at i) / (visit rate to i)``. With drop at i,
    per visit from the state at arrival (on: completion with probability ``q = mu/(mu+alpha)``,
    ``E[T; completed] = mu/(mu+alpha)^2``; off: the same after an exponential wait of mean
    1/beta), the arrival state's law being that of i's bit right after a dispatch.
    """
    n, p, mu = scenario.n_clients, scenario.p, scenario.mu
    dispatch = completions.sum() + loss_rate.sum()
    sojourn = np.full(n, np.nan)
    routed = p > 0
    sojourn[routed] = pi.sum(axis=1)[routed] / (dispatch * p[routed])
    for b, i in enumerate(switching):
        if not drop[b] or p[i] == 0:
            continue
        off = on_bits[:, b] == 0
        on_j = np.ones(pi.shape, bool)
        for bb, j in enumerate(switching):
            on_j[j] = on_bits[:, bb] == 1
        # i's bit after a dispatch: after a completion anywhere (bits unchanged), or after a
        # loss (the losing client has just gone off)
        off_after = float(np.sum((pi * on_j * mu[:, None]).sum(axis=0) * off))
        for bb, j in enumerate(switching):
            if drop[bb]:
                lost = pi[j] * (on_bits[:, bb] == 1) * alpha[bb]
                off_after += float(np.sum(lost * (off | (j == i))))
        p_off = off_after / dispatch
        a, bt, m_ = alpha[b], beta[b], mu[i]
        q = m_ / (m_ + a)
        t_completed = m_ / (m_ + a) ** 2 + p_off * q / bt
        sojourn[i] = t_completed / q
    return sojourn
