"""Tests of fedsim.distributions: parameterisation, sampling, the registry and spec checking.

The analytic tests compare each law's requested mean and cv with the moments of the law
rebuilt from its own parameters by code fedsim does not use: textbook closed-form moments,
scipy.stats laws, a hand-written hyperexponential mixture, mpmath for the Weibull shape
solver. The statistical tests use fixed seeds, so they are deterministic; each check is at
level alpha = 1e-3 (a correct implementation would fail it with probability 1e-3 under a
fresh seed), and the 48 checks of the file would together raise a false alarm with
probability under 5% on reseeding. At n = 10^6 they catch, e.g., a gamma scale off by 0.3%.
"""

from __future__ import annotations

import functools
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedsim.distributions import (
    CV_MAX,
    CV_MIN,
    DISTRIBUTIONS,
    Deterministic,
    Empirical,
    Exponential,
    Gamma,
    HyperExponential,
    LogNormal,
    MeanCvDistribution,
    Pareto,
    ServiceDistribution,
    Uniform,
    Weibull,
    make_distribution,
    register_distribution,
)
from fedsim.errors import ScenarioError

ALPHA = 1e-3
Z = stats.norm.ppf(1 - ALPHA / 2)  # 3.29: two-sided normal quantile at level ALPHA
N = 1_000_000  # sample size of the statistical checks
BUILTIN = [
    "deterministic",
    "empirical",
    "exponential",
    "gamma",
    "hyperexponential",
    "lognormal",
    "pareto",
    "trace",
    "uniform",
    "weibull",
]


# --------------------------------------------------------------------------------------------
# Independent models of the laws
# --------------------------------------------------------------------------------------------


class HyperExpLaw:
    """Mixture of exponentials written out by hand: P(S > x) = sum p_i exp(-mu_i x)."""

    def __init__(self, p: tuple[float, float], mu: tuple[float, float]) -> None:
        self.p, self.mu = p, mu

    def moment(self, n: int) -> float:
        return sum(p * math.factorial(n) / mu**n for p, mu in zip(self.p, self.mu))

    def mean(self) -> float:
        return self.moment(1)

    def var(self) -> float:
        return self.moment(2) - self.moment(1) ** 2

    def std(self) -> float:
        return math.sqrt(self.var())

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return 1.0 - sum(p * np.exp(-mu * x) for p, mu in zip(self.p, self.mu))


def reference_law(d: ServiceDistribution):
    """The law of ``d`` rebuilt from its own parameters by code that fedsim does not use."""
    if isinstance(d, Exponential):
        return stats.expon(scale=1.0 / d.rate)
    if isinstance(d, Uniform):
        return stats.uniform(loc=d.low, scale=d.high - d.low)
    if isinstance(d, Gamma):
        return stats.gamma(d.shape, scale=d.scale)
    if isinstance(d, LogNormal):
        return stats.lognorm(d.sigma, scale=math.exp(d.mu))
    if isinstance(d, Weibull):
        return stats.weibull_min(d.shape, scale=d.scale)
    if isinstance(d, Pareto):
        return stats.pareto(d.shape, scale=d.scale)
    if isinstance(d, HyperExponential):
        return HyperExpLaw(d.probabilities, d.rates)
    raise TypeError(d)


def raw_moment(d: ServiceDistribution, n: int) -> float:
    """E[S^n] from the textbook closed form of each law, in the law's own parameters.

    (scipy's generic ``moment`` is not used: for a scaled Pareto law without an n-th moment it
    integrates numerically and returns a finite number.)
    """
    if isinstance(d, Exponential):
        return math.factorial(n) / d.rate**n
    if isinstance(d, Uniform):
        return (d.high ** (n + 1) - d.low ** (n + 1)) / ((n + 1) * (d.high - d.low))
    if isinstance(d, Gamma):
        return d.scale**n * math.exp(math.lgamma(d.shape + n) - math.lgamma(d.shape))
    if isinstance(d, LogNormal):
        return math.exp(n * d.mu + n**2 * d.sigma**2 / 2)
    if isinstance(d, Weibull):
        return d.scale**n * math.gamma(1 + n / d.shape)
    if isinstance(d, Pareto):
        return d.shape * d.scale**n / (d.shape - n) if d.shape > n else math.inf
    if isinstance(d, HyperExponential):
        return HyperExpLaw(d.probabilities, d.rates).moment(n)
    raise TypeError(d)


