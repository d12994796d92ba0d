"""The product-form model of the network: throughput, queue lengths and staleness.

Clients ``i = 1..n`` are FIFO stations with exponential service of rate ``mu_i``; the
server routes each new task to client ``i`` with probability ``p_i``; ``C`` tasks circulate.
With ``rho_i = p_i / mu_i`` the stationary law of the queue vector on
``{x >= 0, sum_i x_i = C}`` is the Gordon–Newell product form

    pi_C(x) = prod_i rho_i^{x_i} / G(C),    G(k) = sum_{|x| = k} prod_i rho_i^{x_i},

(Gordon & Newell, Oper. Res. 15(2), 1967). Everything in this module follows from the
normalising constants ``G(0..C)``:

* throughput (updates per unit time): ``lambda(C) = G(C-1) / G(C)``;
* utilisation: ``P_C(X_i >= 1) = rho_i lambda(C)``;
* mean queue: ``E_C[X_i] = sum_{k=1..C} rho_i^k G(C-k) / G(C)``;
* mean staleness of an update from client ``i``: ``E[tau_i] = E_{C-1}[X_i] / p_i``
  (arrival theorem: a task joining a client sees the network with ``C - 1`` tasks in
  equilibrium; discrete Little's law: per update, ``p_i`` tasks join client ``i`` and each
  stays ``tau_i`` updates, so ``E_{C-1}[X_i] = p_i E[tau_i]``; see Alahyane, Comte,
  Jonckheere & Moulines, arXiv:2502.08206, and for the network model Leconte, Jonckheere,
  Samsonov & Moulines, arXiv:2405.00017);
* mean sojourn time: ``W_i = E_C[X_i] / (lambda(C) p_i)`` (Little's law in time).

``G`` overflows float64 long before ``n = 10^4, C = 10^3``, so it is never formed. The
loads are rescaled to ``r_i = rho_i / max_j rho_j <= 1`` and only ratios are carried:
``G`` is the coefficient series of ``prod_i 1 / (1 - r_i z)``, i.e. ``G(k)`` is the
complete homogeneous symmetric polynomial ``h_k(r)``, and Newton's identity
``k h_k = sum_{m=1..k} P_m h_{k-m}`` with power sums ``P_m = sum_i r_i^m``
(Macdonald, *Symmetric Functions and Hall Polynomials*, ch. I, (2.11')) has only positive
terms, so it is numerically stable. Cost: ``O(nC)`` for the power sums and the queue
recursion, ``O(C^2)`` for the constants; all in numpy float64.

The extended network (:func:`solve_extended`)
---------------------------------------------
A task routed to client ``i`` visits ``downlink_i -> compute_i -> uplink_i -> server``; the
update is applied when the server finishes it. Compute and the server are FIFO queues; a link
is absent, a FIFO queue or an infinite-server (delay) station. Visit ratios per update are
``p_i`` at the stations of route i and 1 at the server. When every FIFO station is
exponential the network is a BCMP network (Baskett, Chandy, Muntz & Palacios, J. ACM 22(2),
1975) and, with ``rho_m = v_m E[S_m]``,

    pi_C(x) = prod_{m FIFO} rho_m^{x_m} prod_{m delay} rho_m^{x_m} / x_m!  / G(C),

whatever the laws at the delay stations (insensitivity: only their means enter). The delay
stations merge into one factor: the generating function of ``G`` is
``exp(a z) prod_{m FIFO} 1 / (1 - rho_m z)`` with ``a = sum_{m delay} rho_m``, so Newton's
identity holds with ``a`` added to the first power sum. Throughput ``lambda(C) = G(C-1) / G(C)``
counts server completions, i.e. updates; FIFO queues follow the recursion of :func:`solve`,
delay stations Little's law ``E_C[X_m] = lambda(C) rho_m``.

**Staleness.** At an update epoch the departing task sees the other ``C - 1`` tasks in the
equilibrium of the network with ``C - 1`` tasks (arrival theorem; Sevcik & Mitrani, J. ACM
28(2), 1981). A task dispatched to route i at update ``s`` is one of those others at the update
epochs ``s, ..., s + tau - 1`` and completes at ``s + tau``; per update ``p_i`` tasks are
dispatched to route i, so (discrete Little's law) ``p_i E[tau_i]`` is the mean number of
route-i tasks among the others at an update epoch. Those are the tasks at ``downlink_i``,
``compute_i``, ``uplink_i`` (only route i visits them) and the route-i tasks in the server
queue. Labelling each task at the server with its route gives a multiclass network with class
switching at the server whose FIFO station has class-blind exponential service; its product
form makes the labels of the tasks at the server i.i.d. with the visit-ratio weights ``p_j``
given their number, so the route-i share of the server queue is ``p_i E_{C-1}[X_s]``:

    E[tau_i] = (E_{C-1}[X_Di] + E_{C-1}[X_Ci] + E_{C-1}[X_Ui]) / p_i + E_{C-1}[X_s],

and ``sum_i p_i E[tau_i] = C - 1`` (all the other tasks). The server term is the route-i
share divided by ``p_i``: the whole server queue, the same for every route. The tests check
this against the Markov chain that keeps the routes in FIFO order at the server, with a
tagged task.

**Energy** (:func:`power_draw`): client i draws ``compute`` while it computes (probability
``rho_i = lambda p_i / mu_i``), ``idle`` otherwise, and ``uplink`` (``downlink``) per transfer in
progress on its link, on average ``lambda p_i E[U_i]`` (``lambda p_i E[D_i]``) transfers by
Little's law, FIFO or delay; the server draws ``busy`` with probability ``u_s = lambda / mu_s``
and ``idle`` otherwise. Energy per update is the total power divided by ``lambda``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ROUTE_STATIONS",
    "ExtendedNetwork",
    "ExtendedSolution",
    "NetworkSolution",
    "PowerDraw",
    "PowerModel",
    "ServerMeans",
    "StationMeans",
    "log_normalizing_constants",
    "mva",
    "mva_extended",
    "power_draw",
    "solve",
    "solve_extended",
    "throughput_curve",
]

#: Tolerance on ``|sum(p) - 1|`` accepted by the library guard.
ROUTING_SUM_TOLERANCE = 1e-9

#: The stations of a route, in the order a task visits them (the server comes after them).
ROUTE_STATIONS = ("downlink", "compute", "uplink")


@dataclass(frozen=True, eq=False)
class NetworkSolution:
    """Stationary means of the closed product-form network ``(mu, p, C)``.

    All arrays are read-only, indexed by client. Times are in the unit of ``1 / mu``;
    staleness is counted in updates.

    Attributes:
        mu: service rates ``mu_i`` (tasks per unit time while busy).
        p: routing probabilities ``p_i`` (the long-run fraction of updates from client i).
        concurrency: ``C``, the number of circulating tasks.
        log_G: ``log G(k)`` for ``k = 0..C`` with ``rho_i = p_i / mu_i`` as given
            (``G(0) = 1``).
        throughput: ``lambda(C) = G(C-1) / G(C)``, updates applied per unit time.
        mean_queue: ``E_C[X_i]``, mean number of tasks at client i (waiting or in service).
        mean_queue_prev: ``E_{C-1}[X_i]``, the same in the network with ``C - 1`` tasks, which
            is what an arriving task sees (zeros when ``C = 1``).
        utilisation: ``P(X_i >= 1) = rho_i lambda(C)``, the fraction of time client i is busy.
        staleness: ``E[tau_i] = E_{C-1}[X_i] / p_i``, mean number of other updates applied
            between the dispatch of a task to client i and the application of its update;
            0 when ``C = 1`` and ``nan`` where ``p_i = 0`` (client i never produces updates).
        sojourn: ``W_i = E_C[X_i] / (lambda(C) p_i)``, mean time from dispatch to completion
            at client i; ``nan`` where ``p_i = 0``.
    """

    mu: np.ndarray
    p: np.ndarray
    concurrency: int
    log_G: np.ndarray
    throughput: float
    mean_queue: np.ndarray
    mean_queue_prev: np.ndarray
    utilisation: np.ndarray
    staleness: np.ndarray
    sojourn: np.ndarray

    @property
    def mean_staleness(self) -> float:
        """Update-weighted mean staleness ``sum_i p_i E[tau_i]``.

        Equal to ``sum_i E_{C-1}[X_i] = C - 1`` whatever ``mu`` and ``p``: routing moves
        staleness between clients but cannot change its average over updates.
        """
        routed = self.p > 0
        return float(np.sum(self.p[routed] * self.staleness[routed]))


def log_normalizing_constants(rho: np.ndarray, C: int) -> np.ndarray:
    """Return ``log G(k)`` for ``k = 0..C``, ``G(k) = sum_{|x| = k} prod_i rho_i^{x_i}``.

    ``rho`` holds the relative loads ``rho_i = p_i / mu_i`` (any non-negative scale, at least
    one positive). Equivalent to Buzen's algorithm (``g[k] += rho_i g[k-1]`` for each
    station) but computed by Newton's identity on the rescaled loads, so it neither
    overflows nor loses accuracy for ``n = 10^4, C = 10^3``.

    Raises:
        ValueError: ``rho`` is not a finite, non-negative 1-D array with a positive entry,
            or ``C`` is not an integer ``>= 1``.
    """
    rho = np.asarray(rho, dtype=np.float64)
    if rho.ndim != 1 or rho.size == 0:
        raise ValueError(f"rho must be a non-empty 1-D array, got shape {rho.shape}")
    if not np.all(np.isfinite(rho)) or np.any(rho < 0):
        raise ValueError("rho must be finite and >= 0")
    if not np.any(rho > 0):
        raise ValueError("rho must have at least one positive entry")
    C = _check_concurrency(C, "C")
    rho_max = rho.max()
    ratios = _scaled_throughputs(rho / rho_max, C)
    return _log_G_from_ratios(ratios, rho_max)


def solve(mu: np.ndarray, p: np.ndarray, C: int) -> NetworkSolution:
    """Solve the product-form network with service rates ``mu``, routing ``p``, ``C`` tasks.

    Throughput and ``log G`` come from the normalising constants. The mean queues follow
    from the recursion (a rewriting of the direct sum for ``E_k[X_i]``)

        E_k[X_i] = rho_i lambda(k) (1 + E_{k-1}[X_i]),    E_0[X_i] = 0,

    whose terms are all non-negative (``rho_i lambda(k) <= 1`` is a utilisation). It is run
    on ``s_k,i = E_k[X_i] / p_i = (lambda(k) / mu_i) (1 + p_i s_{k-1,i})``, so that the
    staleness ``s_{C-1,i}`` and the sojourn ``W_i = (1 + p_i s_{C-1,i}) / mu_i`` stay accurate
    for clients whose ``p_i`` is so small that ``E[X_i]`` underflows.

    Raises:
        ValueError: shapes differ, ``mu <= 0``, ``p < 0``, ``|sum(p) - 1| > 1e-9``,
            non-finite entries, or ``C`` not an integer ``>= 1``.
    """
    mu, p = _check_network(mu, p)
    C = _check_concurrency(C, "C")
    rho = p / mu
    rho_max = rho.max()
    ratios = _scaled_throughputs(rho / rho_max, C)
    throughputs = ratios / rho_max
    per_visit, per_visit_prev = _queues_per_visit(mu, p, throughputs)
    throughput = float(throughputs[-1])
    unrouted = p == 0
    staleness = per_visit_prev.copy()
    staleness[unrouted] = np.nan
    sojourn = (1.0 + p * per_visit_prev) / mu
    sojourn[unrouted] = np.nan
    return NetworkSolution(
        mu=_frozen(mu),
        p=_frozen(p),
        concurrency=C,
        log_G=_frozen(_log_G_from_ratios(ratios, rho_max)),
        throughput=throughput,
        mean_queue=_frozen(p * per_visit),
        mean_queue_prev=_frozen(p * per_visit_prev),
        utilisation=_frozen(p * (throughput / mu)),
        staleness=_frozen(staleness),
        sojourn=_frozen(sojourn),
    )


def mva(mu: np.ndarray, p: np.ndarray, C: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Exact mean value analysis: ``(lambda(C), E_C[X], E_{C-1}[X])`` without ``G``.

    Reiser & Lavenberg (J. ACM 27(2), 1980), with visit ratios ``p_i``: for ``k = 1..C``

        W_i(k) = (1 + Q_i(k-1)) / mu_i,   lambda(k) = k / sum_i p_i W_i(k),
        Q_i(k) = lambda(k) p_i W_i(k),    Q_i(0) = 0.

    An independent route to the numbers of :func:`solve`, kept as a cross-check.

    Raises:
        ValueError: as :func:`solve`.
    """
    mu, p = _check_network(mu, p)
    C = _check_concurrency(C, "C")
    queue = np.zeros_like(mu)
    queue_prev = queue
    throughput = 0.0
    for k in range(1, C + 1):
        sojourn = (1.0 + queue) / mu
        throughput = k / float(np.dot(p, sojourn))
        queue_prev, queue = queue, throughput * p * sojourn
    return throughput, queue, queue_prev


