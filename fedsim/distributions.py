"""Service-time distributions of clients.

A client is a FIFO station; its service time is the (simulated) time it needs to compute one
local update. The law of that time is written in a scenario file as a mapping::

    service: {dist: exponential, rate: 4.0}
    service: {dist: lognormal, mean: 2.0, cv: 1.5}
    service: {dist: empirical, file: durations.csv, column: seconds}
    service: {dist: trace, file: steps.csv}          # replayed in order per client

and turned into a :class:`ServiceDistribution` by :func:`make_distribution`, which is the only
place where such a mapping is checked. Every law is described by the same numbers: ``mean``,
``rate`` (``1 / mean``, the service rate mu of the queueing model), ``variance`` and ``cv``
(coefficient of variation, ``std / mean``), all known without sampling.

Parametric laws are given by exactly one of ``mean`` or ``rate``, plus ``cv`` where the law has
a free shape. ``cv`` is *required* for every law whose shape it sets (uniform, gamma, lognormal,
weibull, pareto, hyperexponential): there is no sensible default spread, so none is guessed.
Where the law fixes ``cv`` (exponential: 1, deterministic: 0) the field may be left out or given
with exactly that value. Free ``cv`` values must lie in ``[CV_MIN, CV_MAX] = [1e-6, 1e6]``
(narrower where the law says so). Below that the law is a constant for all numerical purposes
(use ``deterministic``); the upper bound is one of sanity: every sampler stays finite and
positive up to it (a gamma law with cv 1e6 has shape 1e-12 and nearly all of its mass below
the smallest float64), and no service-time model needs more.

Sampling draws from the ``numpy.random.Generator`` it is given and from nothing else, in whole
vectors, so the same generator state gives the same samples bit for bit. Samples are float64
and strictly positive: the rare draws that underflow to 0 (gamma with a small shape, say) are
raised to the smallest normal float, ``2.2e-308``, which changes no moment in float64.

To add a law, write one class and register it::

    @register_distribution("triangular")
    class Triangular(MeanCvDistribution):
        cv_max = 1 / math.sqrt(6)
        def _set_parameters(self): ...
        def _draw(self, rng, size): ...

A law with other fields subclasses :class:`ServiceDistribution` directly, lists its fields in
``fields`` and takes them as keyword arguments of ``__init__``, raising
:class:`~fedsim.errors.ScenarioError` with a path relative to the spec (``"rate"``); see
:class:`ServiceDistribution`.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

from fedsim.errors import ScenarioError
from fedsim.inputs import MAX_DATA_BYTES, read_text

__all__ = [
    "CV_MAX",
    "CV_MIN",
    "DISTRIBUTIONS",
    "Deterministic",
    "Empirical",
    "Exponential",
    "Gamma",
    "HyperExponential",
    "LogNormal",
    "MeanCvDistribution",
    "Pareto",
    "ReplayDurations",
    "ServiceDistribution",
    "Uniform",
    "Weibull",
    "make_distribution",
    "register_distribution",
]

CV_MIN = 1e-6
"""Smallest free ``cv`` accepted; for less spread use ``dist: deterministic``."""
CV_MAX = 1e6
"""Largest free ``cv`` accepted."""

_TINY = float(np.finfo(np.float64).tiny)  # smallest positive normal float64


# --------------------------------------------------------------------------------------------
# The interface and the registry
# --------------------------------------------------------------------------------------------


class ServiceDistribution(ABC):
    """The law of a client's service times: positive random durations in simulated time.

    Subclasses give :attr:`mean`, :attr:`variance`, :meth:`sample`, :meth:`to_spec` and accept
    the spec fields listed in :attr:`fields` as keyword arguments of ``__init__``; ``rate``,
    ``cv``, :meth:`describe`, ``repr``, equality and hashing follow from those. Invalid
    arguments raise :class:`~fedsim.errors.ScenarioError` whose path is relative to the spec
    (``ScenarioError("rate", "must be a positive number, got -1")``, or ``""`` for the spec as
    a whole); :func:`make_distribution` prefixes it with the spec's own path.
    """

    name: ClassVar[str] = ""
    """The ``dist`` value of the law, set by :func:`register_distribution`."""
    fields: ClassVar[tuple[str, ...]] = ()
    """Spec fields the law accepts besides ``dist``, in the order they are documented."""
    atomic: ClassVar[bool] = False
    """True when the law has atoms (values drawn with positive probability, as a constant or
    measured durations), so that two services can end at the same instant; the engine then
    keeps its durations on a time grid and orders simultaneous events by its tie rule."""

    @property
    @abstractmethod
    def mean(self) -> float:
        """Expected service time E[S]."""

    @property
    @abstractmethod
    def variance(self) -> float:
        """Var[S]."""

    @property
    def rate(self) -> float:
        """Service rate mu = 1 / E[S], as used by the product-form model."""
        return 1.0 / self.mean

    @property
    def cv(self) -> float:
        """Coefficient of variation sqrt(Var[S]) / E[S]."""
        return math.sqrt(self.variance) / self.mean

    @abstractmethod
    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent service times drawn from ``rng``: float64, shape ``(size,)``."""

    @abstractmethod
    def to_spec(self) -> dict[str, Any]:
        """The normalised spec, defaults included, as it would be written in a scenario file.

        ``make_distribution(d.to_spec(), path)`` builds a law equal to ``d``.
        """

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], base_dir: Path | None) -> Self:
        """Build the law from the spec's fields (``dist`` removed, names already checked).

        ``base_dir`` is the folder relative file names are read from; the default passes the
        fields to ``__init__`` and ignores it.
        """
        return cls(**params)

    def describe(self) -> str:
        """Short readable form, e.g. ``lognormal(mean=2, cv=1.5)``."""
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in self.to_spec().items() if k != "dist")
        return f"{self.name}({params})"

    def _identity(self) -> tuple[Any, ...]:
        return tuple(self.to_spec().items())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.to_spec().items() if k != "dist")
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._identity() == other._identity()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._identity()))


