r"""The loss bound that fedsim optimises, and its exact gradient in the routing probabilities.

The bound
---------
Generalized AsyncSGD (Leconte, Jonckheere, Samsonov & Moulines, arXiv:2405.00017, AISTATS
2024) applies, at update ``t``, the gradient computed by the client ``I`` of a task that was
dispatched ``tau`` updates earlier, importance-weighted so that every client counts equally:

    w_{t+1} = w_t - eta / (n p_I) g_I(w_{t - tau}).

Alahyane, Comte, Jonckheere & Moulines (arXiv:2502.08206) use the bound of Leconte et al. as
a proxy of the loss and optimise it over the routing ``p`` and the concurrency ``C``. fedsim
uses its structure, with the numerical factors folded into the constants::

    B(p, C; K) = A / (eta K)                                   (optimisation)
               + eta L S sum_i 1 / (n^2 p_i)                   (variance of the weighted step)
               + eta^2 L^2 S sum_i E[tau_i](p, C) / (n^2 p_i)  (staleness drift)

a bound on ``(1/K) sum_{t<K} E ||grad f(w_t)||^2`` after ``K`` updates. The exact theorems
(with their numerical factors and step-size condition) were not available to us offline; the
abstracts of both papers and the structure above (docs/model.md) were, so the constants ``A, L, S``
below are understood up to those factors.

Assumptions and derivation (a sketch; every step is standard):

* ``f = (1/n) sum_i f_i`` with every ``f_i`` ``L``-smooth, ``A >= f(w_0) - inf f``;
* client ``i`` returns ``g_i(w)`` with ``E g_i(w) = grad f_i(w)`` and
  ``E ||g_i(w)||^2 <= S`` along the trajectory (``S`` covers the sampling variance
  ``sigma^2 = E||g_i - grad f_i||^2`` plus the heterogeneity ``zeta^2 = ||grad f_i - grad f||^2``;
  the part ``||grad f||^2`` is absorbed on the left for small ``eta``);
* the client of a task is drawn from ``p`` when it is dispatched, independently of the past, and
  the network is in its stationary regime, so the update applied at ``t`` comes from client
  ``i`` with probability ``p_i`` and carries a staleness of mean ``E[tau_i]``.

1. Descent lemma with ``d_t = g_I(w_{t-tau}) / (n p_I)``:
   ``f(w_{t+1}) <= f(w_t) - eta <grad f(w_t), d_t> + (L eta^2 / 2) ||d_t||^2``.
2. Unbiasedness: averaging over ``I ~ p`` gives ``E d_t = (1/n) sum_i grad f_i(w_{t - tau_i})``.
3. Variance: ``E ||d_t||^2 = sum_i p_i E||g_i||^2 / (n p_i)^2 <= S sum_i 1 / (n^2 p_i)``.
4. Staleness: ``grad f_i(w_t) - grad f_i(w_{t-tau_i})`` is at most ``L ||w_t - w_{t-tau_i}||``,
   the norm of ``tau_i`` steps of second moment ``eta^2 S`` whose cross terms vanish in
   expectation (martingale increments), so by Young's inequality the error of step 2 costs
   ``sum_i p_i (L^2 eta^2 S E[tau_i]) / (n p_i)^2 = eta^2 L^2 S sum_i E[tau_i] / (n^2 p_i)``
   per unit of ``eta``.
5. Sum over ``t < K``, telescope ``f(w_0) - f(w_K) <= A`` and divide by ``eta K``.

Two objectives
--------------
* **per update** (the usual one): minimise ``B(p, C; K)`` for a fixed number of updates ``K``.
  Only the staleness term depends on ``C``, and it is non-decreasing in ``C`` (queue lengths
  of a closed product-form network grow with the population), so the optimum is the smallest
  concurrency allowed: this objective buys low staleness with a slow system.
* **wall-clock** (Alahyane et al.): minimise ``B(p, C; K = lambda(p, C) T)`` for a budget ``T``
  of time, ``lambda`` the throughput. A larger ``C`` makes more updates in the budget and more
  stale ones; routing less to slow clients raises ``lambda <= min_i mu_i / p_i`` but costs
  variance through ``1 / p_i``.

The extended network
--------------------
With links and a server (:class:`fedsim.analytic.ExtendedNetwork`) the bound keeps its form:
``lambda`` counts server completions (updates) and ``E[tau_i]`` is the staleness of
:func:`fedsim.analytic.solve_extended`, ``(E_{C-1}[X_Di] + E_{C-1}[X_Ci] + E_{C-1}[X_Ui]) / p_i
+ E_{C-1}[X_s]``, so links and the server change both the speed and the staleness.

Time and energy to a target
---------------------------
Alahyane, Comte & Jonckheere (arXiv:2603.26231, 2026) optimise the wall-clock time and the
energy needed to reach an ``eps``-stationary point. Only their abstract was available to us;
fedsim derives both from the bound above. Write ``B = A / (eta K) + F(p, C)`` with
``F = eta L S V + eta^2 L^2 S Z`` the part that more updates do not reduce. The bound reaches a
target ``eps`` after

    K_eps(p, C) = A / (eta (eps - F(p, C)))       updates   (never if F >= eps),

that is after the time ``T_eps = K_eps / lambda`` and the energy ``E_eps = K_eps e``, ``e`` the
energy per update of :func:`fedsim.analytic.power_draw`, which is affine in the routing:
``e = P_idle / lambda + e_s + sum_g counts_g q_g e_g`` (:meth:`GroupNetwork.energy_weights`).

* **time**: minimise ``T_eps``. It is the dual of the wall-clock objective: the wall-clock
  optimum at budget ``T``, of bound ``B*``, reaches ``B*`` at time ``T`` and no setting does
  sooner (``B`` decreases in ``T``), so both find the same ``(p, C)`` (tested);
* **energy**: minimise ``E_eps``: fewer updates (less staleness and variance), cheaper clients,
  and, through ``P_idle / lambda``, not too slow a system;
* **time-energy**: minimise ``rho E_eps / E* + (1 - rho) T_eps / T*``, each term normalised by
  its own optimum (so the value is at least 1).

All three are ``K_eps c = (A / eta) c / (eps - F)`` for a cost per update
``c = alpha / lambda + beta_0 + sum_g counts_g q_g beta_g`` (:meth:`Objective.cost_weights`):
``1 / lambda`` for time, ``e`` for energy, the weighted sum for both. The solver maximises the
*efficiency* ``R = (eps - F) / c`` (:func:`efficiency_and_grad`), ``A / (eta R)`` where the
target is reachable and still finite and smooth where it is not (``R <= 0``), with the same
adjoint pass for its gradient.

Exact gradient
--------------
``E[tau_i]`` and ``lambda`` come from exact mean value analysis (Reiser & Lavenberg 1980), in
the per-visit form of :mod:`fedsim.analytic` (``s_k,i = E_k[X_i] / p_i``), for ``k = 1..C``::

    W_k,i = (1 + p_i s_{k-1,i}) / mu_i,   lambda_k = k / sum_i p_i W_k,i,   s_k,i = lambda_k W_k,i,

so ``E[tau_i] = s_{C-1,i}`` and ``lambda = lambda_C``, identical to the normalising-constant
route of :func:`fedsim.analytic.solve` (the tests check 1e-10). On the extended network the
same recursion runs over every FIFO station (visit ratio ``p_i``, or 1 at the server) and the
delay links add their mean times to ``sum_i p_i W_k,i`` (:class:`MvaPass`); it agrees with
:func:`fedsim.analytic.solve_extended` to 1e-10. Every term is positive, so the
recursion is stable in float64 for any ``n`` and ``C``. Its reverse-mode derivative (the
adjoint recursion, run from ``k = C`` down to 1) gives the exact gradient of ``B`` with
respect to every ``p_i`` at the cost of one more pass: ``O(C G)`` for ``G`` groups of identical
clients, which share one ``p``. No torch is needed; the tests check the gradient against
finite differences, against autograd through log-space Buzen, and ``d log lambda / d log rho_i
= E_{C-1}[X_i] - E_C[X_i]`` (differentiate ``log G``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedsim.analytic import ExtendedNetwork, PowerModel

__all__ = [
    "ENERGY_OBJECTIVES",
    "OBJECTIVES",
    "OPTIMAL_ROUTINGS",
    "TARGET_OBJECTIVES",
    "BoundConstants",
    "BoundTerms",
    "GroupNetwork",
    "Objective",
    "bound_terms",
    "bound_value_and_grad",
    "efficiency_and_grad",
    "mva_forward",
    "objective_profile",
]

#: Names of the objectives, as written on the command line and in scenarios.
OBJECTIVES = ("per-update", "wall-clock", "time", "energy", "time-energy")

#: The objectives that minimise what it costs to bring the bound down to a target.
TARGET_OBJECTIVES = ("time", "energy", "time-energy")

#: The objectives that need a power model.
ENERGY_OBJECTIVES = ("energy", "time-energy")

#: ``routing:`` values of a scenario that run the optimiser (``optimal-<objective>``).
OPTIMAL_ROUTINGS = ("optimal-per-update", "optimal-wall-clock")


@dataclass(frozen=True)
class BoundConstants:
    """The constants of the bound: ``A >= f(w_0) - f*``, smoothness ``L``, second moment ``S``
    of a client's stochastic gradient, and the step size ``eta``."""

    A: float
    L: float
    S: float
    eta: float

    def to_dict(self) -> dict[str, float]:
        return {"A": self.A, "L": self.L, "S": self.S, "eta": self.eta}