def central_shape(d: ServiceDistribution) -> tuple[float, float]:
    """Skewness and (non-excess) kurtosis of the law of ``d``; inf where they do not exist."""
    m1, m2, m3, m4 = (raw_moment(d, n) for n in (1, 2, 3, 4))
    var = m2 - m1**2
    skew = (m3 - 3 * m1 * m2 + 2 * m1**3) / var**1.5 if math.isfinite(m3) else math.inf
    kurt = (m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4) / var**2 if math.isfinite(m4) else math.inf
    return skew, kurt


# (dist, mean, cv): every parametric law with a free cv at a few shapes, light and heavy.
CASES = [
    ("exponential", 0.25, 1.0),
    ("exponential", 3.0, 1.0),
    ("uniform", 1.0, 0.2),
    ("uniform", 5.0, 0.5),
    ("uniform", 2.0, 1 / math.sqrt(3)),
    ("gamma", 1.0, 0.5),
    ("gamma", 2.0, 1.0),
    ("gamma", 0.5, 3.0),
    ("lognormal", 2.0, 0.5),
    ("lognormal", 2.0, 1.5),
    ("weibull", 1.0, 0.3),
    ("weibull", 2.0, 1.0),
    ("weibull", 1.0, 2.5),
    ("pareto", 1.0, 0.2),  # shape a = 6.10: four moments
    ("pareto", 1.0, 1.0),  # a = 2.41: no third moment
    ("pareto", 3.0, 5.0),  # a = 2.02: barely a variance
    ("hyperexponential", 1.0, 1.5),
    ("hyperexponential", 2.0, 4.0),
]


def build(dist: str, mean: float, cv: float) -> ServiceDistribution:
    spec = {"dist": dist, "mean": mean} if dist == "exponential" else {"dist": dist, "mean": mean, "cv": cv}
    return make_distribution(spec, "service")


def case_id(case: tuple[str, float, float]) -> str:
    return f"{case[0]}-mean{case[1]:g}-cv{case[2]:.3g}"


@functools.cache
def sample_of(case: tuple[str, float, float]) -> np.ndarray:
    """N draws of the case with a fixed seed, kept for the three tests that read them."""
    x = build(*case).sample(np.random.default_rng(20240601), N)
    x.setflags(write=False)
    return x


@pytest.fixture(autouse=True, scope="module")
def _free_the_samples():
    yield
    sample_of.cache_clear()


# Which cases the moment-based confidence intervals are honest for: the sample mean needs a
# finite third moment for its normal approximation (Berry-Esseen); the sample cv, by the delta
# method, needs a finite fourth moment, and a kurtosis small enough (<= 50) for the variance of
# s^2 to be normal at n = 1 000 000. The others are covered by the KS test.
MEAN_CASES = [c for c in CASES if math.isfinite(central_shape(build(*c))[0])]
CV_CASES = [c for c in CASES if central_shape(build(*c))[1] <= 50]


def test_the_ci_filters_keep_most_cases():
    assert len(MEAN_CASES) >= len(CASES) - 2
    assert len(CV_CASES) >= 10
    assert {c[0] for c in CV_CASES} == {c[0] for c in CASES}  # every law has a light-tailed case


# --------------------------------------------------------------------------------------------
# Parameterisation: requested mean and cv are the law's
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_analytic_moments_are_the_requested_ones(case):
    dist, mean, cv = case
    d = build(*case)
    law = reference_law(d)
    assert d.mean == pytest.approx(mean, rel=1e-15)
    assert d.cv == pytest.approx(cv, rel=1e-15)
    assert d.rate == pytest.approx(1 / mean, rel=1e-15)
    assert d.variance == pytest.approx((mean * cv) ** 2, rel=1e-14)
    assert float(law.mean()) == pytest.approx(mean, rel=1e-12)
    assert float(law.std()) / float(law.mean()) == pytest.approx(cv, rel=1e-10)
    m1, m2 = raw_moment(d, 1), raw_moment(d, 2)
    assert m1 == pytest.approx(mean, rel=1e-12)
    assert math.sqrt(m2 - m1**2) / m1 == pytest.approx(cv, rel=1e-10)