DISTRIBUTIONS: dict[str, type[ServiceDistribution]] = {}
"""Registered laws by their ``dist`` name."""

_D = TypeVar("_D", bound=type[ServiceDistribution])
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def register_distribution(name: str) -> Callable[[_D], _D]:
    """Class decorator: make the law usable as ``dist: <name>`` in scenario files.

    ``name`` is lower case (``[a-z][a-z0-9_]*``). Registering a second class under a taken
    name raises ``ValueError``; remove the old entry from :data:`DISTRIBUTIONS` first if a
    law is really meant to be replaced.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"distribution name must match [a-z][a-z0-9_]*, got {name!r}")

    def decorator(cls: _D) -> _D:
        if not (isinstance(cls, type) and issubclass(cls, ServiceDistribution)):
            raise TypeError(f"@register_distribution needs a ServiceDistribution subclass, got {cls!r}")
        if "dist" in cls.fields:
            raise ValueError(f"{cls.__qualname__}.fields must not contain 'dist'")
        old = DISTRIBUTIONS.get(name)
        # The same class defined again (a module reload) may take its own name back.
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"distribution {name!r} is already registered to {old.__qualname__}")
        cls.name = name
        DISTRIBUTIONS[name] = cls
        return cls

    return decorator


def make_distribution(
    spec: Mapping[str, Any], path: str, base_dir: Path | None = None
) -> ServiceDistribution:
    """Check a service spec from a scenario file and build its law.

    ``path`` locates the spec in the scenario (``clients[1].service``) and prefixes the path of
    every :class:`~fedsim.errors.ScenarioError` raised; ``base_dir`` is the folder relative file
    names (``empirical``'s ``file``) are resolved against, normally the scenario file's folder
    (the working directory when ``None``).
    """
    allowed = ", ".join(sorted(DISTRIBUTIONS))
    if not isinstance(spec, Mapping):
        raise ScenarioError(
            path,
            f"must be a mapping such as {{dist: exponential, rate: 1.0}}, got {_show(spec)}; "
            f"dist is one of: {allowed}",
        )
    if "dist" not in spec:
        raise ScenarioError(_join(path, "dist"), f"missing; allowed: {allowed}")
    name = spec["dist"]
    cls = DISTRIBUTIONS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ScenarioError(_join(path, "dist"), f"unknown distribution {_show(name)}; allowed: {allowed}")
    for key in spec:
        if key != "dist" and key not in cls.fields:
            raise ScenarioError(
                _join(path, str(key)),
                f"unknown field; allowed fields for {name}: {', '.join(('dist', *cls.fields))}",
            )
    params = {key: value for key, value in spec.items() if key != "dist"}
    try:
        law = cls.from_spec(params, base_dir)
    except ScenarioError as err:
        raise ScenarioError(_join(path, err.path), err.message) from None
    except ValueError as err:  # a user-registered law that raises a plain ValueError
        raise ScenarioError(path, f"invalid {name} spec: {err}") from None
    with np.errstate(all="ignore"):
        mean, variance = float(law.mean), float(law.variance)
        usable = math.isfinite(mean) and mean > 0.0 and math.isfinite(1.0 / mean) and math.isfinite(variance)
    if not usable:
        raise ScenarioError(path, f"{name} law out of the range of float64 arithmetic (mean {mean:.6g}, variance "
                            f"{variance:.6g}); express the durations in another unit")
    return law


# --------------------------------------------------------------------------------------------
# Checking values
# --------------------------------------------------------------------------------------------


def _join(path: str, field: str) -> str:
    if not field:
        return path
    return f"{path}.{field}" if path else field


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _yaml_float(x: float) -> str:
    """``x`` written so that PyYAML (YAML 1.1) reads it back as a float, not a string."""
    text = repr(x)
    if "e" in text and "." not in text:  # '1e-05' is a string to YAML 1.1, '1.0e-05' a float
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _show(value: Any) -> str:
    """A user value as it should appear in an error message."""
    if value is None:
        return "null"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return repr(value)
        if math.isfinite(number):
            return f"the string {value!r} (write it as a plain number, e.g. {_yaml_float(number)})"
        return repr(value)
    return repr(value)


def _real(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` if it is not a finite real number (bools are not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _positive(value: Any, field: str) -> float:
    x = _real(value)
    if x is None or x <= 0.0:
        raise ScenarioError(field, f"must be a positive number, got {_show(value)}")
    return x


# --------------------------------------------------------------------------------------------
# Laws given by mean (or rate) and cv
# --------------------------------------------------------------------------------------------


class MeanCvDistribution(ServiceDistribution):
    """A parametric law set by its mean (or rate) and its coefficient of variation.

    Spec fields: exactly one of ``mean`` (> 0) or ``rate`` (> 0, ``mean = 1 / rate``), and
    ``cv``. When :attr:`fixed_cv` is set the law has no free shape: ``cv`` may be omitted or
    given as exactly that value. Otherwise ``cv`` is required and must lie between
    :attr:`cv_min` (excluded when :attr:`cv_min_open`) and :attr:`cv_max`. Whichever of mean
    and rate was given is kept exactly and written back by :meth:`to_spec`.

    Subclasses set the law's own parameters in :meth:`_set_parameters` (``self.mean`` and
    ``self.cv`` are known by then) and draw in :meth:`_draw`.
    """

    fields: ClassVar[tuple[str, ...]] = ("mean", "rate", "cv")
    fixed_cv: ClassVar[float | None] = None
    cv_min: ClassVar[float] = CV_MIN
    cv_min_open: ClassVar[bool] = False
    cv_max: ClassVar[float] = CV_MAX
    cv_max_label: ClassVar[str | None] = None  # how cv_max is written in messages

    def __init__(
        self, *, mean: float | None = None, rate: float | None = None, cv: float | None = None
    ) -> None:
        if mean is not None and rate is not None:
            raise ScenarioError("", "give exactly one of mean or rate, not both")
        if mean is None and rate is None:
            raise ScenarioError("", f"missing mean or rate; give exactly one of them{self._cv_hint()}")
        if rate is not None:
            self._rate: float | None = _positive(rate, "rate")
            self._mean = 1.0 / self._rate
            if not math.isfinite(self._mean):
                raise ScenarioError(
                    "rate", f"must be a positive number whose inverse is finite, got {rate!r}"
                )
        else:
            self._rate = None
            self._mean = _positive(mean, "mean")
        self._cv = self._check_cv(cv)
        self._set_parameters()

    @classmethod
    def cv_range(cls) -> str:
        """The allowed ``cv`` in words, e.g. ``1 < cv <= 1e+06``."""
        if cls.fixed_cv is not None:
            return f"cv = {cls.fixed_cv:g}"
        low = "<" if cls.cv_min_open else "<="
        high = cls.cv_max_label or f"{cls.cv_max:g}"
        return f"{cls.cv_min:g} {low} cv <= {high}"

    def _cv_hint(self) -> str:
        return "" if self.fixed_cv is not None else f", and cv ({self.cv_range()})"

    def _check_cv(self, cv: Any) -> float:
        if self.fixed_cv is not None:
            if cv is not None and _real(cv) != self.fixed_cv:
                fixed = f"{self.fixed_cv:g}"
                raise ScenarioError(
                    "cv", f"{self.name} has cv fixed at {fixed}; omit cv or give {fixed}, got {_show(cv)}"
                )
            return float(self.fixed_cv)
        if cv is None:
            raise ScenarioError("cv", f"required for {self.name}; give {self.cv_range()}")
        x = _real(cv)
        if x is None or not (
            (x > self.cv_min if self.cv_min_open else x >= self.cv_min) and x <= self.cv_max
        ):
            extra = " (for cv 0 use dist: deterministic)" if x == 0.0 else ""
            raise ScenarioError("cv", f"{self.name} needs {self.cv_range()}, got {_show(cv)}{extra}")
        return x

    def _set_parameters(self) -> None:
        """Compute the law's own parameters from ``self.mean`` and ``self.cv``."""

    @abstractmethod
    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` raw draws (float64) from the law."""

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def rate(self) -> float:
        return self._rate if self._rate is not None else 1.0 / self._mean

    @property
    def cv(self) -> float:
        return self._cv

    @property
    def variance(self) -> float:
        return (self._mean * self._cv) ** 2

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        x = np.asarray(self._draw(rng, int(size)), dtype=np.float64)
        return np.maximum(x, _TINY, out=x)

    def _given(self) -> tuple[str, float]:
        return ("rate", self._rate) if self._rate is not None else ("mean", self._mean)

    def to_spec(self) -> dict[str, Any]:
        key, value = self._given()
        return {"dist": self.name, key: value, "cv": self._cv}

    def _shown_params(self) -> dict[str, float]:
        key, value = self._given()
        return {key: value} if self.fixed_cv is not None else {key: value, "cv": self._cv}

    def describe(self) -> str:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in self._shown_params().items())
        return f"{self.name}({params})"

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._shown_params().items())
        return f"{type(self).__name__}({params})"


@register_distribution("deterministic")
class Deterministic(MeanCvDistribution):
    """Every service takes exactly ``mean``: the D in M/D/1. ``cv`` is 0 (optional, only 0).

    ``sample`` returns ``mean`` itself, never a perturbed value.
    """

    fixed_cv = 0.0
    atomic = True

    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.full(size, self.mean, dtype=np.float64)


@register_distribution("exponential")
class Exponential(MeanCvDistribution):
    """Exponential law with rate mu = 1 / mean: density mu exp(-mu x). ``cv`` is 1 (optional, only 1).

    Memoryless; the law under which the closed network has the product form solved in
    :mod:`fedsim.analytic`. Drawn with ``rng.exponential(mean)``.
    """

    fixed_cv = 1.0

    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.exponential(self.mean, size)


@register_distribution("uniform")
class Uniform(MeanCvDistribution):
    """Uniform law on ``[low, high]``, symmetric around the mean. ``cv`` required.

    A uniform law of half-width h has standard deviation h / sqrt(3), so
    ``h = sqrt(3) cv mean``, ``low = mean - h``, ``high = mean + h``. Durations stay
    non-negative only for ``cv <= 1/sqrt(3)``, the upper bound accepted (where ``low = 0``;
    a draw of exactly 0 is raised to the smallest positive float).
    """

    cv_max = 1.0 / math.sqrt(3.0)
    cv_max_label = "1/sqrt(3) = 0.57735..."

    def _set_parameters(self) -> None:
        half = math.sqrt(3.0) * self.cv * self.mean
        self.low = max(self.mean - half, 0.0)
        self.high = self.mean + half

    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, size)


@register_distribution("gamma")
class Gamma(MeanCvDistribution):
    """Gamma law with shape k and scale theta: density x^(k-1) exp(-x/theta) / (Gamma(k) theta^k).

    Mean k theta and cv 1/sqrt(k), hence ``shape = 1 / cv**2`` and ``scale = mean cv**2``.
    ``cv = 1`` is the exponential law, ``cv = 1/sqrt(n)`` the Erlang-n law. ``cv`` required.
    """

    def _set_parameters(self) -> None:
        self.shape = 1.0 / self.cv**2
        self.scale = self.mean * self.cv**2

    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.gamma(self.shape, self.scale, size)


@register_distribution("lognormal")
class LogNormal(MeanCvDistribution):
    """Log-normal law: log S ~ Normal(mu, sigma^2). ``cv`` required.

    E[S] = exp(mu + sigma^2/2) and cv^2 = exp(sigma^2) - 1, hence
    ``sigma = sqrt(log(1 + cv**2))`` and ``mu = log(mean) - sigma**2 / 2``.
    """

    def _set_parameters(self) -> None:
        sigma2 = math.log1p(self.cv**2)
        self.sigma = math.sqrt(sigma2)
        self.mu = math.log(self.mean) - sigma2 / 2.0

    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.lognormal(self.mu, self.sigma, size)


# Weibull: 1 + cv^2 = Gamma(1 + 2/k) / Gamma(1 + 1/k)^2. With x = 1/k the equation is
# g(x) = lnGamma(1 + 2x) - 2 lnGamma(1 + x) = log(1 + cv^2). For small x (small cv) the two
# lnGamma terms cancel to first order, so g is summed from the series
# lnGamma(1 + z) = -gamma z + sum_{n>=2} (-1)^n zeta(n) z^n / n, which gives
# g(x) = sum_{n>=2} (-1)^n zeta(n) (2^n - 2) / n x^n = (pi^2/6) x^2 (1 + sum_{n>=3} a_n x^(n-2)).
_WEIBULL_C2 = math.pi**2 / 6.0
_WEIBULL_SERIES_X = 0.05  # below it the series; at it, terms shrink by ~(2x) = 0.1 each
_WEIBULL_A = [
    (-1) ** n * float(special.zeta(n)) * (2.0**n - 2.0) / n / _WEIBULL_C2 for n in range(3, 26)
]


def _weibull_log_g(t: float) -> float:
    """log g(x) at x = exp(t), accurate to a few ulps for every x in (0, 150]."""
    x = math.exp(t)
    if x < _WEIBULL_SERIES_X:
        tail = 0.0
        for a in reversed(_WEIBULL_A):  # Horner: sum_{n>=3} a_n x^(n-2)
            tail = (tail + a) * x
        return math.log(_WEIBULL_C2) + 2.0 * t + math.log1p(tail)
    return math.log(special.gammaln(1.0 + 2.0 * x) - 2.0 * special.gammaln(1.0 + x))


def _weibull_shape(cv: float) -> float:
    """The Weibull shape k whose cv is ``cv``, solved by Brent's method on t = log(1/k)."""
    target = math.log(math.log1p(cv * cv))
    # g is increasing; t in [-30, 5] means k in [0.0067, 1.1e13], cv from ~1e-13 to ~1e43.
    t = optimize.brentq(
        lambda s: _weibull_log_g(s) - target, -30.0, 5.0, xtol=1e-15, rtol=4 * np.finfo(float).eps
    )
    return math.exp(-t)


@register_distribution("weibull")
class Weibull(MeanCvDistribution):
    """Weibull law with shape k and scale lambda: P(S > x) = exp(-(x/lambda)^k). ``cv`` required.

    E[S] = lambda Gamma(1 + 1/k) and 1 + cv^2 = Gamma(1 + 2/k) / Gamma(1 + 1/k)^2. The shape
    is the root of the second equation (``scipy.optimize.brentq`` on log(1/k), with the
    lnGamma difference summed from its series for small 1/k so that small cv keeps full
    precision); then ``scale = mean / Gamma(1 + 1/k)``. k < 1 for cv > 1 (heavier than
    exponential), k = 1 at cv = 1, k ~ pi / (sqrt(6) cv) as cv -> 0.
    """

    def _set_parameters(self) -> None:
        self.shape = _weibull_shape(self.cv)
        self.scale = self.mean * math.exp(-special.gammaln(1.0 + 1.0 / self.shape))

    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.scale * rng.weibull(self.shape, size)


@register_distribution("pareto")
class Pareto(MeanCvDistribution):
    """Classic (type I) Pareto law with scale x_m and shape a: P(S > x) = (x_m / x)^a for x >= x_m.

    E[S] = a x_m / (a - 1) and cv^2 = 1 / (a (a - 2)), finite for a > 2; hence
    ``shape = a = 1 + sqrt(1 + 1/cv**2)`` (always > 2) and ``scale = x_m = mean (a - 1) / a``.
    Moments of order a and above are infinite, so for large cv (a close to 2) sample
    variances converge very slowly. Drawn as ``x_m (1 + rng.pareto(a))`` (numpy's
    ``pareto`` is the Lomax law, a classic Pareto shifted to start at 0). ``cv`` required.
    """

    def _set_parameters(self) -> None:
        self.shape = 1.0 + math.sqrt(1.0 + 1.0 / self.cv**2)
        self.scale = self.mean * (self.shape - 1.0) / self.shape

    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.scale * (1.0 + rng.pareto(self.shape, size))


@register_distribution("hyperexponential")
class HyperExponential(MeanCvDistribution):
    """Two-phase hyperexponential law with balanced means: with probability p_i, Exp(mu_i).

    Balanced means (p_1/mu_1 = p_2/mu_2 = mean/2) fix the two phases from mean and cv > 1:
    ``p_1 = (1 + sqrt((cv^2 - 1) / (cv^2 + 1))) / 2``, ``p_2 = 1 - p_1``,
    ``mu_i = 2 p_i / mean``. Then E[S^2] = mean^2 / (2 p_1 p_2) = (1 + cv^2) mean^2.
    p_2 is computed as ``1 / ((cv^2 + 1)(1 + sqrt(...)))``, the same number without the
    cancellation of ``1 - p_1`` at large cv. ``cv`` required, > 1.
    """

    cv_min = 1.0
    cv_min_open = True

    def _set_parameters(self) -> None:
        c2 = self.cv**2
        root = math.sqrt((c2 - 1.0) / (c2 + 1.0))
        p2 = 1.0 / ((c2 + 1.0) * (1.0 + root))
        self.probabilities = (1.0 - p2, p2)
        self.rates = (2.0 * (1.0 - p2) / self.mean, 2.0 * p2 / self.mean)

    def _draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        first = rng.random(size) < self.probabilities[0]
        phase_mean = np.where(first, 1.0 / self.rates[0], 1.0 / self.rates[1])
        return rng.standard_exponential(size) * phase_mean


# --------------------------------------------------------------------------------------------
# Measured durations
# --------------------------------------------------------------------------------------------


@register_distribution("empirical")
class Empirical(ServiceDistribution):
    """Measured durations, resampled with replacement (each value with probability 1/n).

    Spec fields:

    - ``file`` (required): a CSV file (comma-separated, UTF-8), relative to the scenario
      file's folder unless absolute. Blank lines are skipped.
    - ``column`` (optional): a header name, or a 0-based column index. Default: the first
      column. The first row is a header when its cell in that column is not a number; a
      headerless file (e.g. one number per line) needs no ``column``, or an index.
    - ``scale`` (optional, default 1.0): every duration is multiplied by it, to reuse one
      measured trace for a faster or slower client. ``mean`` scales by it, ``cv`` does not.

    ``mean``, ``rate`` and ``cv`` are not accepted: they come from the data. Every duration
    must be a positive finite number. The law *is* the empirical distribution of the n values,
    so ``mean`` is their average and ``variance`` their population variance (divisor n), times
    ``scale`` and ``scale**2``. ``to_spec`` gives ``file`` as written in the scenario and the
    column actually read (its header name, or its index in a headerless file).

    ``Empirical(data)`` builds the law from an array in Python; it then has no ``file`` and its
    ``to_spec`` (``file: None``) cannot be loaded back.
    """

    fields: ClassVar[tuple[str, ...]] = ("file", "column", "scale")
    atomic = True

    def __init__(
        self,
        data: ArrayLike,
        *,
        scale: float = 1.0,
        file: str | None = None,
        column: str | int | None = None,
    ) -> None:
        values = np.array(data, dtype=np.float64).reshape(-1)
        if values.size == 0 or not np.all(np.isfinite(values) & (values > 0.0)):
            raise ValueError("empirical data must be a non-empty array of positive finite durations")
        values.setflags(write=False)
        self.data = values
        self.scale = _positive(scale, "scale")
        self.file = file
        self.column = column

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], base_dir: Path | None) -> Self:
        file = params.get("file")
        if file is None:
            raise ScenarioError("file", "required for empirical: a CSV file of durations")
        if not isinstance(file, str) or not file.strip():
            raise ScenarioError("file", f"must be the path of a CSV file of durations, got {_show(file)}")
        column = params.get("column")
        if column is not None and not (
            (isinstance(column, str) and column.strip())
            or (isinstance(column, int) and not isinstance(column, bool) and column >= 0)
        ):
            raise ScenarioError(
                "column", f"must be a header name or a 0-based column index, got {_show(column)}"
            )
        scale = _positive(params.get("scale", 1.0), "scale")
        location = Path(file).expanduser()
        if not location.is_absolute() and base_dir is not None:
            location = Path(base_dir) / location
        data, column_read = _read_durations(location, file, column)
        return cls(data, scale=scale, file=file, column=column_read)

    @property
    def mean(self) -> float:
        return self.scale * float(np.mean(self.data))

    @property
    def variance(self) -> float:
        return self.scale**2 * float(np.var(self.data))

    @property
    def cv(self) -> float:
        return float(np.std(self.data) / np.mean(self.data))

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        picks = self.data[rng.integers(0, self.data.size, int(size))]
        return picks * self.scale if self.scale != 1.0 else picks

    def to_spec(self) -> dict[str, Any]:
        return {"dist": self.name, "file": self.file, "column": self.column, "scale": self.scale}

    def describe(self) -> str:
        source = "data" if self.file is None else self.file
        if self.column is not None:
            source += f"[{self.column}]"
        scale = f", scale={_fmt(self.scale)}" if self.scale != 1.0 else ""
        return f"{self.name}({source}, n={self.data.size}{scale}, mean={_fmt(self.mean)}, cv={_fmt(self.cv)})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(file={self.file!r}, column={self.column!r}, "
            f"scale={self.scale!r}, n={self.data.size})"
        )

    def _identity(self) -> tuple[Any, ...]:
        return (self.file, self.column, self.scale, self.data.tobytes())


@register_distribution("trace")
class ReplayDurations(ServiceDistribution):
    """Per-device compute durations from a trace, replayed in order (``dist: trace``).

    Spec field ``file`` (required): a ``client,duration`` CSV file (:mod:`fedsim.traces`), relative
    to the scenario file's folder. In the simulation client k of the group replays device
    ``k mod L``'s durations in order, cyclically (:meth:`sequence`); its mean service time is
    the mean of that sequence (:meth:`client_means`). As a law (``mean``, ``variance``,
    ``sample``) it is the pooled empirical distribution of every duration in the file, each
    device weighted by its number of rows.
    """

    fields: ClassVar[tuple[str, ...]] = ("file",)
    atomic = True

    def __init__(self, file: str, labels: tuple[str, ...], sequences: list[np.ndarray]) -> None:
        self.file = file
        self.labels = labels
        self.sequences = sequences
        self.data = np.concatenate(sequences)

    @classmethod
    def from_spec(cls, params: Mapping[str, Any], base_dir: Path | None) -> Self:
        if "file" not in params:
            raise ScenarioError("file", "required for trace: a client,duration CSV file")
        from fedsim.traces import by_label, read_columns

        labels, values, lines = read_columns(params["file"], "file", base_dir, ("duration",))
        duration = np.array(values["duration"])
        bad = np.flatnonzero(duration <= 0)
        if bad.size:
            raise ScenarioError("file", f"{params['file']!r} line {lines[bad[0]]}: durations must be positive, "
                                f"got {duration[bad[0]]:g}")
        names, rows = by_label(labels)
        return cls(params["file"], names, [duration[r] for r in rows])

    def sequence(self, k: int) -> np.ndarray:
        """The durations client k of the group replays, in order."""
        return self.sequences[k % len(self.labels)]

    def client_means(self, count: int) -> np.ndarray:
        """Mean service time of each of the group's ``count`` clients."""
        return np.array([self.sequence(k).mean() for k in range(count)])

    @property
    def mean(self) -> float:
        return float(self.data.mean())

    @property
    def variance(self) -> float:
        return float(self.data.var())

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.data[rng.integers(0, self.data.size, int(size))]

    def to_spec(self) -> dict[str, Any]:
        return {"dist": self.name, "file": self.file}

    def describe(self) -> str:
        return f"trace({self.file}, {len(self.labels)} devices, mean={self.mean:.6g})"

    def _identity(self) -> tuple[Any, ...]:
        return (self.file, self.labels, tuple(s.tobytes() for s in self.sequences))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_durations(location: Path, shown: str, column: str | int | None) -> tuple[np.ndarray, str | int]:
    """Durations from one column of a CSV file, and the column read (header name or index).

    Raises ScenarioError on path ``file`` (or ``column`` for a column that does not exist),
    naming the line of the first bad value.
    """
    if not os.path.lexists(location):
        same = location.is_absolute() and str(location) == shown
        where = "" if same else f" (looked for {location.absolute()})"
        raise ScenarioError("file", f"no such file {shown!r}{where}")
    text = read_text(location, "file", repr(shown), MAX_DATA_BYTES)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as err:
        raise ScenarioError("file", f"cannot read {shown!r} as a CSV file: {err}") from None
    if not rows:
        raise ScenarioError("file", f"{shown!r} is empty; expected a CSV column of positive durations")

    first_line, first = rows[0]
    if isinstance(column, str):
        header = [cell.strip() for cell in first]
        if column.strip() not in header:
            columns = ", ".join(repr(h) for h in header)
            hint = "; a headerless file takes a 0-based index" if all(_is_number(h) for h in header) else ""
            raise ScenarioError(
                "column", f"no column {column!r} in {shown!r}; its first row is {columns}{hint}"
            )
        index, body, column_read = header.index(column.strip()), rows[1:], column.strip()
    else:
        index = 0 if column is None else column
        if index >= len(first):
            raise ScenarioError(
                "column",
                f"index {index} is out of range: line {first_line} of {shown!r} has {len(first)} column(s)",
            )
        cell = first[index].strip()
        if _is_number(cell):
            body, column_read = rows, index
        else:
            body, column_read = rows[1:], (cell if column is None else index)
    label = f"column {column_read!r}"

    values = np.empty(len(body), dtype=np.float64)
    for i, (line, row) in enumerate(body):
        cell = row[index].strip() if index < len(row) else ""
        if not cell:
            raise ScenarioError("file", f"{shown!r} line {line}: no value in {label}")
        try:
            value = float(cell)
        except ValueError:
            raise ScenarioError(
                "file", f"{shown!r} line {line}: {cell!r} in {label} is not a number"
            ) from None
        if not (math.isfinite(value) and value > 0.0):
            raise ScenarioError(
                "file", f"{shown!r} line {line}: durations must be positive finite numbers, got {cell}"
            )
        values[i] = value
    if values.size == 0:
        raise ScenarioError("file", f"{shown!r} has no durations in {label}, only a header")
    return values, column_read
