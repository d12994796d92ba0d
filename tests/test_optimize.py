"""The optimiser: the bound's network figures, its exact gradient, and the optima it finds.

References used here:
* :func:`fedsim.analytic.solve` (normalising constants by Newton's identity) for throughput and
  staleness;
* central finite differences, and torch autograd through Buzen's recursion in log space (an
  independent route to the same function), for the gradient; the identity
  ``d log lambda / d log rho_i = E_{C-1}[X_i] - E_C[X_i]`` (differentiate ``log G``);
* a brute-force grid over the routing simplex and every ``C`` for the optima (vectorised MVA);
* symmetry (identical clients must get uniform routing).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from fedsim.analytic import solve
from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.optimize import (
    BoundConstants,
    GroupNetwork,
    Objective,
    objective_profile,
    bound_terms,
    bound_value_and_grad,
    mva_forward,
    optimise,
    optimise_routing,
)
from fedsim.optimize.objective import MvaPass
from fedsim.scenario import load_scenario, parse_scenario

CONSTANTS = BoundConstants(A=2.0, L=1.0, S=1.0, eta=0.05)
OBJECTIVES = [Objective.per_update(1_000.0), Objective.wall_clock(300.0)]


def random_network(rng: np.random.Generator, groups: int, max_count: int = 5) -> tuple[GroupNetwork, np.ndarray]:
    network = GroupNetwork(counts=rng.integers(1, max_count + 1, groups), mu=rng.uniform(0.05, 5.0, groups))
    q = rng.uniform(0.2, 3.0, groups)
    return network, q / (network.counts @ q)


def simplex_direction(rng: np.random.Generator, network: GroupNetwork) -> np.ndarray:
    """A random direction d with sum_g counts_g d_g = 0 (stays on the routing simplex)."""
    d = rng.normal(size=network.groups)
    return d - network.counts * (network.counts @ d) / (network.counts @ network.counts)


# --------------------------------------------------------------------------- the network figures


@pytest.mark.parametrize(("groups", "max_count", "C"), [(4, 3, 1), (4, 3, 7), (6, 40, 150), (3, 3000, 1000)])
def test_mva_matches_normalising_constants(groups, max_count, C):
    rng = np.random.default_rng(groups * C)
    network, q = random_network(rng, groups, max_count)
    throughput, staleness = mva_forward(network, q, C)
    first = np.cumsum(network.counts.astype(int)) - network.counts.astype(int)
    for k in sorted({1, min(2, C), C // 2 + 1, C}):
        ref = solve(network.per_client(network.mu), network.per_client(q), k)
        assert throughput[k - 1] == pytest.approx(ref.throughput, rel=1e-10)
        expected = ref.staleness[first] if k > 1 else np.zeros(groups)
        np.testing.assert_allclose(staleness[k - 1], expected, rtol=1e-10, atol=1e-300)


def test_staleness_factor_never_decreases_with_C():
    """Why the per-update optimum is the smallest C: E_C[X_i] is non-decreasing in C."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        network, q = random_network(rng, 5)
        _, staleness = mva_forward(network, q, 60)
        factor = staleness @ (network.counts / q)
        assert np.all(np.diff(factor) >= -1e-12 * factor[1:])


# --------------------------------------------------------------------------- the gradient


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
@pytest.mark.parametrize("C", [1, 2, 9, 60])
def test_gradient_matches_finite_differences(objective, C):
    rng = np.random.default_rng(C)
    for _ in range(3):
        network, q = random_network(rng, 5)
        _, grad = bound_value_and_grad(network, q, C, CONSTANTS, objective)
        for _ in range(3):
            d = simplex_direction(rng, network)
            h = 1e-6 * np.min(q / np.abs(d))
            fd = (bound_terms(network, q + h * d, C, CONSTANTS, objective).total
                  - bound_terms(network, q - h * d, C, CONSTANTS, objective).total) / (2 * h)
            assert grad @ d == pytest.approx(fd, rel=1e-6, abs=1e-9 * abs(grad) @ abs(d))