LAWS_WITH_CV = {
    "uniform": (CV_MIN, 1 / math.sqrt(3)),
    "gamma": (0.01, 100.0),
    "lognormal": (0.01, 100.0),
    "weibull": (0.01, 100.0),
    "pareto": (0.01, 100.0),
    "hyperexponential": (1.0 + 1e-9, 100.0),
}


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    dist=st.sampled_from(sorted(LAWS_WITH_CV)),
    mean=st.floats(1e-3, 1e3),
    u=st.floats(0.0, 1.0),
)
def test_mapping_from_mean_and_cv_holds_across_the_range(dist, mean, u):
    low, high = LAWS_WITH_CV[dist]
    cv = low * (high / low) ** u  # log-uniform over the range
    law = reference_law(make_distribution({"dist": dist, "mean": mean, "cv": cv}, "service"))
    assert float(law.mean()) == pytest.approx(mean, rel=1e-9)
    assert float(law.std()) / float(law.mean()) == pytest.approx(cv, rel=1e-7)


@pytest.mark.parametrize("cv", [1e-6, 1e-4, 0.01, 0.3, 1.0, 3.0, 100.0, 1e4, 1e6])
def test_weibull_shape_solves_the_cv_equation_to_full_precision(cv):
    mpmath = pytest.importorskip("mpmath")
    d = Weibull(mean=2.0, cv=cv)
    with mpmath.workdps(60):
        k = mpmath.mpf(d.shape)
        g1, g2 = mpmath.gamma(1 + 1 / k), mpmath.gamma(1 + 2 / k)
        exact_cv = mpmath.sqrt(g2 / g1**2 - 1)
        exact_mean = mpmath.mpf(d.scale) * g1
    assert float(exact_cv) == pytest.approx(cv, rel=1e-12)
    assert float(exact_mean) == pytest.approx(2.0, rel=1e-13)


def test_weibull_shape_at_small_cv_follows_the_asymptote():
    # 1 + cv^2 = Gamma(1+2/k)/Gamma(1+1/k)^2 = 1 + (pi^2/6)/k^2 + O(k^-3), so k cv -> pi/sqrt(6).
    d = Weibull(mean=1.0, cv=1e-6)
    assert d.shape * d.cv == pytest.approx(math.pi / math.sqrt(6), rel=1e-5)
    assert Weibull(mean=1.0, cv=1.0).shape == pytest.approx(1.0, rel=1e-13)  # the exponential


def test_closed_form_parameters():
    assert Gamma(mean=2.0, cv=0.5).shape == pytest.approx(4.0)
    assert Gamma(mean=2.0, cv=0.5).scale == pytest.approx(0.5)
    p = Pareto(mean=3.0, cv=1.0)
    assert p.shape == pytest.approx(1 + math.sqrt(2))
    assert p.scale * p.shape / (p.shape - 1) == pytest.approx(3.0)
    h = HyperExponential(mean=2.0, cv=3.0)
    assert h.probabilities[0] == pytest.approx((1 + math.sqrt(8 / 10)) / 2)
    assert h.probabilities[0] / h.rates[0] == pytest.approx(1.0)  # balanced: p_i/mu_i = mean/2
    assert h.probabilities[1] / h.rates[1] == pytest.approx(1.0)
    # at large cv p_2 ~ 1/(2 cv^2) keeps its precision
    assert HyperExponential(mean=1.0, cv=1e6).probabilities[1] == pytest.approx(0.5e-12, rel=1e-9)
    u = Uniform(mean=4.0, cv=0.25)
    assert (u.low, u.high) == pytest.approx((4 - math.sqrt(3), 4 + math.sqrt(3)))


# --------------------------------------------------------------------------------------------
# Sampling: the samples follow the law
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sample_follows_the_law_kolmogorov_smirnov(case):
    law = reference_law(build(*case))
    result = stats.kstest(sample_of(case), law.cdf)
    assert result.pvalue > ALPHA, result


