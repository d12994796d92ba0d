"""The optimiser on the extended network (links, server, power) and the target objectives.

References used here:
* :func:`fedsim.analytic.solve_extended` and :func:`fedsim.analytic.power_draw` on the same
  network expanded to one entry per client (normalising constants, the energy contract);
* central finite differences for the exact gradients of every objective;
* a brute-force grid over the routing simplex and every ``C``, with its own vectorised MVA
  written station by station and the energy computed from the power contract directly;
* duality: the wall-clock optimum at budget T reaches its bound B* in time T, so the time
  objective with target B* must find the same point and time T.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedsim.analytic import PowerModel, power_draw, solve_extended
from fedsim.cli import main
from fedsim.optimize import (
    BoundConstants,
    GroupNetwork,
    Objective,
    bound_terms,
    bound_value_and_grad,
    efficiency_and_grad,
    max_throughput_routing,
    mva_forward,
    optimise,
)
from fedsim.optimize.config import group_network
from fedsim.scenario import load_scenario, parse_scenario

CONSTANTS = BoundConstants(A=2.0, L=1.0, S=1.0, eta=0.05)


def extended_network(rng: np.random.Generator, groups: int, max_count: int = 5) -> tuple[GroupNetwork, np.ndarray]:
    """Random links (absent, FIFO or delay), a server, power; and a random routing."""
    links = {}
    for link in ("downlink", "uplink"):
        links[link] = rng.uniform(0.05, 1.5, groups) * (rng.random(groups) < 0.8)
        links[f"{link}_delay"] = rng.random(groups) < 0.5
    power = PowerModel(*(rng.uniform(0.1, 5.0, groups) for _ in range(4)), server_busy=80.0, server_idle=20.0)
    network = GroupNetwork(counts=rng.integers(1, max_count + 1, groups), mu=rng.uniform(0.05, 5.0, groups),
                           server=float(rng.uniform(0.01, 0.3)), power=power, **links)
    q = rng.uniform(0.2, 3.0, groups)
    return network, q / (network.counts @ q)


def simplex_direction(rng: np.random.Generator, network: GroupNetwork) -> np.ndarray:
    d = rng.normal(size=network.groups)
    return d - network.counts * (network.counts @ d) / (network.counts @ network.counts)


def target_objectives(network: GroupNetwork, target: float) -> list[Objective]:
    return [Objective.time(target), Objective.energy(target),
            Objective.time_energy(target, 0.3, time_scale=50.0, energy_scale=400.0)]


# --------------------------------------------------------------------------- the network figures


@pytest.mark.parametrize(("groups", "C"), [(3, 1), (4, 6), (5, 80)])
def test_mva_and_energy_match_the_analytic_solution(groups, C):
    network, q = extended_network(np.random.default_rng(groups * C), groups)
    throughput, staleness = mva_forward(network, q, C)
    p = network.per_client(q)
    for k in (1, C // 2 + 1, C):
        sol = solve_extended(network.client_network(), p, k)
        assert throughput[k - 1] == pytest.approx(sol.throughput, rel=1e-10)
        np.testing.assert_allclose(network.per_client(staleness[k - 1]), sol.staleness, rtol=1e-10, atol=1e-13)
    terms = bound_terms(network, q, C, CONSTANTS, Objective.wall_clock(100.0))
    draw = power_draw(solve_extended(network.client_network(), p, C), network.client_power())
    assert terms.power == pytest.approx(draw.total, rel=1e-10)
    assert terms.energy_per_update == pytest.approx(draw.per_update, rel=1e-10)


def test_without_links_and_server_the_group_network_is_the_base_one():
    rng = np.random.default_rng(5)
    counts, mu = rng.integers(1, 6, 4), rng.uniform(0.1, 4.0, 4)
    q = rng.uniform(0.5, 2.0, 4)
    q /= counts @ q
    base = GroupNetwork(counts=counts, mu=mu)
    zeros = GroupNetwork(counts=counts, mu=mu, downlink=np.zeros(4), uplink=np.zeros(4), downlink_delay=[False] * 4)
    assert not zeros.extended
    for objective in (Objective.per_update(500.0), Objective.wall_clock(80.0)):
        v0, g0 = bound_value_and_grad(base, q, 12, CONSTANTS, objective)
        v1, g1 = bound_value_and_grad(zeros, q, 12, CONSTANTS, objective)
        assert v0 == v1 and np.array_equal(g0, g1)


@pytest.mark.parametrize("C", [1, 2, 9, 40])
def test_gradients_match_finite_differences(C):
    rng = np.random.default_rng(C)
    h = 1e-6
    for _ in range(3):
        network, q = extended_network(rng, 5)
        d = simplex_direction(rng, network)
        for objective in (Objective.per_update(1_000.0), Objective.wall_clock(300.0)):
            _, grad = bound_value_and_grad(network, q, C, CONSTANTS, objective)
            fd = (bound_value_and_grad(network, q + h * d, C, CONSTANTS, objective)[0]
                  - bound_value_and_grad(network, q - h * d, C, CONSTANTS, objective)[0]) / (2 * h)
            assert grad @ d == pytest.approx(fd, rel=1e-6, abs=1e-9)
        floor = bound_terms(network, q, C, CONSTANTS, Objective.per_update(1.0))
        for target in (1.5 * (floor.variance + floor.drift), 0.5 * (floor.variance + floor.drift)):
            for objective in target_objectives(network, target):
                R, grad = efficiency_and_grad(network, q, C, CONSTANTS, objective)
                fd = (efficiency_and_grad(network, q + h * d, C, CONSTANTS, objective)[0]
                      - efficiency_and_grad(network, q - h * d, C, CONSTANTS, objective)[0]) / (2 * h)
                assert grad @ d == pytest.approx(fd, rel=1e-6, abs=1e-9 * abs(R))
                value = bound_terms(network, q, C, CONSTANTS, objective).value
                # reachable: the objective is A / (eta R); out of reach: R <= 0 and the value is inf
                assert value == pytest.approx(CONSTANTS.A / (CONSTANTS.eta * R), rel=1e-12) if R > 0 else value == np.inf


def test_target_terms_are_consistent():
    network, q = extended_network(np.random.default_rng(2), 3)
    floor = bound_terms(network, q, 7, CONSTANTS, Objective.per_update(1.0))
    target = 2.0 * (floor.variance + floor.drift)
    terms = bound_terms(network, q, 7, CONSTANTS, Objective.time(target))
    assert terms.total == pytest.approx(target, rel=1e-12)  # K_eps updates bring the bound to eps
    assert terms.time_to_target == pytest.approx(terms.updates / terms.throughput, rel=1e-12)
    assert terms.energy_to_target == pytest.approx(terms.time_to_target * terms.power, rel=1e-12)
    assert bound_terms(network, q, 7, CONSTANTS, Objective.energy(target)).value == terms.energy_to_target
    joint = Objective.time_energy(target, 0.25, time_scale=10.0, energy_scale=300.0)
    assert bound_terms(network, q, 7, CONSTANTS, joint).value == pytest.approx(
        0.25 * terms.energy_to_target / 300.0 + 0.75 * terms.time_to_target / 10.0, rel=1e-12)


# --------------------------------------------------------------------------- brute force


def batch_figures(network: GroupNetwork, Q: np.ndarray, C_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Throughput (R, C_max) and staleness (R, C_max, G) for many routings (rows of Q):
    MVA over the explicit stations of every route (mean tasks, not per visit)."""
    counts = network.counts
    means = np.vstack([network.downlink, 1.0 / network.mu, network.uplink])
    fifo = np.vstack([(network.downlink > 0) & ~network.downlink_delay, np.ones(network.groups, bool),
                      (network.uplink > 0) & ~network.uplink_delay])
    X = np.zeros((Q.shape[0], 3, network.groups))  # mean tasks at each route station of one client
    X_server = np.zeros(Q.shape[0])
    lam = np.empty((Q.shape[0], C_max))
    tau = np.empty((Q.shape[0], C_max, network.groups))
    for k in range(1, C_max + 1):
        tau[:, k - 1] = X.sum(axis=1) / Q + X_server[:, None]
        W = means * (1.0 + fifo * X)
        W_server = network.server * (1.0 + X_server)
        lam[:, k - 1] = k / ((counts * Q * W.sum(axis=1)).sum(axis=1) + W_server)
        X = lam[:, k - 1, None, None] * Q[:, None, :] * W
        X_server = lam[:, k - 1] * W_server
    return lam, tau