@dataclass(frozen=True)
class Objective:
    """What is minimised (module docstring).

    * ``per-update``: ``B(p, C; K)`` at fixed ``updates = K``;
    * ``wall-clock``: ``B(p, C; lambda T)`` at fixed ``budget = T``;
    * ``time``: ``T_eps(p, C)``, the time for the bound to reach ``target = eps``;
    * ``energy``: ``E_eps(p, C)``, the energy spent meanwhile;
    * ``time-energy``: ``weight E_eps / energy_scale + (1 - weight) T_eps / time_scale``, the
      scales being the optima ``E*`` and ``T*`` of the two objectives above.
    """

    name: str
    updates: float | None = None
    budget: float | None = None
    target: float | None = None
    weight: float | None = None
    time_scale: float | None = None
    energy_scale: float | None = None

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.name!r}")
        need = {"per-update": ("updates",), "wall-clock": ("budget",), "time": ("target",), "energy": ("target",),
                "time-energy": ("target", "time_scale", "energy_scale")}[self.name]
        for attribute in need:
            value = getattr(self, attribute)
            if value is None or not (np.isfinite(value) and value > 0):
                raise ValueError(f"the {self.name} objective needs a positive finite {attribute}, got {value!r}")
        if self.name == "time-energy" and not (self.weight is not None and 0 <= self.weight <= 1):
            raise ValueError(f"the time-energy objective needs a weight in [0, 1], got {self.weight!r}")

    @classmethod
    def per_update(cls, updates: float) -> Objective:
        return cls("per-update", updates=updates)

    @classmethod
    def wall_clock(cls, budget: float) -> Objective:
        return cls("wall-clock", budget=budget)

    @classmethod
    def time(cls, target: float) -> Objective:
        return cls("time", target=target)

    @classmethod
    def energy(cls, target: float) -> Objective:
        return cls("energy", target=target)

    @classmethod
    def time_energy(cls, target: float, weight: float, time_scale: float, energy_scale: float) -> Objective:
        return cls("time-energy", target=target, weight=weight, time_scale=time_scale, energy_scale=energy_scale)

    @property
    def targets(self) -> bool:
        """True for the objectives that bring the bound to a target (time, energy, time-energy)."""
        return self.name in TARGET_OBJECTIVES

    def updates_in(self, throughput: np.ndarray | float) -> np.ndarray | float:
        """``K`` of the per-update (fixed) and wall-clock (``lambda T``) objectives."""
        if self.name == "per-update":
            return np.full_like(throughput, self.updates) if isinstance(throughput, np.ndarray) else self.updates
        if self.name == "wall-clock":
            return throughput * self.budget
        raise ValueError(f"the {self.name} objective has no fixed number of updates; K depends on the target")

    def cost_weights(self, network: GroupNetwork) -> tuple[float, float, np.ndarray]:
        """``(alpha, beta_0, beta)`` of the cost per update ``c = alpha / lambda + beta_0 + sum_g
        counts_g q_g beta_g`` whose ``K_eps c`` the target objectives minimise (module docstring)."""
        zeros = np.zeros(network.groups)
        if self.name == "time":
            return 1.0, 0.0, zeros
        idle, server, task = network.energy_weights()
        if self.name == "energy":
            if not (idle > 0 or server or np.any(task)):
                raise ValueError("every power is 0 W: the energy objective has nothing to minimise")
            return idle, server, task
        w_e, w_t = self.weight / self.energy_scale, (1.0 - self.weight) / self.time_scale
        return w_e * idle + w_t, w_e * server, w_e * task


