"""Calibrated constants: the fit on data of the bound's own form, refused designs, real pilots, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.optimize.calibrate import CalibrationError, calibrate, default_design, fit_bound
from fedsim.optimize.objective import BoundConstants, GroupNetwork, Objective, bound_terms
from fedsim.scenario import parse_scenario

TRUTH = BoundConstants(A=2.0, L=0.3, S=0.8, eta=0.05)
NETWORK = GroupNetwork(counts=np.array([20, 40, 30, 10]), mu=np.array([4.0, 1.0, 0.25, 0.05]))
K_GRID = np.arange(200, 4001, 200)


def synthetic(rng: np.random.Generator, points, truth: BoundConstants = TRUTH, seeds: int = 4,
              noise: float = 0.002, rho: float = 0.8) -> pd.DataFrame:
    """Observations of ``f_s + A/(eta K) + eta L S V + eta^2 L^2 S D`` at every design point
    and seed, plus AR(1) noise along each run (correlation ``rho`` between evaluations) and a
    level per seed."""
    rows = []
    levels = rng.normal(0.3, 0.05, seeds)
    for point in points:
        terms = bound_terms(NETWORK, point.q, point.concurrency, truth, Objective.per_update(1.0))
        for s in range(seeds):
            e = np.empty(K_GRID.size)
            e[0] = rng.normal(0, noise)
            for k in range(1, K_GRID.size):
                e[k] = rho * e[k - 1] + np.sqrt(1 - rho**2) * rng.normal(0, noise)
            loss = (levels[s] + truth.A / (truth.eta * K_GRID) + terms.variance + terms.drift + e)
            rows.append(pd.DataFrame({"point": point.label, "seed": s, "updates": K_GRID,
                                      "variance_factor": terms.variance_factor,
                                      "staleness_factor": terms.staleness_factor, "loss": loss}))
    return pd.concat(rows, ignore_index=True)


def test_fit_recovers_the_constants_of_data_of_the_bound_form():
    """One data set: A, L, S within 3 standard errors of the truth (99.7% each if the errors are
    right), and the errors small enough (under 25% of the value) that the check means something."""
    points = default_design(NETWORK, 1, 100)
    fit = fit_bound(synthetic(np.random.default_rng(11), points), TRUTH.eta)
    assert fit.active == () and fit.condition < 100
    for name in ("A", "L", "S"):
        truth, got, se = getattr(TRUTH, name), getattr(fit.constants, name), fit.stderr[name]
        assert abs(got - truth) < 3 * se, (name, got, truth, se)
        assert 0 < se < 0.25 * truth, (name, se)
    assert fit.constants.eta == TRUTH.eta
    # the algebra: the fitted coefficients give back the constants
    a, b, c = (fit.coefficients[k] for k in ("a", "b", "c"))
    assert (a * TRUTH.eta, c / (TRUTH.eta * b), b * b / c) == pytest.approx(
        (fit.constants.A, fit.constants.L, fit.constants.S), rel=1e-12)


def test_standard_errors_match_the_spread_of_the_estimates():
    """Over 60 independent data sets with noise correlated along each run, the standard
    deviation of the estimates of L and S is within [0.7, 1.5] times the median standard error
    (the plain least-squares error, which treats the rows as independent, is several times too
    small with rho = 0.8), and a 95% interval covers the truth at least 85% of the time."""
    points = default_design(NETWORK, 1, 100)
    rng = np.random.default_rng(5)
    fits = [fit_bound(synthetic(rng, points, seeds=3), TRUTH.eta) for _ in range(60)]
    for name in ("L", "S"):
        est = np.array([getattr(f.constants, name) for f in fits])
        se = np.array([f.stderr[name] for f in fits])
        ratio = est.std(ddof=1) / np.median(se)
        assert 0.7 < ratio < 1.5, (name, ratio)
        assert np.mean(np.abs(est - getattr(TRUTH, name)) < 1.96 * se) >= 0.85


def test_a_single_routing_cannot_identify_the_variance_term():
    points = [p for p in default_design(NETWORK, 1, 100) if p.label.startswith("uniform")]
    with pytest.raises(CalibrationError, match=r"condition number .*V \(variance factor\)"):
        fit_bound(synthetic(np.random.default_rng(1), points), TRUTH.eta)


def test_a_single_concurrency_and_routing_cannot_identify_anything():
    points = [p for p in default_design(NETWORK, 1, 100) if p.label == "uniform, C = 22"]
    with pytest.raises(CalibrationError, match="cannot identify"):
        fit_bound(synthetic(np.random.default_rng(1), points), TRUTH.eta)


def test_a_loss_that_falls_with_the_variance_factor_is_refused_not_fitted_negative():
    """Data whose loss decreases with V: the bounded fit holds b at 0 and refuses (L, S undefined)."""
    points = default_design(NETWORK, 1, 100)
    obs = synthetic(np.random.default_rng(2), points)
    obs["loss"] -= 0.2 * obs["variance_factor"]
    with pytest.raises(CalibrationError, match="variance factor V .*b = 0"):
        fit_bound(obs, TRUTH.eta)


TINY = {
    "name": "tiny-calibrate", "seed": 5, "concurrency": 2, "horizon": {"updates": 400},
    "clients": [{"group": "fast", "count": 3, "service": {"dist": "exponential", "rate": 1.0}},
                {"group": "slow", "count": 1, "service": {"dist": "exponential", "rate": 0.1}}],
    "training": {"dataset": {"name": "synthetic", "dim": 5, "classes": 3, "samples": 20, "size_sigma": 0.0},
                 "partition": {"dirichlet": 0.3}, "model": "logistic",
                 "algorithm": {"name": "generalized_async_sgd", "lr": 0.1, "batch_size": 8}},
}


def test_calibrate_runs_real_pilots_and_fits_them(tmp_path):
    """A real calibration: every pilot evaluated as planned, V and D those of the analytical
    model at its point, the given seeds used, positive finite constants with their errors."""
    pytest.importorskip("torch")
    scenario = parse_scenario(TINY, base_dir=tmp_path)
    cal = calibrate(scenario, seeds=[7, 9], workers=1, budget=200)
    obs = cal.observations
    assert set(obs["seed"]) == {7, 9} and cal.seeds == (7, 9) and cal.budget == 200
    assert len(cal.design) == 12 and obs.groupby(["point", "seed"]).ngroups == 24
    assert obs.groupby(["point", "seed"])["updates"].max().eq(200).all()
    assert obs.groupby(["point", "seed"]).size().eq(20).all()  # EVALUATIONS, update 0 left out
    network = GroupNetwork(counts=np.array([3, 1]), mu=np.array([1.0, 0.1]))
    for point in cal.design:
        terms = bound_terms(network, point.q, point.concurrency, TRUTH, Objective.per_update(1.0))
        rows = obs[obs["point"] == point.label]
        assert rows["variance_factor"].eq(terms.variance_factor).all()
        assert rows["staleness_factor"].eq(terms.staleness_factor).all()
        assert rows["p[fast]"].iat[0] == point.q[0]
    c = cal.constants
    assert c.eta == 0.1 and all(np.isfinite(v) and v > 0 for v in (c.A, c.L, c.S))
    assert all(np.isfinite(cal.stderr[k]) and cal.stderr[k] > 0 for k in ("A", "L", "S"))
    table = cal.table().set_index("constant")
    assert list(table.columns) == ["estimated", "fitted", "stderr"]
    assert table.loc["L", "fitted"] == c.L and table.loc["A", "estimated"] == cal.estimated.A
    assert table.loc["b", "fitted"] == pytest.approx(c.eta * c.L * c.S)


def test_cli_optimize_calibrate_writes_the_calibration(write_yaml, tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "out"
    path = write_yaml(TINY)
    assert main(["optimize", str(path), "--objective", "wall-clock", "--calibrate", "--pilot-budget", "100",
                 "--pilot-seeds", "2", "--workers", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "constants calibrated on pilot training runs: 12 points x 2 seeds" in printed
    table = pd.read_csv(out / "calibration.csv").set_index("constant")
    runs = pd.read_csv(out / "calibration_runs.csv")
    assert set(runs["seed"]) == {5, 6} and runs["updates"].max() == 100
    record = json.loads((out / "optimization.json").read_text())
    for name in ("A", "L", "S"):  # the optima use the fitted constants
        assert record["constants"][name] == pytest.approx(table.loc[name, "fitted"], rel=1e-12)
    assert record["calibration"]["seeds"] == [5, 6] and record["calibration"]["pilots"] == 24
    assert record["estimates"]["A"] == pytest.approx(table.loc["A", "estimated"], rel=1e-12)


@pytest.mark.parametrize("args, message", [
    (["--calibrate", "--pilot-budget", "-5"], "error: --pilot-budget: must be an integer >= 2, got -5"),
    (["--calibrate", "--pilot-seeds", "0"], "error: --pilot-seeds: must be an integer >= 1, got 0"),
    (["--calibrate", "--workers", "0"], "error: --workers: must be an integer >= 1, got 0"),
    (["--calibrate", "--budget", "-1"], "error: --budget: must be a positive number, got -1.0"),
    (["--pilot-seeds", "2"], "error: --pilot-seeds: only with --calibrate"),
])
def test_cli_calibrate_bad_values_are_one_line_errors(write_yaml, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["optimize", str(write_yaml(TINY)), "--objective", "wall-clock", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == message and not out.exists()


def test_calibrate_needs_training(write_yaml, tmp_path, capsys):
    doc = {k: v for k, v in TINY.items() if k != "training"} | {"optimization": {"A": 1, "L": 1, "S": 1, "eta": 0.1}}
    assert main(["optimize", str(write_yaml(doc)), "--objective", "wall-clock", "--calibrate",
                 "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: training: missing; calibrating the bound needs pilot")


def test_a_loss_that_does_not_fall_with_the_updates_holds_a_at_zero_and_says_so():
    """Loss rising along each run: a is held at 0 (reported, no standard error for A), and the
    standard errors of L and S come from the fit without the 1/K column."""
    points = default_design(NETWORK, 1, 100)
    obs = synthetic(np.random.default_rng(3), points)
    obs["loss"] -= TRUTH.A / (TRUTH.eta * obs["updates"])
    obs["loss"] += 1e-6 * obs["updates"]
    fit = fit_bound(obs, TRUTH.eta)
    assert fit.active == ("a",) and fit.constants.A == 0.0 and np.isnan(fit.stderr["A"])
    assert np.isnan(fit.covariance[0]).all() and np.isfinite(fit.covariance[1:, 1:]).all()
    for name in ("L", "S"):
        assert abs(getattr(fit.constants, name) - getattr(TRUTH, name)) < 4 * fit.stderr[name]


def test_bad_pilot_points_and_seeds_are_refused_before_anything_runs(tmp_path):
    scenario = parse_scenario(TINY, base_dir=tmp_path)
    with pytest.raises(ScenarioError, match=r"^points\[0\]: sum_g counts_g q_g must be 1"):
        calibrate(scenario, points=[([0.5, 0.5], 2)])
    with pytest.raises(ScenarioError, match=r"^points\[0\]\.concurrency: must be an integer >= 1"):
        calibrate(scenario, points=[([0.25, 0.25], 0)])
    with pytest.raises(ScenarioError, match="^--pilot-seeds: seeds must be distinct"):
        calibrate(scenario, seeds=[3, 3])
    with pytest.raises(ScenarioError, match="^--pilot-seeds: must be a count >= 1 or a non-empty list"):
        calibrate(scenario, seeds=[])