def throughput_curve(mu: np.ndarray, p: np.ndarray, C_max: int) -> np.ndarray:
    """Return ``lambda(C) = G(C-1) / G(C)`` for ``C = 1..C_max`` in one pass.

    ``lambda`` increases with ``C`` towards ``1 / max_i rho_i`` (the bottleneck client's
    capacity ``mu_b / p_b``). Cost ``O(n C_max + C_max^2)``, the same as one :func:`solve`.

    Raises:
        ValueError: as :func:`solve`, for ``C_max``.
    """
    mu, p = _check_network(mu, p)
    C_max = _check_concurrency(C_max, "C_max")
    rho = p / mu
    rho_max = rho.max()
    return _scaled_throughputs(rho / rho_max, C_max) / rho_max


# --------------------------------------------------------------------------- the extended network


@dataclass(frozen=True, eq=False)
class ExtendedNetwork:
    """The closed network with links and a server, one entry per client (route).

    A task routed to client ``i`` visits ``downlink_i -> compute_i -> uplink_i -> server``; the
    update is applied when the server finishes it, and the next task is routed to client ``j``
    with probability ``p_j``. Compute stations are single-server FIFO queues of rate ``mu_i``.
    A link is absent (mean 0), a FIFO queue, or an infinite-server *delay* station (transfers
    do not queue). The server is absent (``server = 0``: updates are applied instantly) or a
    FIFO queue of mean service time ``server``. With no link and no server this is the base
    network of :func:`solve`.

    Attributes:
        mu: compute rates ``mu_i`` (tasks per unit time while busy).
        downlink, uplink: mean transfer times ``E[D_i]``, ``E[U_i]`` (0 where there is no link).
        downlink_delay, uplink_delay: True where the link is a delay station, False where it is
            a FIFO queue (default: delay; ignored where there is no link).
        server: mean service time ``1 / mu_s`` of the server (0: instantaneous).
    """

    mu: np.ndarray
    downlink: np.ndarray | None = None
    downlink_delay: np.ndarray | None = None
    uplink: np.ndarray | None = None
    uplink_delay: np.ndarray | None = None
    server: float = 0.0

    def __post_init__(self) -> None:
        mu = np.array(self.mu, dtype=np.float64)
        if mu.ndim != 1 or mu.size == 0:
            raise ValueError(f"mu must be a non-empty 1-D array, got shape {mu.shape}")
        if not (np.all(np.isfinite(mu)) and np.all(mu > 0)):
            raise ValueError("mu must be finite and > 0")
        object.__setattr__(self, "mu", _frozen(mu))
        for link in ("downlink", "uplink"):
            mean = np.zeros_like(mu) if getattr(self, link) is None else np.array(getattr(self, link), np.float64)
            delay = getattr(self, f"{link}_delay")
            delay = np.ones(mu.shape, bool) if delay is None else np.array(delay, dtype=bool)
            if mean.shape != mu.shape or delay.shape != mu.shape:
                raise ValueError(f"{link} and {link}_delay must have the shape of mu, {mu.shape}")
            if not (np.all(np.isfinite(mean)) and np.all(mean >= 0)):
                raise ValueError(f"{link} mean times must be finite and >= 0")
            object.__setattr__(self, link, _frozen(mean))
            object.__setattr__(self, f"{link}_delay", _frozen(delay))
        server = float(self.server)
        if not (math.isfinite(server) and server >= 0):
            raise ValueError(f"server mean time must be finite and >= 0, got {self.server!r}")
        object.__setattr__(self, "server", server)

    @property
    def n(self) -> int:
        """Number of clients."""
        return int(self.mu.size)

    def means(self) -> np.ndarray:
        """Mean service time of every route station, rows ``ROUTE_STATIONS`` (downlink, compute, uplink)."""
        return np.vstack([self.downlink, 1.0 / self.mu, self.uplink])

    def rates(self) -> np.ndarray:
        """Service rates ``1 / E[S]`` of the route stations (rows as :meth:`means`; 0 where absent)."""
        return np.vstack([_inverse(self.downlink), self.mu, _inverse(self.uplink)])

    def fifo(self) -> np.ndarray:
        """True where a route station is a FIFO queue that exists (rows as :meth:`means`)."""
        return np.vstack([(self.downlink > 0) & ~self.downlink_delay, np.ones(self.n, bool),
                          (self.uplink > 0) & ~self.uplink_delay])