@dataclass(frozen=True)
class GroupNetwork:
    """The network as the optimiser sees it: ``counts[g]`` identical clients per group.

    A routing is given per group as ``q[g]``, the probability of *each* client of group g
    (``sum_g counts[g] q[g] = 1``). Clients of group g compute at rate ``mu[g]``; their links
    (mean times ``downlink[g]``, ``uplink[g]``, 0 for none; ``*_delay[g]`` True for an
    infinite-server link, False for a FIFO one) and the server (mean time ``server``, 0 for
    an instantaneous one) are those of :class:`fedsim.analytic.ExtendedNetwork`; ``power``
    (a :class:`fedsim.analytic.PowerModel` with one entry per group) is needed by the energy
    objectives only.
    """

    counts: np.ndarray
    mu: np.ndarray
    downlink: np.ndarray | None = None
    downlink_delay: np.ndarray | None = None
    uplink: np.ndarray | None = None
    uplink_delay: np.ndarray | None = None
    server: float = 0.0
    power: PowerModel | None = None
    stations: _Stations = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts, dtype=np.float64)
        mu = np.asarray(self.mu, dtype=np.float64)
        if counts.ndim != 1 or counts.size == 0 or counts.shape != mu.shape:
            raise ValueError("counts and mu must be non-empty 1-D arrays of the same shape")
        if np.any(counts < 1) or np.any(counts != np.round(counts)):
            raise ValueError("counts must be integers >= 1")
        # ExtendedNetwork checks the rates, links and server (one "client" per group)
        routes = ExtendedNetwork(mu, self.downlink, self.downlink_delay, self.uplink, self.uplink_delay, self.server)
        if self.power is not None and self.power.compute.shape != mu.shape:
            raise ValueError(f"power has {self.power.compute.size} groups, the network {mu.size}")
        object.__setattr__(self, "counts", counts)
        for name in ("mu", "downlink", "downlink_delay", "uplink", "uplink_delay", "server"):
            object.__setattr__(self, name, getattr(routes, name))
        object.__setattr__(self, "stations", _Stations(routes, counts))

    @property
    def n(self) -> int:
        """Number of clients."""
        return int(self.counts.sum())

    @property
    def groups(self) -> int:
        return int(self.counts.size)

    @property
    def extended(self) -> bool:
        """True when some link or the server takes time."""
        return bool(self.server > 0 or np.any(self.downlink > 0) or np.any(self.uplink > 0))

    def uniform(self) -> np.ndarray:
        """``q = 1 / n`` for every client."""
        return np.full(self.groups, 1.0 / self.n)

    def per_client(self, values: np.ndarray) -> np.ndarray:
        """Expand per-group values to one per client (clients numbered group after group)."""
        return np.repeat(values, self.counts.astype(int))

    def client_network(self) -> ExtendedNetwork:
        """The same network with one entry per client, for :func:`fedsim.analytic.solve_extended`."""
        return ExtendedNetwork(self.per_client(self.mu), self.per_client(self.downlink),
                               self.per_client(self.downlink_delay), self.per_client(self.uplink),
                               self.per_client(self.uplink_delay), self.server)

    def client_power(self) -> PowerModel | None:
        """The power model with one entry per client, for :func:`fedsim.analytic.power_draw`."""
        if self.power is None:
            return None
        w = self.power
        return PowerModel(*(self.per_client(getattr(w, k)) for k in ("compute", "uplink", "downlink", "idle")),
                          server_busy=w.server_busy, server_idle=w.server_idle)

    def energy_weights(self) -> tuple[float, float, np.ndarray]:
        """``(P_idle, e_s, e)``: energy per update is ``P_idle / lambda + e_s + sum_g counts_g q_g e_g``.

        ``P_idle = sum_g counts_g idle_g + server_idle`` is drawn whatever happens;
        ``e_g = (compute_g - idle_g) / mu_g + uplink_g E[U_g] + downlink_g E[D_g]`` is the extra
        energy of one task at a client of group g and ``e_s = (busy - idle) / mu_s`` at the server
        (the energy contract of :func:`fedsim.analytic.power_draw`, divided by ``lambda``).

        Raises:
            ValueError: the network has no power model.
        """
        w = self.power
        if w is None:
            raise ValueError("the network has no power model (give the clients' and the server's power)")
        idle = float(self.counts @ w.idle) + w.server_idle
        task = (w.compute - w.idle) / self.mu + w.uplink * self.uplink + w.downlink * self.downlink
        return idle, (w.server_busy - w.server_idle) * self.server, task


