"""Output analysis of one run: where the warm-up ends, batch means that test themselves, ratio intervals.

Pure functions of batch sums; :mod:`fedsim.tracking` gathers the sums while the run streams.
The procedures and their references are described in docs/statistics.md.

Warm-up: MSER (White 1997; White, Cobb & Spratt 2000), the truncation rule that Hoad,
Robinson & Davies (2010) recommend for automated warm-up detection. For batch means
z_1..z_m (of 5 observations in MSER-5), deleting the first d of them leaves the statistic

    MSER(d) = sum_{j>d} (z_j - zbar_d)^2 / (m - d)^2,      zbar_d = mean of z_{d+1..m},

the squared standard error of the truncated mean, corrected for the data it throws away;
the truncation point is its minimiser d*. A minimiser in the second half of the data means
the series has not settled within the run (the run is shorter than its transient).

Stationarity after truncation: MSER cannot see a transient that lasts the whole run (a smooth
trend buried in noise looks stationary to it), so the truncated series is tested as in
Heidelberger & Welch (1983), after Schruben (1982): under stationarity the standardised
partial sums B(t) = S(floor(m t)) / (sigma sqrt(m)), S(k) = sum_{j<=k} (z_j - zbar), form a
Brownian bridge, and their Cramer-von Mises statistic W^2 = (1/m) sum_k B(k/m)^2 exceeds the
bridge's quantile (Anderson & Darling 1952) with the test's level; sigma^2 (the variance
parameter, m Var(zbar)) is estimated by batch means on the last half of the run, the part
least touched by the transient, with successive differences (von Neumann 1941) so that a
trend does not pass for noise. When the test rejects, a further tenth of the run is
deleted and the test repeated, up to half the run.

Batch means: the von Neumann ratio test (von Neumann 1941; Young 1941) of independence of k
batch means x_1..x_k,

    C = 1 - sum_{j<k} (x_{j+1} - x_j)^2 / (2 sum_j (x_j - xbar)^2),

which is about N(0, (k - 2) / (k^2 - 1)) for independent batch means and positive when
successive means are positively correlated (one-sided test). The batch-size search that
uses it follows the spirit of LBatch (Fishman & Yarberry 1997) and ASAP3/Skart (Steiger et
al. 2005; Tafazzoli & Wilson 2011): the batch size doubles until the test passes.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri, stdtrit  # quantiles without importing scipy.stats (slow to import)

MSER_MIN_TAIL = 10  # MSER(d) is evaluated while at least this many batch means remain
# upper quantiles of the Cramer-von Mises statistic of a Brownian bridge (Anderson & Darling 1952)
CVM_QUANTILES = {0.90: 0.347, 0.95: 0.461, 0.975: 0.581, 0.99: 0.743}
VARIANCE_BATCHES = 20  # batch means of the last half that estimate the variance parameter


def mser_truncation(z: np.ndarray, min_tail: int = MSER_MIN_TAIL) -> int:
    """The MSER truncation point d* (a number of leading batch means to delete) of series ``z``.

    MSER(d) (module docstring) is minimised over d = 0 .. m - min_tail; requires
    m >= min_tail. Cumulative sums from the end give every MSER(d) in O(m).
    """
    z = np.asarray(z, dtype=float)
    m = len(z)
    if m < min_tail:
        raise ValueError(f"MSER needs at least {min_tail} batch means, got {m}")
    z = z - z.mean()  # centring leaves MSER unchanged and keeps the sums of squares accurate
    s1 = np.cumsum(z[::-1])[::-1]
    s2 = np.cumsum((z * z)[::-1])[::-1]
    left = m - np.arange(m)
    mser = (s2 - s1 * s1 / left) / left**2
    return int(np.argmin(mser[: m - min_tail + 1]))


def stationarity_statistic(z: np.ndarray, sigma2: float) -> float:
    """Cramer-von Mises statistic W^2 of the standardised partial sums of ``z`` (Schruben
    1982; Heidelberger & Welch 1983); ``sigma2`` is the variance parameter lim m Var(zbar)."""
    z = np.asarray(z, dtype=float)
    m = len(z)
    bridge = np.cumsum(z - z.mean()) / np.sqrt(sigma2 * m)
    return float(np.mean(bridge**2))


def variance_parameter(z: np.ndarray, batches: int = VARIANCE_BATCHES) -> float:
    """Estimate of lim m Var(zbar) from ``z``: h times the variance of the means B_1..B_k of
    k = ``batches`` batches of h = floor(m / k) consecutive values, the variance taken as von
    Neumann's mean square successive difference sum_j (B_{j+1} - B_j)^2 / (2 (k - 1)), which a
    trend left in ``z`` hardly inflates (the usual sample variance would absorb the trend
    and blunt the stationarity test)."""
    h = len(z) // batches
    means = np.asarray(z[: h * batches], dtype=float).reshape(batches, h).mean(axis=1)
    return float(h * np.sum(np.diff(means) ** 2) / (2 * (batches - 1)))


def stationary_start(z: np.ndarray, start: int, level: float) -> tuple[int | None, float]:
    """The Heidelberger-Welch search from truncation point ``start``: the first of start,
    start + m/10, start + 2m/10, ... (up to m/2) from which ``z`` passes the stationarity test
    at ``level``, and the last statistic computed; None when every one fails.

    The variance parameter is estimated once, on the last half of ``z``. Needs
    len(z) >= 2 * VARIANCE_BATCHES.
    """
    m = len(z)
    sigma2 = variance_parameter(z[m - m // 2:])
    critical = CVM_QUANTILES[round(1.0 - level, 3)]
    statistic = float("nan")
    for d in range(start, m // 2 + 1, max(1, m // 10)):
        statistic = stationarity_statistic(z[d:], sigma2) if sigma2 > 0 else 0.0
        if statistic <= critical:
            return d, statistic
    return None, statistic


def von_neumann_z(sq_dev: np.ndarray, sq_diff: np.ndarray, k: int) -> np.ndarray:
    """Standardised von Neumann statistics C / sqrt((k - 2) / (k^2 - 1)) from the sums.

    ``sq_dev`` = sum_j (x_j - xbar)^2 and ``sq_diff`` = sum_{j<k} (x_{j+1} - x_j)^2 of series of
    k batch means (arrays: one entry per series). About N(0, 1) under independence; large
    positive values mean positively correlated successive means. nan where sq_dev = 0.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        c = 1.0 - np.asarray(sq_diff, dtype=float) / (2.0 * np.asarray(sq_dev, dtype=float))
    c = np.where(np.asarray(sq_dev) > 0, c, np.nan)
    return c / np.sqrt((k - 2) / (k * k - 1.0))


def von_neumann_critical(level: float, series: int) -> float:
    """One-sided critical value of the standardised statistic: Bonferroni over ``series`` tests,
    so that all pass together with probability at least ``1 - level`` under independence."""
    return float(ndtri(1.0 - level / max(series, 1)))


def ratio_ci(y: np.ndarray, x: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Batch-means ratio estimate sum(y)/sum(x) and its CI half-width along axis 0.

    ``y`` and ``x`` hold one row per batch. With R = sum_b y_b / sum_b x_b over k batches,
    SE(R) = sqrt(sum_b (y_b - R x_b)^2 / (k (k - 1))) / mean_b(x_b) (the delta method for a
    ratio) and the half-width is t_{k-1, (1+level)/2} SE(R). Returns (R, half-width); nan
    where sum(x) = 0 or fewer than two batches.
    """
    k = y.shape[0]
    sx = x.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = y.sum(axis=0) / sx
        if k < 2:
            return r, np.full_like(r, np.nan, dtype=float)
        resid = y - r * x
        se = np.sqrt((resid**2).sum(axis=0) / (k * (k - 1))) / (sx / k)
    return r, stdtrit(k - 1, 0.5 + level / 2) * se