@dataclass(frozen=True, eq=False)
class StationMeans:
    """Stationary means of the stations of one kind on every route, one entry per client.

    Attributes:
        mean_queue: ``E_C[X]``, mean number of tasks at the station (waiting or in service).
        mean_queue_prev: ``E_{C-1}[X]``, the same with ``C - 1`` tasks (what an arrival sees).
        utilisation: fraction of time a FIFO station is busy, ``lambda p_i E[S]``; ``nan`` at a
            delay station (its mean number of tasks in service is ``mean_queue``); 0 where absent.
        time: mean time per visit (waiting and service), ``E[S] (1 + E_{C-1}[X])`` at a FIFO
            station (arrival theorem), ``E[S]`` at a delay station, 0 where absent; ``nan``
            where ``p_i = 0``.
    """

    mean_queue: np.ndarray
    mean_queue_prev: np.ndarray
    utilisation: np.ndarray
    time: np.ndarray


@dataclass(frozen=True)
class ServerMeans:
    """Stationary means of the server: tasks present (``E_C``, ``E_{C-1}``), busy fraction
    ``lambda / mu_s`` and mean time per visit ``(1 + E_{C-1}[X_s]) / mu_s``; all 0 when the
    server is instantaneous."""

    mean_queue: float
    mean_queue_prev: float
    utilisation: float
    time: float