class _Stations:
    """The stations of a :class:`GroupNetwork` laid out for mean value analysis.

    FIFO stations form one flat array: the compute station of every group (indices ``0..G-1``),
    then the FIFO downlinks, the FIFO uplinks (of groups ``down``, ``up``) and the server (one
    station with visit ratio 1), each with its mean service time ``mean``. A station of group g
    is visited ``q_g`` times per update by each of ``counts_g`` clients; the server once.
    Delay links enter only through ``delay[g]``, their mean time per visit summed per route.
    """

    __slots__ = ("G", "mean", "counts", "down", "up", "server", "delay", "has_delay", "base")

    def __init__(self, routes: ExtendedNetwork, counts: np.ndarray) -> None:
        fifo = routes.fifo()
        self.G = G = counts.size
        self.down, self.up = np.flatnonzero(fifo[0]), np.flatnonzero(fifo[2])
        self.server = routes.server > 0
        groups = np.concatenate([np.arange(G), self.down, self.up])
        self.mean = np.concatenate([1.0 / routes.mu, routes.downlink[self.down], routes.uplink[self.up],
                                    [routes.server] if self.server else []])
        self.counts = np.concatenate([counts[groups], [1.0] if self.server else []])
        means = routes.means()
        self.delay = (means * ~fifo).sum(axis=0)
        self.has_delay = bool(np.any(self.delay > 0))
        self.base = self.mean.size == G and not self.has_delay

    def visits(self, q: np.ndarray) -> np.ndarray:
        """Visit ratio of every FIFO station per update, for the routing ``q``."""
        if self.base:
            return q
        return np.concatenate([q, q[self.down], q[self.up], [1.0] if self.server else []])

    def per_route(self, per_station: np.ndarray) -> np.ndarray:
        """Sum over the FIFO stations of each route (last axis), the server in every route."""
        if self.base:
            return per_station
        G, nd, nu = self.G, self.down.size, self.up.size
        out = per_station[..., :G].copy()
        out[..., self.down] += per_station[..., G:G + nd]
        out[..., self.up] += per_station[..., G + nd:G + nd + nu]
        if self.server:
            out += per_station[..., -1:]
        return out

    def spread(self, per_route: np.ndarray) -> np.ndarray:
        """Adjoint of :meth:`per_route`: a route's weight given to each of its FIFO stations."""
        if self.base:
            return per_route
        return np.concatenate([per_route, per_route[self.down], per_route[self.up],
                               [per_route.sum()] if self.server else []])

    def fold(self, per_station: np.ndarray) -> np.ndarray:
        """Gradient with respect to ``q`` from one with respect to the client stations' visits."""
        if self.base:
            return per_station
        G, nd, nu = self.G, self.down.size, self.up.size
        out = per_station[:G].copy()
        out[self.down] += per_station[G:G + nd]
        out[self.up] += per_station[G + nd:G + nd + nu]
        return out