def batch_values(network: GroupNetwork, Q: np.ndarray, objective: Objective, C_max: int) -> np.ndarray:
    """The objective for routings Q (rows) and C = 1..C_max, from :func:`batch_figures` and the
    power contract (compute while busy, idle otherwise, link power per transfer, server)."""
    c = CONSTANTS
    lam, tau = batch_figures(network, Q, C_max)
    n2 = float(network.n) ** 2
    weights = network.counts / (n2 * Q)
    floor = c.eta * c.L * c.S * weights.sum(axis=1)[:, None] + c.eta**2 * c.L**2 * c.S * (tau * weights[:, None]).sum(-1)
    if objective.name == "wall-clock":
        return c.A / (c.eta * lam * objective.budget) + floor
    w = network.power
    rho = lam[..., None] * Q[:, None, :] / network.mu
    client = (w.compute * rho + w.idle * (1 - rho)
              + lam[..., None] * Q[:, None, :] * (w.uplink * network.uplink + w.downlink * network.downlink))
    busy = lam * network.server
    power = (client * network.counts).sum(-1) + w.server_busy * busy + w.server_idle * (1 - busy)
    slack = objective.target - floor
    with np.errstate(divide="ignore", invalid="ignore"):
        K = np.where(slack > 0, c.A / (c.eta * slack), np.inf)
    T, E = K / lam, K * power / lam
    if objective.name == "time":
        return T
    if objective.name == "energy":
        return E
    return objective.weight * E / objective.energy_scale + (1 - objective.weight) * T / objective.time_scale