@dataclass(frozen=True, eq=False)
class ExtendedSolution:
    """Stationary means of the extended network ``(network, p, C)``.

    Attributes:
        network: the network solved.
        p: routing probabilities.
        concurrency: ``C``.
        log_G: ``log G(k)``, ``k = 0..C``, of the product form (module docstring).
        throughput: ``lambda(C) = G(C-1) / G(C)``, server completions (= updates) per unit time.
        downlink, compute, uplink: the route stations (:class:`StationMeans`).
        server: the server (:class:`ServerMeans`).
        staleness: ``E[tau_i] = (E_{C-1}[X_Di] + E_{C-1}[X_Ci] + E_{C-1}[X_Ui]) / p_i +
            E_{C-1}[X_s]``, the mean number of other updates applied between the dispatch of a
            task to client i and the application of its update; ``nan`` where ``p_i = 0``.
        sojourn: mean time from dispatch to application of a task routed to client i (the sum of
            its four mean times per visit); ``nan`` where ``p_i = 0``.
    """

    network: ExtendedNetwork
    p: np.ndarray
    concurrency: int
    log_G: np.ndarray
    throughput: float
    downlink: StationMeans
    compute: StationMeans
    uplink: StationMeans
    server: ServerMeans
    staleness: np.ndarray
    sojourn: np.ndarray

    @property
    def stations(self) -> dict[str, StationMeans]:
        """The route stations by name, in the order a task visits them."""
        return {name: getattr(self, name) for name in ROUTE_STATIONS}

    @property
    def mean_staleness(self) -> float:
        """``sum_i p_i E[tau_i] = sum_i (E_{C-1}[X_Di] + E_{C-1}[X_Ci] + E_{C-1}[X_Ui]) +
        E_{C-1}[X_s] = C - 1``: the update-weighted mean staleness, whatever the network."""
        routed = self.p > 0
        return float(np.sum(self.p[routed] * self.staleness[routed]))