@dataclass(frozen=True)
class BoundTerms:
    """The bound at one ``(p, C)``, with the network figures it is made of.

    ``variance_factor = sum_i 1 / (n^2 p_i)`` and ``staleness_factor = sum_i E[tau_i] / (n^2 p_i)``
    are what routing and concurrency change; the three terms are ``A / (eta K)``,
    ``eta L S variance_factor`` and ``eta^2 L^2 S staleness_factor``. ``updates`` is ``K``: fixed,
    ``lambda T``, or for the target objectives ``K_eps``, the updates that bring the bound to
    the target (``inf`` when it cannot). ``power`` (watts) and ``energy_per_update`` (joules)
    are ``nan`` without a power model; ``time_to_target = K_eps / lambda`` and
    ``energy_to_target = K_eps x energy_per_update`` are ``nan`` for objectives without a
    target. ``value`` is what the objective minimises: the bound ``total``, ``T_eps``,
    ``E_eps`` or the weighted sum.
    """

    concurrency: int
    q: np.ndarray
    throughput: float
    staleness: np.ndarray
    updates: float
    variance_factor: float
    staleness_factor: float
    optimisation: float
    variance: float
    drift: float
    power: float
    energy_per_update: float
    time_to_target: float
    energy_to_target: float
    value: float

    @property
    def total(self) -> float:
        return self.optimisation + self.variance + self.drift