@pytest.mark.parametrize("case", MEAN_CASES, ids=case_id)
def test_sample_mean_is_in_its_confidence_interval(case):
    _, mean, cv = case
    x = sample_of(case)
    # CLT with the known sd: P(|mean_hat - mean| > Z sd/sqrt(n)) = ALPHA.
    assert abs(x.mean() - mean) <= Z * mean * cv / math.sqrt(N)


@pytest.mark.parametrize("case", CV_CASES, ids=case_id)
def test_sample_cv_is_in_its_confidence_interval(case):
    _, mean, cv = case
    skew, kurt = central_shape(build(*case))
    x = sample_of(case)
    cv_hat = x.std(ddof=1) / x.mean()
    # Delta method for s/mean_hat: Var ~ (cv^2/n) (cv^2 + (kurt - 1)/4 - skew cv).
    sd = cv * math.sqrt((cv**2 + (kurt - 1) / 4 - skew * cv) / N)
    assert abs(cv_hat - cv) <= Z * sd


@pytest.mark.parametrize("dist", sorted(LAWS_WITH_CV))
@pytest.mark.parametrize("end", ["low", "high"])
def test_samples_are_positive_and_finite_at_the_ends_of_the_cv_range(dist, end):
    cls = DISTRIBUTIONS[dist]
    cv = (cls.cv_min * (1 + 1e-9) if cls.cv_min_open else cls.cv_min) if end == "low" else cls.cv_max
    d = make_distribution({"dist": dist, "rate": 0.5, "cv": cv}, "service")
    x = d.sample(np.random.default_rng(5), 20_000)
    assert x.dtype == np.float64 and x.shape == (20_000,)
    assert np.all(np.isfinite(x)) and np.all(x > 0)


def test_deterministic_returns_the_mean_exactly():
    d = make_distribution({"dist": "deterministic", "mean": 0.3}, "service")
    x = d.sample(np.random.default_rng(0), 1000)
    assert x.dtype == np.float64
    assert np.all(x == 0.3)
    assert (d.mean, d.cv, d.variance) == (0.3, 0.0, 0.0)
    by_rate = make_distribution({"dist": "deterministic", "rate": 4.0, "cv": 0}, "s")
    assert by_rate.sample(np.random.default_rng(0), 3).tolist() == [0.25] * 3


@pytest.mark.parametrize("case", CASES + [("deterministic", 2.0, 0.0)], ids=case_id)
def test_same_seed_gives_identical_samples(case):
    d = build(*case)
    first = d.sample(np.random.default_rng(42), 1000)
    again = build(*case).sample(np.random.default_rng(42), 1000)
    assert np.array_equal(first, again)
    assert d.sample(np.random.default_rng(42), 0).shape == (0,)
    if case[0] != "deterministic":
        assert not np.array_equal(first, d.sample(np.random.default_rng(43), 1000))


# --------------------------------------------------------------------------------------------
# Specs: mean or rate, round trips, readable forms
# --------------------------------------------------------------------------------------------


def test_rate_is_kept_exactly_and_mean_is_its_inverse():
    d = make_distribution({"dist": "gamma", "rate": 3.0, "cv": 0.5}, "service")
    assert d.rate == 3.0
    assert d.mean == pytest.approx(1 / 3)
    assert d.to_spec() == {"dist": "gamma", "rate": 3.0, "cv": 0.5}


def test_to_spec_includes_defaults():
    exponential = make_distribution({"dist": "exponential", "rate": 4}, "s")
    assert exponential.to_spec() == {"dist": "exponential", "rate": 4.0, "cv": 1.0}
    deterministic = make_distribution({"dist": "deterministic", "mean": 2}, "s")
    assert deterministic.to_spec() == {"dist": "deterministic", "mean": 2.0, "cv": 0.0}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_spec_and_repr_round_trip(case):
    d = build(*case)
    again = make_distribution(d.to_spec(), "service")
    assert again == d and hash(again) == hash(d)
    assert eval(repr(d), {type(d).__name__: type(d)}) == d
    assert all(type(v) in (str, float) for v in d.to_spec().values())


def test_describe_and_repr_are_short_and_readable():
    assert make_distribution({"dist": "lognormal", "mean": 2.0, "cv": 1.5}, "s").describe() == "lognormal(mean=2, cv=1.5)"
    assert make_distribution({"dist": "exponential", "rate": 4.0}, "s").describe() == "exponential(rate=4)"
    assert repr(LogNormal(mean=2.0, cv=1.5)) == "LogNormal(mean=2.0, cv=1.5)"
    assert repr(Exponential(rate=4.0)) == "Exponential(rate=4.0)"
    assert Deterministic(mean=1.0) != Exponential(mean=1.0)