def test_throughput_gradient_is_difference_of_mean_queues():
    """d log lambda_C / d log q_g = sum_{i in g} (E_{C-1}[X_i] - E_C[X_i])  (from d log G / d log rho)."""
    rng = np.random.default_rng(8)
    network, q = random_network(rng, 4)
    C = 12
    run = MvaPass(network, q, C)
    grad = run.gradient(C, np.zeros(network.groups), 1.0)  # d lambda_C / d q
    ref = solve(network.per_client(network.mu), network.per_client(q), C)
    group = np.repeat(np.arange(network.groups), network.counts.astype(int))
    expected = np.bincount(group, weights=ref.mean_queue_prev - ref.mean_queue)
    np.testing.assert_allclose(grad * q / ref.throughput, expected, rtol=1e-10, atol=1e-13)


def torch_bound(counts, mu, q, C, c: BoundConstants, objective: Objective):
    """The bound through Buzen's recursion in log space (torch float64 autograd), per client."""
    torch = pytest.importorskip("torch")
    counts_t = torch.as_tensor(counts.astype(int))
    q_client = torch.repeat_interleave(q, counts_t)
    log_rho = torch.log(q_client) - torch.log(torch.repeat_interleave(torch.as_tensor(np.array(mu)), counts_t))
    minus_inf = torch.tensor(-np.inf, dtype=torch.float64)
    log_g = [torch.tensor(0.0, dtype=torch.float64)] + [minus_inf] * C
    for lr in log_rho:  # Buzen: g[k] += rho_i g[k-1], k = 1..C, in log space
        for k in range(1, C + 1):
            log_g[k] = torch.logaddexp(log_g[k], lr + log_g[k - 1])
    log_g = torch.stack(log_g)
    throughput = torch.exp(log_g[C - 1] - log_g[C])
    j = torch.arange(1, C, dtype=torch.float64)
    if C > 1:  # E_{C-1}[X_i] = sum_{j=1..C-1} rho_i^j G(C-1-j) / G(C-1)
        terms = j[None, :] * log_rho[:, None] + torch.flip(log_g[: C - 1], dims=[0])[None, :] - log_g[C - 1]
        queue_prev = torch.exp(terms).sum(dim=1)
    else:
        queue_prev = torch.zeros_like(q_client)
    n2 = float(counts.sum()) ** 2
    staleness = queue_prev / q_client
    K = objective.updates if objective.name == "per-update" else throughput * objective.budget
    return (c.A / (c.eta * K) + c.eta * c.L * c.S * (1 / (n2 * q_client)).sum()
            + c.eta**2 * c.L**2 * c.S * (staleness / (n2 * q_client)).sum())


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
@pytest.mark.parametrize("C", [1, 3, 8])
def test_gradient_matches_autograd_through_log_space_buzen(objective, C):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(100 + C)
    network, q = random_network(rng, 3, max_count=2)
    qt = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    value_t = torch_bound(network.counts, network.mu, qt, C, CONSTANTS, objective)
    value_t.backward()
    value, grad = bound_value_and_grad(network, q, C, CONSTANTS, objective)
    assert value == pytest.approx(value_t.item(), rel=1e-10)
    np.testing.assert_allclose(grad, qt.grad.numpy(), rtol=1e-9)


# --------------------------------------------------------------------------- the optima


def batch_profiles(network: GroupNetwork, Q: np.ndarray, c: BoundConstants, objective: Objective,
                   C_max: int) -> np.ndarray:
    """B(q, C) for many routings at once (rows of Q) and C = 1..C_max: vectorised MVA."""
    counts, mu = network.counts, network.mu
    s = np.zeros_like(Q)
    n2 = float(network.n) ** 2
    weights = counts / (n2 * Q)
    out = np.empty((Q.shape[0], C_max))
    for k in range(1, C_max + 1):
        drift = (s * weights).sum(axis=1)  # staleness at concurrency k is s_{k-1}
        W = (1.0 + Q * s) / mu
        lam = k / ((counts * Q * W).sum(axis=1))
        K = objective.updates if objective.name == "per-update" else lam * objective.budget
        out[:, k - 1] = c.A / (c.eta * K) + c.eta * c.L * c.S * weights.sum(axis=1) + c.eta**2 * c.L**2 * c.S * drift
        s = lam[:, None] * W
    return out