class MvaPass:
    """One forward pass of exact MVA over the FIFO stations, ``k = 1..C``, kept for the adjoint.

    Per-visit form, for a FIFO station m of mean time ``b_m`` and visit ratio ``v_m`` (``q_g``,
    or 1 at the server) and ``d = sum_g counts_g q_g delay_g`` the mean time per update spent
    at delay links::

        W_k,m = b_m (1 + v_m s_{k-1,m}),  D_k = sum_m counts_m v_m W_k,m + d,
        lambda_k = k / D_k,               s_k,m = lambda_k W_k,m,

    so ``s_k,m = E_k[X_m] / v_m`` and ``W`` the mean time per visit at population k; a delay
    link's ``E_k[X] / q_g`` is ``lambda_k delay``. Arrays: ``s[k]``, ``W[k]`` (rows ``k = 0..C``),
    ``lam[k]`` (``lam[0] = 0``), ``D[k]``; ``a = b v`` and ``w = counts v``.
    """

    __slots__ = ("network", "q", "C", "s", "W", "lam", "D", "a", "w", "delay")

    def __init__(self, network: GroupNetwork, q: np.ndarray, C: int) -> None:
        self.network, self.q, self.C = network, q, C
        st = network.stations
        visits = st.visits(q)
        mean = st.mean
        M = mean.size
        self.s = s = np.zeros((C + 1, M))
        self.W = W = np.empty((C + 1, M))
        self.lam = lam = np.empty(C + 1)
        self.D = D = np.empty(C + 1)
        lam[0], D[0] = 0.0, np.nan
        self.a = a = mean * visits
        self.w = w = st.counts * visits
        self.delay = delay = float(network.counts * q @ st.delay) if st.has_delay else 0.0
        for k in range(1, C + 1):
            Wk = W[k]
            np.multiply(a, s[k - 1], out=Wk)
            Wk += mean
            Dk = float(w @ Wk) + delay
            D[k] = Dk
            lam[k] = k / Dk
            np.multiply(Wk, lam[k], out=s[k])

    def staleness(self, k: int | None = None) -> np.ndarray:
        """``E[tau_g]`` at concurrency ``k`` (shape ``(G,)``), or at every ``k = 1..C`` (``(C, G)``).

        ``E[tau_g](k) = sum over the stations of route g of E_{k-1}[X] / q_g + E_{k-1}[X_s]``.
        """
        rows = slice(0, self.C) if k is None else k - 1
        st = self.network.stations
        tau = st.per_route(self.s[rows])
        if st.has_delay:
            tau = tau + np.multiply.outer(self.lam[rows], st.delay)
        return tau

    def gradient(self, C: int, d_staleness: np.ndarray, d_throughput: float) -> np.ndarray:
        """``d/dq`` of ``<d_staleness, E[tau](C)> + d_throughput * lam[C]`` (adjoint recursion).

        Reverse of the forward recursion (class docstring), ``C`` at most its population; the
        staleness at ``C`` reads ``s[C-1]`` (spread over the stations of each route) and, through
        the delay links, ``lam[C-1]``.
        """
        st = self.network.stations
        s, W, lam, D, a, w, mean = self.s, self.W, self.lam, self.D, self.a, self.w, st.mean
        d_station = st.spread(d_staleness)
        d_lam_prev = float(d_staleness @ st.delay) if st.has_delay else 0.0
        v_bar = np.zeros_like(mean)
        s_bar = np.zeros_like(mean)  # adjoint of s[k]; s[C] is not an output
        D_bar_sum = 0.0
        for k in range(C, 0, -1):
            lam_bar = d_throughput if k == C else 0.0
            if k == C - 1:
                s_bar = s_bar + d_station
                lam_bar = d_lam_prev
            lam_bar += float(s_bar @ W[k])
            D_bar = -lam_bar * lam[k] / D[k]
            W_bar = s_bar * lam[k] + D_bar * w
            v_bar += D_bar * st.counts * W[k] + W_bar * s[k - 1] * mean
            D_bar_sum += D_bar
            s_bar = W_bar * a
        q_bar = st.fold(v_bar)
        if st.has_delay:
            q_bar = q_bar + D_bar_sum * self.network.counts * st.delay
        return q_bar