def brute_force(network: GroupNetwork, objective: Objective, C_max: int, maximise_throughput: bool = False):
    """Best (group masses, C, value) on a grid of the simplex (2 or 3 groups) times 1..C_max,
    zoomed twice around the best point; also returns the final grid step. With
    ``maximise_throughput`` the best routing for lambda at C_max instead."""
    groups = network.groups
    points, zoom = (400, 40) if groups == 2 else (200, 20)
    centre, width, step = np.full(groups - 1, 0.5), 0.5, 1.0 / points
    for _ in range(3):
        axes = [np.arange(c - width, c + width + step / 2, step) for c in centre]
        free = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)
        masses = np.column_stack([free, 1 - free.sum(axis=1)])
        masses = masses[np.all(masses > 1e-9, axis=1)]
        if maximise_throughput:
            values = -batch_figures(network, masses / network.counts, C_max)[0][:, -1:]
        else:
            values = batch_values(network, masses / network.counts, objective, C_max)
        row, col = np.unravel_index(np.argmin(values), values.shape)
        centre, width, step = masses[row, :-1], 3 * step, step / zoom
    return masses[row], (C_max if maximise_throughput else int(col) + 1), float(values[row, col]), zoom * step


TWO = GroupNetwork(counts=np.array([3, 1]), mu=np.array([1.0, 0.08]), downlink=np.array([0.2, 1.5]),
                   downlink_delay=np.array([False, True]), uplink=np.array([0.6, 0.0]), uplink_delay=np.array([False, True]),
                   server=0.15, power=PowerModel(compute=np.array([2.0, 0.5]), uplink=np.array([1.0, 1.0]),
                                                 downlink=np.array([0.5, 0.3]), idle=np.array([0.3, 0.05]),
                                                 server_busy=20.0, server_idle=4.0))
THREE = GroupNetwork(counts=np.array([2, 2, 1]), mu=np.array([4.0, 1.0, 0.1]), uplink=np.array([0.3, 0.5, 2.0]),
                     uplink_delay=np.array([True, False, True]), server=0.05,
                     power=PowerModel(compute=np.array([5.0, 2.0, 0.4]), uplink=np.full(3, 1.0),
                                      downlink=np.zeros(3), idle=np.array([1.0, 0.2, 0.05])))


def _target(network: GroupNetwork, budget: float) -> float:
    """AsyncSGD's bound at the budget (uniform routing, C = n), computed here by brute force's MVA."""
    q = network.uniform()[None, :]
    return float(batch_values(network, q, Objective.wall_clock(budget), network.n)[0, -1])