def test_integers_are_accepted_as_numbers():
    d = make_distribution({"dist": "weibull", "mean": 2, "cv": np.float32(0.5)}, "s")
    assert d.to_spec() == {"dist": "weibull", "mean": 2.0, "cv": 0.5}


# --------------------------------------------------------------------------------------------
# Bad input: ScenarioError on one line, at the field, naming what is allowed
# --------------------------------------------------------------------------------------------

ALL_NAMES = "allowed: " + ", ".join(BUILTIN)


def expect_error(spec, path: str, *fragments: str, base_dir: Path | None = None) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        make_distribution(spec, path.split(".service")[0] + ".service", base_dir)
    err = info.value
    text = str(err)
    assert "\n" not in text
    assert err.path == path
    assert text.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in text
    return err


def test_the_documented_messages_exactly():
    err = expect_error({"dist": "exponential", "rate": -1}, "clients[0].service.rate")
    assert str(err) == "clients[0].service.rate: must be a positive number, got -1"
    err = expect_error({"dist": "lognormal", "mean": 1, "cv": 1, "shape": 2}, "clients[1].service.shape")
    assert str(err) == "clients[1].service.shape: unknown field; allowed fields for lognormal: dist, mean, rate, cv"
    err = expect_error({"dist": "foo"}, "clients[1].service.dist")
    assert str(err) == f"clients[1].service.dist: unknown distribution 'foo'; {ALL_NAMES}"


BAD_SPECS = [
    # (spec, field after "clients[1].service", fragments naming what is allowed)
    (4.0, "", ["must be a mapping", "dist is one of: deterministic, empirical"]),
    ({"rate": 1.0}, ".dist", ["missing", ALL_NAMES]),
    ({"dist": "Exponential", "rate": 1.0}, ".dist", ["unknown distribution 'Exponential'", ALL_NAMES]),
    ({"dist": 3}, ".dist", ["unknown distribution 3", ALL_NAMES]),
    ({"dist": "gamma", "mean": 1, "cv": 1, "scale": 2}, ".scale", ["allowed fields for gamma: dist, mean, rate, cv"]),
    ({"dist": "exponential", "rate": 0}, ".rate", ["must be a positive number, got 0"]),
    ({"dist": "exponential", "mean": -0.5}, ".mean", ["must be a positive number, got -0.5"]),
    ({"dist": "exponential", "rate": float("nan")}, ".rate", ["must be a positive number, got nan"]),
    ({"dist": "exponential", "rate": float("inf")}, ".rate", ["must be a positive number, got inf"]),
    ({"dist": "exponential", "rate": "4"}, ".rate", ["must be a positive number, got the string '4'"]),
    ({"dist": "exponential", "rate": "1e-3"}, ".rate", ["positive number", "e.g. 0.001"]),
    ({"dist": "exponential", "rate": "fast"}, ".rate", ["must be a positive number, got 'fast'"]),
    ({"dist": "exponential", "rate": True}, ".rate", ["must be a positive number, got True"]),
    ({"dist": "exponential", "rate": [1.0]}, ".rate", ["must be a positive number, got [1.0]"]),
    ({"dist": "exponential", "rate": 1e-320}, ".rate", ["positive number whose inverse is finite"]),
    ({"dist": "exponential", "mean": 1.0, "rate": 1.0}, "", ["exactly one of mean or rate"]),
    ({"dist": "gamma", "cv": 1.0}, "", ["missing mean or rate", "exactly one of them", "1e-06 <= cv <= 1e+06"]),
    ({"dist": "exponential"}, "", ["missing mean or rate"]),
    ({"dist": "gamma", "mean": 1.0}, ".cv", ["required for gamma", "1e-06 <= cv <= 1e+06"]),
    ({"dist": "gamma", "mean": 1.0, "cv": 0}, ".cv", ["gamma needs 1e-06 <= cv <= 1e+06, got 0", "deterministic"]),
    ({"dist": "lognormal", "mean": 1.0, "cv": -1}, ".cv", ["lognormal needs 1e-06 <= cv <= 1e+06, got -1"]),
    ({"dist": "weibull", "mean": 1.0, "cv": 1e7}, ".cv", ["weibull needs 1e-06 <= cv <= 1e+06"]),
    ({"dist": "pareto", "mean": 1.0, "cv": "high"}, ".cv", ["pareto needs 1e-06 <= cv <= 1e+06, got 'high'"]),
    ({"dist": "pareto", "mean": 1.0, "cv": True}, ".cv", ["pareto needs", "got True"]),
    ({"dist": "hyperexponential", "mean": 1.0, "cv": 0.5}, ".cv", ["hyperexponential needs 1 < cv <= 1e+06, got 0.5"]),
    ({"dist": "hyperexponential", "mean": 1.0, "cv": 1}, ".cv", ["hyperexponential needs 1 < cv"]),
    ({"dist": "uniform", "mean": 1.0, "cv": 0.6}, ".cv", ["uniform needs 1e-06 <= cv <= 1/sqrt(3)"]),
    ({"dist": "exponential", "rate": 1.0, "cv": 0.5}, ".cv", ["exponential has cv fixed at 1; omit cv or give 1, got 0.5"]),
    ({"dist": "deterministic", "mean": 1.0, "cv": 0.1}, ".cv", ["deterministic has cv fixed at 0; omit cv or give 0"]),
    ({"dist": "empirical", "file": "d.csv", "mean": 1.0}, ".mean", ["allowed fields for empirical: dist, file, column, scale"]),
    ({"dist": "empirical"}, ".file", ["required for empirical", "CSV"]),
    ({"dist": "empirical", "file": 3}, ".file", ["must be the path of a CSV file"]),
    ({"dist": "empirical", "file": ""}, ".file", ["must be the path of a CSV file"]),
    ({"dist": "empirical", "file": "d.csv", "column": -1}, ".column", ["header name or a 0-based column index"]),
    ({"dist": "empirical", "file": "d.csv", "column": True}, ".column", ["header name or a 0-based column index"]),
    ({"dist": "empirical", "file": "d.csv", "scale": -2}, ".scale", ["must be a positive number, got -2"]),
]