def mva_forward(network: GroupNetwork, q: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lambda(k) for k = 1..C, E[tau] per group at concurrency k for k = 1..C)``.

    Row ``k - 1`` of the staleness array is the mean staleness of a client of group g when
    ``k`` tasks circulate (``E_{k-1}[X_i] / q_g`` in the base network).
    """
    run = MvaPass(network, _check_q(network, q), _check_C(C))
    return run.lam[1:].copy(), np.array(run.staleness())


def objective_profile(network: GroupNetwork, q: np.ndarray, constants: BoundConstants, objective: Objective,
                      C_max: int) -> np.ndarray:
    """The objective's value for every ``C = 1..C_max`` at one routing, from a single MVA pass:
    the bound, or for the target objectives ``K_eps c`` (``inf`` where the target is out of reach)."""
    q = _check_q(network, q)
    run = MvaPass(network, q, _check_C(C_max))
    lam = run.lam[1:]
    variance_factor, staleness_factor = _factors(network, q, run.staleness())
    if not objective.targets:
        return _total(constants, objective.updates_in(lam), variance_factor, staleness_factor)
    slack = objective.target - _floor(constants, variance_factor, staleness_factor)
    cost = _cost(network, q, lam, objective)
    with np.errstate(divide="ignore"):
        return np.where(slack > 0, constants.A * cost / (constants.eta * np.maximum(slack, 0.0)), np.inf)


def bound_terms(network: GroupNetwork, q: np.ndarray, C: int, constants: BoundConstants,
                objective: Objective) -> BoundTerms:
    """The bound and its parts at routing ``q`` (per group, per client) and concurrency ``C``."""
    q = _check_q(network, q)
    C = _check_C(C)
    run = MvaPass(network, q, C)
    staleness = run.staleness(C)
    throughput = float(run.lam[C])
    variance_factor, staleness_factor = (float(x) for x in _factors(network, q, staleness))
    c = constants
    variance, drift = c.eta * c.L * c.S * variance_factor, c.eta**2 * c.L**2 * c.S * staleness_factor
    energy = _energy_per_update(network, q, throughput) if network.power is not None else np.nan
    time_to_target = energy_to_target = np.nan
    if objective.targets:
        slack = objective.target - variance - drift
        K = c.A / (c.eta * slack) if slack > 0 else np.inf
        time_to_target, energy_to_target = K / throughput, K * energy
        value = K * float(_cost(network, q, throughput, objective)) if slack > 0 else np.inf
    else:
        K = float(objective.updates_in(throughput))
        value = float(_total(c, K, variance_factor, staleness_factor))
    return BoundTerms(
        concurrency=C, q=q, throughput=throughput, staleness=staleness, updates=K,
        variance_factor=variance_factor, staleness_factor=staleness_factor,
        optimisation=c.A / (c.eta * K), variance=variance, drift=drift, power=energy * throughput,
        energy_per_update=energy, time_to_target=time_to_target, energy_to_target=energy_to_target, value=value,
    )


def bound_value_and_grad(network: GroupNetwork, q: np.ndarray, C: int, constants: BoundConstants,
                         objective: Objective) -> tuple[float, np.ndarray]:
    """``B(q, C)`` and its exact gradient ``dB/dq`` (per-group ``q``, every client of a group moved),
    for the per-update and wall-clock objectives.

    With ``V = sum_g counts_g / (n^2 q_g)`` and ``Z = sum_g counts_g E[tau_g] / (n^2 q_g)``:
    ``dV/dq_g = -counts_g / (n^2 q_g^2)``; ``Z`` depends on ``q`` directly and through the
    staleness (adjoint pass); with ``K = lambda_C T`` the optimisation term adds
    ``-A / (eta T lambda_C^2) dlambda_C/dq``.
    """
    q = _check_q(network, q)
    C = _check_C(C)
    run = MvaPass(network, q, C)
    c = constants
    staleness = run.staleness(C)
    throughput = float(run.lam[C])
    variance_factor, staleness_factor = _factors(network, q, staleness)
    K = objective.updates_in(throughput)
    value = float(_total(c, K, variance_factor, staleness_factor))
    grad, d_staleness = _floor_gradient(network, q, c, staleness)
    d_throughput = -c.A / (c.eta * objective.budget * throughput**2) if objective.name == "wall-clock" else 0.0
    if C > 1 or d_throughput:
        grad = grad + run.gradient(C, d_staleness, d_throughput)
    return value, grad


def efficiency_and_grad(network: GroupNetwork, q: np.ndarray, C: int, constants: BoundConstants,
                        objective: Objective) -> tuple[float, np.ndarray]:
    """``R = (eps - F) / c`` and its exact gradient ``dR/dq``, for the target objectives.

    ``F`` is the bound without its optimisation term and ``c`` the cost per update
    (:meth:`Objective.cost_weights`); where ``R > 0`` the objective is ``K_eps c = A / (eta R)``,
    so maximising ``R`` minimises it, and ``R`` stays finite and smooth where the target is out
    of reach (``R <= 0``), which lets a solver walk back from there.
    """
    R, grad, _ = efficiency_grad_and_scale(network, q, C, constants, objective)
    return R, grad


def efficiency_grad_and_scale(network: GroupNetwork, q: np.ndarray, C: int, constants: BoundConstants,
                              objective: Objective) -> tuple[float, np.ndarray, float]:
    """:func:`efficiency_and_grad` and the scale ``eps / c >= R`` of ``R`` at ``q``."""
    q = _check_q(network, q)
    C = _check_C(C)
    run = MvaPass(network, q, C)
    c = constants
    staleness = run.staleness(C)
    throughput = float(run.lam[C])
    variance_factor, staleness_factor = _factors(network, q, staleness)
    slack = objective.target - float(_floor(c, variance_factor, staleness_factor))
    alpha, _, beta = objective.cost_weights(network)
    cost = float(_cost(network, q, throughput, objective))
    floor_grad, d_staleness = _floor_gradient(network, q, c, staleness)
    # dR = -dF / cost - slack dcost / cost^2,  dcost = -alpha dlambda / lambda^2 + counts beta
    grad = -floor_grad / cost - slack * network.counts * beta / cost**2
    grad = grad + run.gradient(C, -d_staleness / cost, slack * alpha / (cost * throughput) ** 2)
    return slack / cost, grad, objective.target / cost


def _floor_gradient(network: GroupNetwork, q: np.ndarray, c: BoundConstants,
                    staleness: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of ``F = eta L S V + eta^2 L^2 S Z`` at fixed staleness, and ``dF/dE[tau]``."""
    n2 = float(network.n) ** 2
    counts = network.counts
    w_var = c.eta * c.L * c.S
    w_drift = c.eta**2 * c.L**2 * c.S
    return -(w_var * counts + w_drift * counts * staleness) / (n2 * q**2), w_drift * counts / (n2 * q)


