"""Quantiles of integer staleness with a relative-error guarantee: logarithmic buckets.

A value s < EXACT_BELOW (128) has a bucket of its own (quantiles there are exact). A value
s >= 128 goes to bucket 128 + floor(32 log2(s / 128)): the buckets above 128 are the real
intervals [L, L gamma) with gamma = 2^(1/32), and a bucket is reported by the value
2 L U / (L + U) (U = L gamma), which lies within a relative

    ALPHA = (gamma - 1) / (gamma + 1) = 1.08%

of every point of the bucket. Counts per bucket are exact, so the bucket holding the
q-quantile is the exact one, and a reported quantile q' satisfies |q' - q| <= ALPHA q, where
q is the exact inverted-CDF quantile (the smallest s with P(S <= s) >= q). This is the
mapping of DDSketch (Masson, Rim & Lee 2019, "DDSketch: a fast and fully-mergeable quantile
sketch with relative-error guarantees", PVLDB 12(12)), with exact buckets at the bottom.
Sketches of two sets of values merge by adding their counts bucket by bucket; a client's
sketch has at most ``bucket_of(largest staleness) + 1`` buckets (161 up to 256, 417 up to
65,536), whatever the number of updates.
"""

from __future__ import annotations

import numpy as np

EXACT_BELOW = 128
BUCKETS_PER_OCTAVE = 32
GAMMA = 2.0 ** (1.0 / BUCKETS_PER_OCTAVE)
ALPHA = (GAMMA - 1.0) / (GAMMA + 1.0)
BUCKETS = EXACT_BELOW + BUCKETS_PER_OCTAVE * 56  # every staleness below 2^63


def bucket_of(s: np.ndarray) -> np.ndarray:
    """Bucket index of every non-negative integer value in ``s``."""
    s = np.asarray(s, dtype=np.int64)
    out = s.copy()
    big = s >= EXACT_BELOW
    if big.any():
        octaves = np.log2(s[big] / EXACT_BELOW)
        out[big] = EXACT_BELOW + np.floor(BUCKETS_PER_OCTAVE * octaves).astype(np.int64)
    return out


def bucket_value(b: np.ndarray) -> np.ndarray:
    """The value reported for bucket ``b``: itself below 128, else 2 L U / (L + U)."""
    b = np.asarray(b, dtype=np.int64)
    lower = EXACT_BELOW * GAMMA ** ((b - EXACT_BELOW).astype(float))
    return np.where(b < EXACT_BELOW, b.astype(float), 2.0 * GAMMA / (1.0 + GAMMA) * lower)


def sketch_quantiles(owner: np.ndarray, bucket: np.ndarray, count: np.ndarray, owners: int,
                     qs: tuple[float, ...]) -> np.ndarray:
    """Inverted-CDF quantiles ``qs`` of every owner's sketch: an array (len(qs), owners).

    ``owner``, ``bucket``, ``count`` list the non-empty buckets sorted by (owner, bucket), one
    row per bucket (unique pairs). An owner without counts gets nan.
    """
    out = np.full((len(qs), owners), np.nan)
    if len(owner) == 0:
        return out
    total = np.bincount(owner, weights=count, minlength=owners)
    first = np.searchsorted(owner, np.arange(owners), side="left")
    cum = np.cumsum(count)
    local = cum - np.where(first > 0, cum[np.maximum(first, 1) - 1], 0.0)[owner]  # owner's own CDF counts
    has = total > 0
    for k, q in enumerate(qs):
        # the first bucket whose cumulative count reaches q times the owner's total: the CDF
        # is increasing within an owner, so that is the owner's first row plus its rows below
        below = np.bincount(owner, weights=local < q * total[owner], minlength=owners).astype(np.int64)
        out[k, has] = bucket_value(bucket[first[has] + below[has]])
    return out