def brute_force(network: GroupNetwork, objective: Objective, C_max: int) -> tuple[np.ndarray, int, float, float]:
    """Best (group masses, C, value) on a grid of the simplex (2 or 3 groups) times 1..C_max,
    zoomed twice around the best point; also returns the final grid step."""
    groups = network.groups
    centre, width, step = np.full(groups - 1, 0.5), 0.5, 1.0 / 400
    for _ in range(3):
        axes = [np.arange(c - width, c + width + step / 2, step) for c in centre]
        free = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)
        masses = np.column_stack([free, 1 - free.sum(axis=1)])
        masses = masses[np.all(masses > 1e-9, axis=1)]
        values = batch_profiles(network, masses / network.counts, CONSTANTS, objective, C_max)
        row, col = np.unravel_index(np.argmin(values), values.shape)
        centre, width, step = masses[row, :-1], 3 * step, step / 40
    return masses[row], int(col) + 1, float(values[row, col]), 40 * step


BRUTE = [
    # (counts, mu, objective, C_max): interior optima of the wall-clock objective, and per-update
    ((3, 1), (1.0, 0.05), Objective.wall_clock(60.0), 15),
    ((3, 1), (1.0, 0.05), Objective.wall_clock(1500.0), 15),
    ((2, 2, 1), (4.0, 1.0, 0.1), Objective.wall_clock(40.0), 12),
    ((2, 2, 1), (4.0, 1.0, 0.1), Objective.per_update(500.0), 12),
]


@pytest.mark.parametrize(("counts", "mu", "objective", "C_max"), BRUTE)
def test_optimum_matches_brute_force_grid(counts, mu, objective, C_max):
    network = GroupNetwork(counts=np.array(counts), mu=np.array(mu))
    masses, C, value, step = brute_force(network, objective, C_max)
    opt = optimise(network, CONSTANTS, objective, c_max=C_max)
    assert opt.concurrency == C
    assert opt.terms.total <= value * (1 + 1e-12)
    assert opt.terms.total >= value * (1 - 1e-7)
    np.testing.assert_allclose(opt.q * network.counts, masses, atol=2 * step)


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
def test_identical_clients_get_uniform_routing(objective):
    network = GroupNetwork(counts=np.array([3, 5, 2]), mu=np.array([1.5, 1.5, 1.5]))
    opt = optimise(network, CONSTANTS, objective, c_max=30)
    np.testing.assert_allclose(opt.q, 1.0 / network.n, rtol=1e-6)
    # ... also from a lopsided start, at a fixed C
    r = optimise_routing(network, 12, CONSTANTS, objective, theta0=np.array([3.0, -1.0, 0.5]))
    np.testing.assert_allclose(r.q, 1.0 / network.n, rtol=1e-5)


@pytest.mark.parametrize("budget", [30.0, 300.0, 3000.0])
def test_a_very_slow_client_gets_less_routing_under_the_wall_clock_objective(budget):
    network = GroupNetwork(counts=np.array([10, 1]), mu=np.array([1.0, 0.02]))
    opt = optimise(network, CONSTANTS, Objective.wall_clock(budget), c_max=40)
    assert opt.q[1] < 0.6 / network.n < opt.q[0]
    # and it beats uniform routing at the same concurrency by more than the solver's tolerance
    uniform = bound_terms(network, network.uniform(), opt.concurrency, CONSTANTS, Objective.wall_clock(budget))
    assert opt.terms.total < 0.95 * uniform.total