@pytest.mark.parametrize("spec, field, fragments", BAD_SPECS, ids=[f"{i}{b[1]}" for i, b in enumerate(BAD_SPECS)])
def test_bad_specs_raise_scenario_error_at_the_field(spec, field, fragments):
    expect_error(spec, "clients[1].service" + field, *fragments)


BAD_FILES = [
    # (file content as bytes or None for no file, column, field, fragments)
    (None, None, ".file", ["no such file 'd.csv'", "looked for"]),
    (b"", None, ".file", ["is empty", "positive durations"]),
    (b"\n \n", None, ".file", ["is empty"]),
    (b"seconds\n", None, ".file", ["no durations in column 'seconds'"]),
    (b"seconds\n1.0\nabc\n", None, ".file", ["line 3", "'abc'", "is not a number"]),
    (b"1.0\n-2.0\n", None, ".file", ["line 2", "positive finite", "-2.0"]),
    (b"1.0\n0\n", None, ".file", ["line 2", "positive finite"]),
    (b"1.0\nnan\n", None, ".file", ["line 2", "positive finite"]),
    (b"a,b\n1,2\n3,\n", "b", ".file", ["line 3", "no value in column 'b'"]),
    (b"a,b\n1,2\n3\n", "b", ".file", ["line 3", "no value in column 'b'"]),
    (b"a,b\n1,2\n", "seconds", ".column", ["no column 'seconds'", "'a', 'b'"]),
    (b"1\n2\n", "seconds", ".column", ["no column 'seconds'", "0-based index"]),
    (b"a,b\n1,2\n", 2, ".column", ["index 2 is out of range", "2 column(s)"]),
    (b"\xff\xfe\x00garbage\xff\n", None, ".file", ["cannot read 'd.csv'"]),
]