def solve_extended(network: ExtendedNetwork, p: np.ndarray, C: int) -> ExtendedSolution:
    """Solve the extended network (:class:`ExtendedNetwork`) with routing ``p`` and ``C`` tasks.

    The FIFO stations (computes, FIFO links, the server) have loads ``rho = v E[S]`` with visit
    ratios ``v = p_i`` on route i and ``v = 1`` at the server; the delay stations add up to one
    infinite-server load ``a = sum_i p_i (E[D_i] + E[U_i])`` over the delay links (module
    docstring). The constants come from Newton's identity with ``a`` added to ``P_1``, the
    FIFO queues from the per-visit recursion of :func:`solve` (``s_k = lambda(k) E[S] (1 + v
    s_{k-1})``), the delay stations from Little's law, ``E_k[X] = lambda(k) p_i E[S]``.
    Cost ``O(m C + C^2)`` for ``m`` FIFO stations.

    Raises:
        ValueError: ``p`` is not a routing of ``network.n`` clients (as :func:`solve`), or ``C``
            is not an integer ``>= 1``.
    """
    _, p = _check_network(network.mu, p)
    C = _check_concurrency(C, "C")
    means, fifo = network.means(), network.fifo()
    visits = np.broadcast_to(p, means.shape)
    rates = np.concatenate([network.rates()[fifo], [1.0 / network.server] if network.server > 0 else []])
    fifo_visits = np.concatenate([visits[fifo], [1.0] if network.server > 0 else []])
    delay_load = float(np.sum(visits * means * ~fifo))
    rho = fifo_visits / rates
    rho_max = rho.max()
    ratios = _scaled_throughputs(rho / rho_max, C, delay_load / rho_max)
    throughputs = ratios / rho_max
    throughput = float(throughputs[-1])
    per_visit, per_visit_prev = _queues_per_visit(rates, fifo_visits, throughputs)
    prev_throughput = float(throughputs[-2]) if C > 1 else 0.0
    s, s_prev = throughput * means, prev_throughput * means  # delay stations: E_k[X] / p = lambda(k) E[S]
    s[fifo], s_prev[fifo] = per_visit[: fifo.sum()], per_visit_prev[: fifo.sum()]
    unrouted = p == 0
    server = (ServerMeans(float(per_visit[-1]), float(per_visit_prev[-1]), throughput * network.server,
                          float(per_visit[-1]) / throughput) if network.server > 0 else ServerMeans(0.0, 0.0, 0.0, 0.0))
    utilisation = np.where(fifo, visits * throughput * means, np.where(means > 0, np.nan, 0.0))
    time = s / throughput
    time[:, unrouted] = np.nan
    staleness = s_prev.sum(axis=0) + server.mean_queue_prev
    staleness[unrouted] = np.nan
    stations = [StationMeans(mean_queue=_frozen(p * s[row]), mean_queue_prev=_frozen(p * s_prev[row]),
                             utilisation=_frozen(utilisation[row].copy()), time=_frozen(time[row].copy()))
                for row in range(len(ROUTE_STATIONS))]
    return ExtendedSolution(
        network=network, p=_frozen(p), concurrency=C, log_G=_frozen(_log_G_from_ratios(ratios, rho_max)),
        throughput=throughput, downlink=stations[0], compute=stations[1], uplink=stations[2], server=server,
        staleness=_frozen(staleness), sojourn=_frozen(time.sum(axis=0) + server.time),
    )