def test_per_update_pushes_concurrency_down_and_wall_clock_does_not():
    """The paper's claim on a heterogeneous network (five speed classes, 100 clients)."""
    network = GroupNetwork(counts=np.array([10, 20, 30, 25, 15]), mu=np.array([5.0, 2.0, 1.0, 0.5, 0.1]))
    per_update = optimise(network, CONSTANTS, Objective.per_update(2_000.0))
    wall_clock = optimise(network, CONSTANTS, Objective.wall_clock(10.0))
    assert per_update.concurrency == 1
    assert wall_clock.concurrency >= 20
    assert wall_clock.terms.throughput > 20 * per_update.terms.throughput
    # each optimum is the better one for its own objective
    wc_at_pu = bound_terms(network, per_update.q, per_update.concurrency, CONSTANTS, Objective.wall_clock(10.0))
    assert wall_clock.terms.total < 0.5 * wc_at_pu.total
    # and the envelope the search returns bounds the profile of the optimal routing
    profile = objective_profile(network, wall_clock.q, CONSTANTS, Objective.wall_clock(10.0), network.n)
    assert np.all(wall_clock.envelope <= profile * (1 + 1e-12))


# --------------------------------------------------------------------------- scenarios and CLI

OPT_DOC = {
    "name": "opt", "seed": 3, "routing": "optimal-wall-clock",
    "horizon": {"time": 200.0},
    "optimization": {"A": 2.0, "L": 1.0, "S": 1.0, "eta": 0.05, "concurrency": {"max": 40}},
    "clients": [{"group": "fast", "count": 10, "service": {"dist": "exponential", "rate": 1.0}},
                {"group": "slow", "count": 1, "service": {"dist": "exponential", "rate": 0.02}}],
}


def test_optimal_routing_is_resolved_at_parse_time_and_round_trips():
    scenario = parse_scenario(OPT_DOC)
    network = GroupNetwork(counts=np.array([10, 1]), mu=np.array([1.0, 0.02]))
    opt = optimise(network, CONSTANTS, Objective.wall_clock(200.0), c_max=40)
    assert scenario.routing == "weights" and scenario.concurrency == opt.concurrency
    np.testing.assert_allclose(scenario.p, network.per_client(opt.q), rtol=1e-12)
    record = scenario.to_dict()
    assert record["optimization"]["objective"] == "wall-clock"
    again = parse_scenario(yaml.safe_load(yaml.safe_dump(record)))
    assert again.concurrency == scenario.concurrency and again.routing == "weights"
    np.testing.assert_array_equal(again.p, scenario.p)


def test_per_update_routing_and_defaults_from_the_horizon():
    doc = OPT_DOC | {"routing": "optimal-per-update", "horizon": {"updates": 5_000},
                     "optimization": {"A": 1.0, "L": 2.0, "S": 3.0, "eta": 0.01}}
    scenario = parse_scenario(doc)
    assert scenario.concurrency == 1
    np.testing.assert_allclose(scenario.p, 1 / 11)
    spec = scenario.optimization
    assert spec.updates == 5_000 and (spec.c_min, spec.c_max) == (1, 11)
    uniform = solve(np.r_[np.ones(10), 0.02], np.full(11, 1 / 11), 11)
    assert spec.budget == pytest.approx(5_000 / uniform.throughput)


BAD_OPT = [
    ("concurrency", OPT_DOC | {"concurrency": 5}),
    ("routing", OPT_DOC | {"routing": "optimal", "concurrency": 3}),
    ("optimization.L", OPT_DOC | {"optimization": {"A": 1.0}}),
    ("optimization.A", OPT_DOC | {"optimization": {"A": -1.0, "L": 1, "S": 1, "eta": 1}}),
    ("optimization.concurrency.max", OPT_DOC | {"optimization": {"A": 1, "L": 1, "S": 1, "eta": 1,
                                                                 "concurrency": {"min": 5, "max": 2}}}),
    ("optimization.objective", OPT_DOC | {"optimization": {"A": 1, "L": 1, "S": 1, "eta": 1,
                                                           "objective": "per-update"}}),
    ("optimization.objective", OPT_DOC | {"routing": "uniform", "concurrency": 3,
                                          "optimization": {"objective": "fastest"}}),
    ("optimization.gamma", OPT_DOC | {"optimization": {"gamma": 1}}),
    ("clients[0].routing_weight", OPT_DOC | {"clients": [dict(OPT_DOC["clients"][0], routing_weight=1.0),
                                                         OPT_DOC["clients"][1]]}),
]