@pytest.mark.parametrize(("network", "C_max"), [(TWO, 14), (THREE, 10)], ids=["two-groups", "three-groups"])
def test_optima_match_brute_force_grid(network, C_max):
    target = _target(network, 60.0)
    found = {}
    objectives = [Objective.time(target), Objective.energy(target)]
    if network.groups == 2:
        objectives.insert(0, Objective.wall_clock(60.0))
    for objective in objectives:
        masses, C, value, step = brute_force(network, objective, C_max)
        opt = optimise(network, CONSTANTS, objective, c_max=C_max)
        found[objective.name] = value
        assert opt.concurrency == C, objective.name
        assert opt.terms.value <= value * (1 + 1e-12)
        assert opt.terms.value >= value * (1 - 1e-7)
        np.testing.assert_allclose(opt.q * network.counts, masses, atol=2 * step)
    joint = Objective.time_energy(target, 0.5, time_scale=found["time"], energy_scale=found["energy"])
    masses, C, value, step = brute_force(network, joint, C_max)
    opt = optimise(network, CONSTANTS, joint, c_max=C_max)
    assert opt.concurrency == C and opt.terms.value == pytest.approx(value, rel=1e-7)
    assert 1.0 <= opt.terms.value <= 1.0 + 1.0  # each term is at least its own optimum, normalised to 1
    np.testing.assert_allclose(opt.q * network.counts, masses, atol=2 * step)
    if network.groups == 2:  # max-throughput routing at C = n: here it starves the slow client
        masses, _, value, step = brute_force(network, joint, network.n, maximise_throughput=True)
        best = max_throughput_routing(network, network.n)
        with np.errstate(divide="ignore", invalid="ignore"):
            edge = batch_figures(network, np.array([[1.0 / network.counts[0], 0.0]]), network.n)[0][0, -1]
        assert -value <= best.value <= edge * (1 + 1e-12) and best.value == pytest.approx(edge, rel=1e-9)
        np.testing.assert_allclose(best.q * network.counts, masses, atol=2 * step)


def test_time_objective_is_the_dual_of_the_wall_clock_objective():
    """min_p,C B(p, C; lambda T) = B* is reached at time T, and nothing reaches B* sooner."""
    for budget in (30.0, 300.0):
        wall = optimise(TWO, CONSTANTS, Objective.wall_clock(budget), c_max=20)
        time = optimise(TWO, CONSTANTS, Objective.time(wall.terms.total), c_max=20)
        assert time.concurrency == wall.concurrency
        assert time.terms.value == pytest.approx(budget, rel=1e-9)
        np.testing.assert_allclose(time.q, wall.q, rtol=1e-5)


def test_time_energy_weight_interpolates_between_the_two_optima():
    target = _target(TWO, 60.0)
    time = optimise(TWO, CONSTANTS, Objective.time(target), c_max=20)
    energy = optimise(TWO, CONSTANTS, Objective.energy(target), c_max=20)
    assert energy.terms.energy_to_target < time.terms.energy_to_target
    assert time.terms.time_to_target < energy.terms.time_to_target
    scales = {"time_scale": time.terms.value, "energy_scale": energy.terms.value}
    for weight, alone in ((0.0, time), (1.0, energy)):
        joint = optimise(TWO, CONSTANTS, Objective.time_energy(target, weight, **scales), c_max=20)
        assert joint.concurrency == alone.concurrency
        assert joint.terms.value == pytest.approx(1.0, rel=1e-9)
        np.testing.assert_allclose(joint.q, alone.q, rtol=1e-5)


def test_unreachable_target_is_refused():
    floor = bound_terms(TWO, TWO.uniform(), 1, CONSTANTS, Objective.per_update(1.0))
    with pytest.raises(ValueError, match="no routing found reaches the target"):
        optimise(TWO, CONSTANTS, Objective.time(0.01 * floor.variance), c_max=10)
    with pytest.raises(ValueError, match="needs a positive finite target"):
        Objective.time(0.0)
    with pytest.raises(ValueError, match="weight in"):
        Objective.time_energy(1.0, 1.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="no power model"):
        bound_terms(GroupNetwork(counts=np.array([1]), mu=np.array([1.0])), np.array([1.0]), 1, CONSTANTS,
                    Objective.energy(1.0))


# --------------------------------------------------------------------------- scenarios and CLI

EXT_DOC = {
    "name": "edge", "seed": 3, "routing": "uniform", "concurrency": 6,
    "horizon": {"time": 200.0},
    "server": {"service": {"dist": "exponential", "rate": 8.0}},
    "server_power": {"busy": 30.0, "idle": 10.0},
    "optimization": {"A": 2.0, "L": 1.0, "S": 1.0, "eta": 0.05, "concurrency": {"max": 20}},
    "clients": [
        {"group": "fast", "count": 8, "service": {"dist": "exponential", "rate": 1.0},
         "uplink": {"dist": "exponential", "mean": 0.3, "station": "fifo"},
         "power": {"compute": 4.0, "uplink": 1.0, "idle": 0.5}},
        {"group": "slow", "count": 2, "service": {"dist": "exponential", "rate": 0.05},
         "downlink": {"dist": "lognormal", "mean": 2.0, "cv": 0.7},
         "power": {"compute": 1.0, "downlink": 0.4, "idle": 0.1}},
    ],
}