def _factors(network: GroupNetwork, q: np.ndarray, staleness: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sum_i 1 / (n^2 p_i)`` and ``sum_i E[tau_i] / (n^2 p_i)`` (staleness: (..., G))."""
    n2 = float(network.n) ** 2
    weights = network.counts / (n2 * q)
    return weights.sum(), staleness @ weights


def _floor(c: BoundConstants, variance_factor: np.ndarray | float, staleness_factor: np.ndarray | float):
    """``F``: the variance and drift terms, the part of the bound that more updates do not reduce."""
    return c.eta * c.L * c.S * variance_factor + c.eta**2 * c.L**2 * c.S * staleness_factor


def _total(c: BoundConstants, K: np.ndarray | float, variance_factor: np.ndarray | float,
           staleness_factor: np.ndarray | float) -> np.ndarray | float:
    return c.A / (c.eta * K) + c.eta * c.L * c.S * variance_factor + c.eta**2 * c.L**2 * c.S * staleness_factor


def _cost(network: GroupNetwork, q: np.ndarray, throughput: np.ndarray | float, objective: Objective):
    """Cost per update of a target objective: ``alpha / lambda + beta_0 + sum_g counts_g q_g beta_g``."""
    alpha, beta_0, beta = objective.cost_weights(network)
    return alpha / throughput + beta_0 + float(network.counts * q @ beta)


def _energy_per_update(network: GroupNetwork, q: np.ndarray, throughput: float) -> float:
    """Joules per update, ``P_idle / lambda + e_s + sum_g counts_g q_g e_g`` (:meth:`GroupNetwork.energy_weights`)."""
    idle, server, task = network.energy_weights()
    return idle / throughput + server + float(network.counts * q @ task)


def _check_q(network: GroupNetwork, q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    if q.shape != network.counts.shape:
        raise ValueError(f"q has shape {q.shape}, the network has {network.groups} groups")
    if not (np.all(np.isfinite(q)) and np.all(q > 0)):
        raise ValueError("q must be finite and > 0 (the bound is infinite where a client gets no task)")
    total = float(network.counts @ q)
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"sum_g counts_g q_g must be 1, got {total!r}")
    return q


def _check_C(C: int) -> int:
    if isinstance(C, bool) or not isinstance(C, (int, np.integer)) or C < 1:
        raise ValueError(f"C must be an integer >= 1, got {C!r}")
    return int(C)