def mva_extended(network: ExtendedNetwork, p: np.ndarray, C: int) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """Exact mean value analysis of the extended network: ``(lambda(C), E_C[X], E_{C-1}[X])``.

    Reiser & Lavenberg (1980) with visit ratios ``p_i`` on route i and 1 at the server: for
    ``k = 1..C``, ``W_m(k) = E[S_m] (1 + Q_m(k-1))`` at a FIFO station and ``E[S_m]`` at a delay
    station, ``lambda(k) = k / sum_m v_m W_m(k)``, ``Q_m(k) = lambda(k) v_m W_m(k)``. The queues
    are returned by station name (``downlink``, ``compute``, ``uplink``: arrays; ``server``: a
    float). An independent route to the numbers of :func:`solve_extended`, kept as a cross-check.

    Raises:
        ValueError: as :func:`solve_extended`.
    """
    _, p = _check_network(network.mu, p)
    C = _check_concurrency(C, "C")
    means, fifo = network.means(), network.fifo()
    queue = np.zeros_like(means)
    server = 0.0
    queue_prev, server_prev, throughput = queue, server, 0.0
    for k in range(1, C + 1):
        time = means * (1.0 + fifo * queue)
        server_time = network.server * (1.0 + server)
        throughput = k / (float(np.sum(p * time)) + server_time)
        queue_prev, queue = queue, throughput * p * time
        server_prev, server = server, throughput * server_time

    def named(q: np.ndarray, s: float) -> dict[str, Any]:
        return dict(zip(ROUTE_STATIONS, q)) | {"server": s}

    return throughput, named(queue, server), named(queue_prev, server_prev)