def test_group_network_reads_links_server_and_power():
    network = group_network(*(lambda s: (s.groups, s.server, s.server_power))(parse_scenario(EXT_DOC)))
    np.testing.assert_array_equal(network.counts, [8, 2])
    np.testing.assert_allclose(network.mu, [1.0, 0.05])
    np.testing.assert_allclose(network.uplink, [0.3, 0.0])
    np.testing.assert_allclose(network.downlink, [0.0, 2.0])
    assert not network.uplink_delay[0] and network.downlink_delay[1]  # fifo as given, delay the default
    assert network.server == pytest.approx(1 / 8.0)
    np.testing.assert_allclose(network.power.compute, [4.0, 1.0])
    np.testing.assert_allclose(network.power.downlink, [0.0, 0.4])
    assert (network.power.server_busy, network.power.server_idle) == (30.0, 10.0)


def test_optimal_routing_on_an_extended_scenario():
    doc = {k: v for k, v in EXT_DOC.items() if k != "concurrency"} | {"routing": "optimal-wall-clock"}
    scenario = parse_scenario(doc)
    opt = optimise(group_network(scenario.groups, scenario.server), CONSTANTS, Objective.wall_clock(200.0), c_max=20)
    assert scenario.concurrency == opt.concurrency
    np.testing.assert_allclose(scenario.p[[0, 8]], opt.q, rtol=1e-12)
    # ... and the server counts: without it the optimum is another one
    base = optimise(group_network(scenario.groups), CONSTANTS, Objective.wall_clock(200.0), c_max=20)
    assert (base.concurrency, base.terms.total) != (opt.concurrency, opt.terms.total)


def test_cli_optimize_energy_objective(write_yaml, tmp_path, capsys):
    out = tmp_path / "opt"
    assert main(["optimize", str(write_yaml(EXT_DOC)), "--objective", "time-energy", "--weight", "0.7",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    table = pd.read_csv(out / "comparison.csv").set_index("setting")
    assert list(table.index) == ["AsyncSGD (uniform, C = n)", "max-throughput routing (C = n)",
                                 "scenario (uniform, C = 6)", "per-update optimum", "wall-clock optimum",
                                 "time optimum", "energy optimum", "time-energy optimum"]
    assert table["time_to_target"]["AsyncSGD (uniform, C = n)"] == pytest.approx(200.0, rel=1e-12)
    assert table["time_to_target"].idxmin() == "time optimum"
    assert table["energy_to_target"].idxmin() == "energy optimum"
    assert table["time_energy"].idxmin() == "time-energy optimum"
    np.testing.assert_allclose(table["energy_to_target"], table["time_to_target"] * table["power"], rtol=1e-6)
    written = load_scenario(out / "scenario-time-energy.yaml")
    assert written.server is not None and written.groups[0].uplink.kind == "fifo"
    assert written.concurrency == table["concurrency"]["time-energy optimum"]
    assert written.optimization.weight == 0.7 and written.optimization.target == pytest.approx(
        json.loads((out / "optimization.json").read_text())["target"], rel=1e-12)
    assert (out / "objective_vs_C.png").stat().st_size > 20_000


def test_cli_energy_objective_without_power_is_a_one_line_error(write_yaml, tmp_path, capsys):
    doc = EXT_DOC | {"clients": [{k: v for k, v in g.items() if k != "power"} for g in EXT_DOC["clients"]]}
    doc = {k: v for k, v in doc.items() if k != "server_power"}
    assert main(["optimize", str(write_yaml(doc)), "--objective", "energy", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: clients: the energy objective needs power")
    zero = EXT_DOC | {"clients": [g | {"power": {"idle": 0.0}} for g in EXT_DOC["clients"]],
                      "server_power": {"busy": 0.0}}
    assert main(["optimize", str(write_yaml(zero)), "--objective", "time-energy", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: clients: the time-energy objective needs power")
    assert main(["optimize", str(write_yaml(EXT_DOC)), "--objective", "time", "--target", "1e-9",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: optimization.target: no routing found reaches")