@pytest.mark.parametrize(
    "content, column, field, fragments", BAD_FILES, ids=[f"{i}{b[2]}" for i, b in enumerate(BAD_FILES)]
)
def test_bad_duration_files_raise_scenario_error(tmp_path, content, column, field, fragments):
    if content is not None:
        (tmp_path / "d.csv").write_bytes(content)
    spec = {"dist": "empirical", "file": "d.csv"}
    if column is not None:
        spec["column"] = column
    expect_error(spec, "clients[1].service" + field, *fragments, base_dir=tmp_path)


def test_a_folder_is_not_a_readable_file(tmp_path):
    (tmp_path / "d.csv").mkdir()
    spec = {"dist": "empirical", "file": "d.csv"}
    expect_error(spec, "clients[1].service.file", "cannot read 'd.csv'", base_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# Empirical durations
# --------------------------------------------------------------------------------------------

DURATIONS = [0.5, 1.25, 1.25, 2.0, 3.5, 7.0, 0.1]


def write_csv(folder: Path, name: str = "durations.csv") -> Path:
    lines = ["client,seconds"] + [f"{i % 3 + 1},{v}" for i, v in enumerate(DURATIONS)]
    path = folder / name
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


def test_empirical_samples_members_of_the_data_with_data_moments(tmp_path):
    write_csv(tmp_path)
    d = make_distribution({"dist": "empirical", "file": "durations.csv", "column": "seconds"}, "c.service", tmp_path)
    assert d.mean == pytest.approx(statistics.fmean(DURATIONS), rel=1e-14)
    assert d.variance == pytest.approx(statistics.pvariance(DURATIONS), rel=1e-12)
    assert d.cv == pytest.approx(statistics.pstdev(DURATIONS) / statistics.fmean(DURATIONS), rel=1e-12)
    x = d.sample(np.random.default_rng(3), N)
    assert x.dtype == np.float64
    assert set(np.unique(x)) <= set(DURATIONS)
    # Each distinct value is drawn with probability (its count)/n: chi-square goodness of fit.
    values, counts = np.unique(DURATIONS, return_counts=True)
    observed = np.array([(x == v).sum() for v in values])
    assert stats.chisquare(observed, N * counts / counts.sum()).pvalue > ALPHA
    assert np.array_equal(x, d.sample(np.random.default_rng(3), N))
    assert d.to_spec() == {"dist": "empirical", "file": "durations.csv", "column": "seconds", "scale": 1.0}
    assert "n=7" in d.describe() and "durations.csv[seconds]" in d.describe()


def test_empirical_default_column_and_headerless_file(tmp_path):
    write_csv(tmp_path)
    first = make_distribution({"dist": "empirical", "file": "durations.csv"}, "s", tmp_path)
    assert first.column == "client"  # the first column, named by its header
    assert first.mean == pytest.approx(statistics.fmean([i % 3 + 1 for i in range(len(DURATIONS))]))
    (tmp_path / "plain.csv").write_text("\ufeff2.0\n4.0\n\n6.0\n", encoding="utf-8")
    plain = make_distribution({"dist": "empirical", "file": "plain.csv"}, "s", tmp_path)
    assert plain.column == 0 and plain.mean == 4.0 and plain.data.size == 3
    by_index = make_distribution({"dist": "empirical", "file": str(tmp_path / "durations.csv"), "column": 1}, "s")
    assert by_index.column == 1 and by_index.mean == pytest.approx(statistics.fmean(DURATIONS))


def test_empirical_default_column_is_the_first_one(tmp_path):
    (tmp_path / "two.csv").write_text("seconds,client\n1.0,7\n3.0,8\n", encoding="utf-8")
    d = make_distribution({"dist": "empirical", "file": "two.csv"}, "s", tmp_path)
    assert d.column == "seconds" and d.mean == 2.0
    assert make_distribution(d.to_spec(), "s", tmp_path) == d


def test_empirical_scale_multiplies_durations_but_not_cv(tmp_path):
    write_csv(tmp_path)
    spec = {"dist": "empirical", "file": "durations.csv", "column": "seconds"}
    base = make_distribution(spec, "s", tmp_path)
    slow = make_distribution({**spec, "scale": 2}, "s", tmp_path)
    assert slow.mean == pytest.approx(2 * base.mean)
    assert slow.cv == pytest.approx(base.cv)
    assert set(np.unique(slow.sample(np.random.default_rng(1), 1000))) <= {2 * v for v in DURATIONS}
    assert slow.to_spec()["scale"] == 2.0


def test_empirical_from_an_array():
    d = Empirical([1.0, 2.0, 3.0])
    assert d.mean == 2.0 and d.file is None
    with pytest.raises(ValueError):
        Empirical([1.0, -2.0])
    with pytest.raises(ValueError):
        Empirical([])


# --------------------------------------------------------------------------------------------
# The registry: a law added in one class
# --------------------------------------------------------------------------------------------


@pytest.fixture
def registry():
    """Yields the registry and removes whatever a test registered in it."""
    before = dict(DISTRIBUTIONS)
    yield DISTRIBUTIONS
    DISTRIBUTIONS.clear()
    DISTRIBUTIONS.update(before)


def test_a_mean_cv_law_registered_by_decorator_is_usable(registry):
    @register_distribution("test_two_point")
    class TwoPoint(MeanCvDistribution):
        """mean (1 - cv) or mean (1 + cv), each with probability 1/2: cv exactly cv, needs cv < 1."""

        cv_max = 1.0 - 1e-9

        def _draw(self, rng, size):
            return self.mean * (1.0 + self.cv * rng.choice([-1.0, 1.0], size))

    assert registry["test_two_point"] is TwoPoint
    d = make_distribution({"dist": "test_two_point", "rate": 0.5, "cv": 0.5}, "clients[2].service")
    assert isinstance(d, TwoPoint) and d.mean == 2.0 and d.describe() == "test_two_point(rate=0.5, cv=0.5)"
    x = d.sample(np.random.default_rng(9), N)
    assert set(np.unique(x)) == {1.0, 3.0}
    assert abs(x.mean() - 2.0) <= Z * 1.0 / math.sqrt(N)
    assert make_distribution(d.to_spec(), "s") == d
    expect_error(
        {"dist": "test_two_point", "mean": 1, "cv": 2}, "clients[2].service.cv", "test_two_point needs 1e-06 <= cv <= 1"
    )
    expect_error({"dist": "nope"}, "clients[2].service.dist", "test_two_point")


def test_a_law_with_its_own_fields_is_usable_and_its_errors_are_located(registry):
    @register_distribution("test_shifted_exponential")
    class ShiftedExponential(ServiceDistribution):
        """shift + Exp(rate)."""

        fields = ("shift", "rate")

        def __init__(self, *, shift=0.0, rate=1.0):
            if not isinstance(shift, (int, float)) or shift < 0:
                raise ScenarioError("shift", f"must be a number >= 0, got {shift!r}")
            self.shift, self._rate = float(shift), float(rate)

        @property
        def mean(self):
            return self.shift + 1.0 / self._rate

        @property
        def variance(self):
            return 1.0 / self._rate**2

        def sample(self, rng, size):
            return self.shift + rng.exponential(1.0 / self._rate, size)

        def to_spec(self):
            return {"dist": self.name, "shift": self.shift, "rate": self._rate}

    d = make_distribution({"dist": "test_shifted_exponential", "shift": 1, "rate": 2}, "clients[0].service")
    assert d.mean == 1.5 and d.cv == pytest.approx(0.5 / 1.5) and d.rate == pytest.approx(1 / 1.5)
    assert d.describe() == "test_shifted_exponential(shift=1, rate=2)"
    assert repr(d) == "ShiftedExponential(shift=1.0, rate=2.0)"
    assert np.all(d.sample(np.random.default_rng(0), 100) >= 1.0)
    expect_error({"dist": "test_shifted_exponential", "shift": -1}, "clients[0].service.shift", "must be a number >= 0")
    expect_error(
        {"dist": "test_shifted_exponential", "mean": 1},
        "clients[0].service.mean",
        "allowed fields for test_shifted_exponential: dist, shift, rate",
    )


def test_register_distribution_refuses_clashes_and_non_laws(registry):
    with pytest.raises(ValueError, match="already registered"):

        @register_distribution("gamma")
        class OtherGamma(Gamma):
            pass

    assert registry["gamma"] is Gamma
    with pytest.raises(TypeError):
        register_distribution("test_not_a_law")(dict)
    with pytest.raises(ValueError):
        register_distribution("Bad Name")
    assert sorted(registry) == BUILTIN