# --------------------------------------------------------------------------- energy


@dataclass(frozen=True, eq=False)
class PowerModel:
    """Power drawn by each client and by the server, in watts (joules per unit of time).

    Attributes:
        compute: drawn by client i while it computes (its compute station is busy).
        uplink, downlink: drawn by client i per transfer in progress on that link, for the
            transfer's whole duration (at a FIFO link only the transfer in service draws it).
        idle: drawn by client i while it does not compute.
        server_busy, server_idle: drawn by the server while it serves an update, and otherwise.
    """

    compute: np.ndarray
    uplink: np.ndarray
    downlink: np.ndarray
    idle: np.ndarray
    server_busy: float = 0.0
    server_idle: float = 0.0

    def __post_init__(self) -> None:
        shape = np.shape(self.compute)
        for name in ("compute", "uplink", "downlink", "idle"):
            watts = np.array(getattr(self, name), dtype=np.float64)
            if watts.shape != shape or watts.ndim != 1:
                raise ValueError(f"power {name} must be a 1-D array of shape {shape}")
            if not (np.all(np.isfinite(watts)) and np.all(watts >= 0)):
                raise ValueError(f"power {name} must be finite and >= 0")
            object.__setattr__(self, name, _frozen(watts))
        for name in ("server_busy", "server_idle"):
            watts = float(getattr(self, name))
            if not (math.isfinite(watts) and watts >= 0):
                raise ValueError(f"power {name} must be finite and >= 0, got {watts!r}")
            object.__setattr__(self, name, watts)


@dataclass(frozen=True, eq=False)
class PowerDraw:
    """Mean power of the network in its stationary regime.

    ``client[i]`` and ``server`` are watts (joules per unit of time); ``total`` their sum;
    ``per_update = total / lambda``, joules per applied update.
    """

    client: np.ndarray
    server: float
    throughput: float

    @property
    def total(self) -> float:
        return float(self.client.sum()) + self.server

    @property
    def per_update(self) -> float:
        return self.total / self.throughput


def power_draw(solution: ExtendedSolution, power: PowerModel) -> PowerDraw:
    """Mean power of every client and of the server (the energy contract of fedsim).

    With ``lambda`` the throughput and ``rho_i = lambda p_i / mu_i`` the compute utilisation:

        client i:  compute rho_i + uplink lambda p_i E[U_i] + downlink lambda p_i E[D_i]
                   + idle (1 - rho_i),
        server:    busy u_s + idle (1 - u_s),   u_s = lambda / mu_s (0 if instantaneous).

    ``lambda p_i E[U_i]`` is the mean number of uplink transfers in progress at a delay link and
    the busy fraction of a FIFO link (Little's law either way): a transfer draws its link's
    power for its whole duration. "Idle" means "not computing", whatever the links do. Energy
    per update is the total divided by ``lambda``.

    Raises:
        ValueError: the power model has another number of clients than the network.
    """
    network = solution.network
    if power.compute.shape != network.mu.shape:
        raise ValueError(f"power model has {power.compute.size} clients, the network {network.n}")
    lam, p = solution.throughput, solution.p
    rho = solution.compute.utilisation
    client = (power.compute * rho + power.idle * (1.0 - rho)
              + lam * p * (power.uplink * network.uplink + power.downlink * network.downlink))
    busy = solution.server.utilisation
    server = power.server_busy * busy + power.server_idle * (1.0 - busy)
    return PowerDraw(client=_frozen(client), server=float(server), throughput=lam)