@pytest.mark.parametrize(("field", "doc"), BAD_OPT, ids=[f"{i}-{f}" for i, (f, _) in enumerate(BAD_OPT)])
def test_bad_optimization_input_names_the_field(field, doc):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(doc)
    assert err.value.path == field, str(err.value)


def test_unknown_routing_lists_the_optimal_ones():
    with pytest.raises(ScenarioError, match="optimal-per-update, optimal-wall-clock"):
        parse_scenario(OPT_DOC | {"routing": "fastest", "concurrency": 3})


def test_cli_optimize_writes_a_runnable_scenario_table_and_figure(write_yaml, tmp_path, capsys):
    doc = OPT_DOC | {"routing": "uniform", "concurrency": 11}
    path = write_yaml(doc)
    out = tmp_path / "opt"
    assert main(["optimize", str(path), "--objective", "wall-clock", "--budget", "500", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wall-clock optimum" in printed and "bound_wall_clock" in printed
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["setting"]) == ["AsyncSGD (uniform, C = n)", "max-throughput routing (C = n)",
                                      "scenario (uniform, C = 11)", "per-update optimum", "wall-clock optimum",
                                      "time optimum"]
    for col in ("throughput", "mean_staleness", "staleness[slow]", "p[fast]", "optimisation_wall_clock",
                "variance", "drift", "bound_per_update", "bound_wall_clock", "updates_to_target", "time_to_target"):
        assert col in table.columns
    assert "energy_to_target" not in table.columns  # no power in this scenario
    np.testing.assert_allclose(table["mean_staleness"], table["concurrency"] - 1, atol=1e-9)
    rows = table.set_index("setting")
    assert rows["bound_wall_clock"]["wall-clock optimum"] == rows["bound_wall_clock"].min()
    assert rows["time_to_target"]["time optimum"] == rows["time_to_target"].min()
    # the default target is AsyncSGD's bound at the budget: it takes AsyncSGD the budget to get there
    assert rows["time_to_target"]["AsyncSGD (uniform, C = n)"] == pytest.approx(500.0, rel=1e-12)
    assert rows["throughput"]["max-throughput routing (C = n)"] == rows["throughput"][rows["concurrency"] == 11].max()
    written = load_scenario(out / "scenario-wall-clock.yaml")
    opt = optimise(GroupNetwork(counts=np.array([10, 1]), mu=np.array([1.0, 0.02])), CONSTANTS,
                   Objective.wall_clock(500.0), c_max=40)
    assert written.concurrency == opt.concurrency == rows["concurrency"]["wall-clock optimum"]
    np.testing.assert_allclose(written.p[[0, 10]], opt.q, rtol=1e-12)
    assert written.optimization.budget == 500.0
    assert (out / "objective_vs_C.png").stat().st_size > 20_000
    assert json.loads((out / "optimization.json").read_text())["optima"]["per-update"]["concurrency"] == 1


def test_cli_optimize_without_constants_is_a_one_line_error(write_yaml, tmp_path, capsys):
    doc = {k: v for k, v in OPT_DOC.items() if k != "optimization"} | {"routing": "uniform", "concurrency": 4}
    assert main(["optimize", str(write_yaml(doc)), "--objective", "per-update", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: optimization.A: missing")
    assert main(["optimize", str(write_yaml(OPT_DOC | {"routing": "uniform", "concurrency": 4})),
                 "--objective", "wall-clock", "--budget", "-3", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: --budget")


# --------------------------------------------------------------------------- estimated constants

TRAIN_DOC = {
    "name": "tiny-train", "seed": 5, "concurrency": 2, "horizon": {"updates": 50},
    "clients": [{"group": "a", "count": 3, "service": {"dist": "exponential", "rate": 1.0}},
                {"group": "b", "count": 1, "service": {"dist": "exponential", "rate": 0.1}}],
    "training": {"dataset": {"name": "synthetic", "dim": 5, "classes": 3, "samples": 20, "size_sigma": 0.0,
                             "iid": True},
                 "model": "logistic", "algorithm": {"name": "generalized_async_sgd", "lr": 0.1, "batch_size": 8}},
}


def exact_constants(scenario):
    """f(w0), zeta^2, the exact mini-batch variance (without replacement) and the Hessian's top
    eigenvalue, from per-sample gradients and the full Hessian (torch, float64)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from fedsim.training.workload import build_workload

    wl = build_workload(scenario)
    x, y = wl.trainer.x.double(), wl.trainer.y
    w0 = wl.w0.double()
    classes, dim = 3, 5

    def losses(w, idx):  # logistic model: logits = x W^T + b, W stored first (nn.Linear order)
        W, b = w[: classes * dim].view(classes, dim), w[classes * dim:]
        return F.cross_entropy(x[idx] @ W.T + b, y[idx], reduction="none")

    offsets = np.concatenate([[0], np.cumsum(wl.sizes)[:-1]])
    clients = [torch.arange(o, o + m) for o, m in zip(offsets, wl.sizes)]
    f_i, grads, sigma2 = [], [], []
    batch = scenario.training.algorithm["batch_size"]
    for idx in clients:
        per_sample = torch.stack([torch.autograd.functional.jacobian(lambda w: losses(w, idx[k:k + 1]).sum(), w0)
                                  for k in range(len(idx))])
        mu = per_sample.mean(dim=0)
        m = len(idx)
        spread = float(((per_sample - mu) ** 2).sum(dim=1).mean())
        sigma2.append((m - batch) / (batch * (m - 1)) * spread)
        grads.append(mu)
        f_i.append(float(losses(w0, idx).mean()))
    G = torch.stack(grads)
    zeta2 = float(((G - G.mean(dim=0)) ** 2).sum(dim=1).mean())

    def f(w):
        return torch.stack([losses(w, idx).mean() for idx in clients]).mean()

    top = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, w0)).max())
    return np.mean(f_i), zeta2, float(np.mean(sigma2)), top


def test_estimated_constants_match_exact_computation(monkeypatch):
    """A = f(w0) and zeta^2 exactly; L = the Hessian's top eigenvalue (power iteration run to
    convergence); sigma^2 within 15% with 1,600 mini-batch draws (about 6 standard errors: a
    batch drawn with replacement, or the plain sample variance, would be off by about 2x)."""
    from fedsim.optimize import constants

    monkeypatch.setattr(constants, "POWER_STEPS", 150)
    monkeypatch.setattr(constants, "BATCH_DRAWS", 400)
    scenario = parse_scenario(TRAIN_DOC)
    A, zeta2, sigma2, top = exact_constants(scenario)
    est = constants.estimate_constants(scenario)
    assert est.A == pytest.approx(A, rel=1e-10)
    assert est.zeta2 == pytest.approx(zeta2, rel=1e-9)
    assert est.L == pytest.approx(top, rel=1e-4)
    assert est.L_random <= est.L * (1 + 1e-9)
    assert est.sigma2 == pytest.approx(sigma2, rel=0.15)
    assert est.S == pytest.approx(est.sigma2 + est.zeta2)


def test_optimal_routing_estimates_missing_constants_and_takes_eta_from_training():
    pytest.importorskip("torch")
    from fedsim.optimize.constants import estimate_constants

    doc = {k: v for k, v in TRAIN_DOC.items() if k != "concurrency"} | {
        "routing": "optimal-wall-clock", "optimization": {"L": 0.5, "budget": 100.0}}
    scenario = parse_scenario(doc)
    spec = scenario.optimization
    est = estimate_constants(parse_scenario(TRAIN_DOC))
    assert (spec.A, spec.L, spec.S, spec.eta) == (pytest.approx(est.A), 0.5, pytest.approx(est.S), 0.1)
    assert scenario.to_dict()["optimization"]["A"] == pytest.approx(est.A)