def _scaled_throughputs(r: np.ndarray, C: int, delay: float = 0.0) -> np.ndarray:
    """Ratios ``G_r(k-1) / G_r(k)`` for ``k = 1..C`` of the loads ``r`` (``max r = 1``).

    Newton's identity ``G(k) = (1/k) sum_{m=1..k} P_m G(k-m)`` is applied to the ratios
    ``h_j = G(j) / G(k-1)``, ``j < k``, which lie in ``(0, 1]`` because ``G_r`` increases
    when ``max r = 1``; the ones that underflow to zero are negligible against the term
    ``P_1 h_{k-1} = P_1 >= 1``. ``delay`` is the (rescaled) load of infinite-server stations,
    whose factor ``exp(delay z)`` in the generating function adds ``delay`` to ``P_1``.
    """
    r = r[r > 0]
    power_sums = np.empty(C)  # power_sums[m - 1] = P_m = sum_i r_i^m
    power = r.copy()
    for m in range(C):
        power_sums[m] = power.sum()
        power *= r
    if delay:
        power_sums[0] += delay
    ratios = np.empty(C)
    h = np.empty(C)
    h[0] = 1.0
    for k in range(1, C + 1):
        # G(k) / G(k-1) = (1/k) (P_1 h_{k-1} + P_2 h_{k-2} + ... + P_k h_0)
        ratios[k - 1] = k / float(np.dot(power_sums[:k], h[k - 1 :: -1]))
        if k < C:
            h[:k] *= ratios[k - 1]  # now G(j) / G(k)
            h[k] = 1.0
    return ratios


def _log_G_from_ratios(ratios: np.ndarray, rho_max: float) -> np.ndarray:
    """``log G(0..C)`` for loads ``rho_max * r`` from the ratios ``G_r(k-1) / G_r(k)``."""
    k = np.arange(ratios.size + 1)
    log_G = k * np.log(rho_max)
    log_G[1:] -= np.cumsum(np.log(ratios))
    return log_G


def _queues_per_visit(
    mu: np.ndarray, p: np.ndarray, throughputs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(E_C[X] / p, E_{C-1}[X] / p)`` from ``lambda(1..C)``, also where ``p_i`` is 0 or tiny.

    ``s_k,i = E_k[X_i] / p_i`` obeys ``s_k,i = (lambda(k) / mu_i) (1 + p_i s_{k-1,i})``,
    ``s_0,i = 0``; at ``p_i = 0`` it is the limit as ``p_i -> 0``.
    """
    per_visit = np.zeros_like(mu)
    per_visit_prev = per_visit
    for throughput in throughputs:
        per_visit_prev, per_visit = per_visit, (throughput / mu) * (1.0 + p * per_visit)
    return per_visit, per_visit_prev


def _check_network(mu: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Library guard on rates and routing; returns float64 copies."""
    mu = np.array(mu, dtype=np.float64)
    p = np.array(p, dtype=np.float64)
    if mu.ndim != 1 or mu.size == 0:
        raise ValueError(f"mu must be a non-empty 1-D array, got shape {mu.shape}")
    if p.shape != mu.shape:
        raise ValueError(f"p has shape {p.shape} but mu has shape {mu.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(mu > 0)):
        raise ValueError("mu must be finite and > 0")
    if not (np.all(np.isfinite(p)) and np.all(p >= 0)):
        raise ValueError("p must be finite and >= 0")
    total = float(p.sum())
    if abs(total - 1.0) > ROUTING_SUM_TOLERANCE:
        raise ValueError(f"p must sum to 1 (within {ROUTING_SUM_TOLERANCE:g}), sums to {total!r}")
    return mu, p


def _check_concurrency(C: int, name: str) -> int:
    """Library guard on a task count: an integer (not bool) ``>= 1``."""
    if isinstance(C, bool) or not isinstance(C, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {C!r}")
    if C < 1:
        raise ValueError(f"{name} must be >= 1, got {C}")
    return int(C)


def _inverse(means: np.ndarray) -> np.ndarray:
    """``1 / means``, 0 where a mean is 0 (no station)."""
    out = np.zeros_like(means)
    np.divide(1.0, means, out=out, where=means > 0)
    return out


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a
