"""Exact per-client counts of integer values (staleness), in memory bounded by what was seen.

A client's counts are kept either *dense* (``counts[s]`` for s = 0..max, the cheapest when
the client has many updates) or *sparse* (the distinct values seen, sorted, and their
counts, the cheapest when it has few): whichever is smaller, switching as the client's
updates accumulate. A client with k updates and largest value m then costs about
8 min(2 k, m + 1) bytes instead of 8 (m + 1): with n = 100,000 clients and C = 10,000 tasks
(staleness near 10^4) and a few updates per client, megabytes instead of tens of gigabytes.
Quantiles are exact either way (the inverted-CDF quantile of the counts).
"""

from __future__ import annotations

import numpy as np

_EMPTY = np.zeros(0, dtype=np.int64)


class ClientHistograms:
    """Counts of the values observed for each of ``n`` clients (see the module docstring)."""

    def __init__(self, n: int) -> None:
        self.dense: list[np.ndarray | None] = [None] * n  # counts by value, or None while sparse
        self.values: list[np.ndarray] = [_EMPTY] * n  # sparse: distinct values, increasing
        self.counts: list[np.ndarray] = [_EMPTY] * n  # sparse: their counts

    def add(self, client: np.ndarray, value: np.ndarray) -> None:
        """Count ``value[k]`` (integers >= 0) for ``client[k]``, for every k."""
        if not len(client):
            return
        width = int(value.max()) + 1
        keys, counts = np.unique(client * width + value, return_counts=True)  # by client, then value
        clients, values = np.divmod(keys, width)
        starts = np.flatnonzero(np.diff(clients, prepend=-1))
        ends = np.append(starts[1:], len(keys))
        for i, a, b in zip(clients[starts].tolist(), starts.tolist(), ends.tolist()):
            v, c = values[a:b], counts[a:b]
            dense = self.dense[i]
            if dense is not None:
                if v[-1] >= len(dense):
                    dense = np.concatenate([dense, np.zeros(int(v[-1]) + 1 - len(dense), dtype=np.int64)])
                    self.dense[i] = dense
                dense[v] += c
                continue
            if self.values[i].size:
                v, inverse = np.unique(np.concatenate([self.values[i], v]), return_inverse=True)
                c = np.bincount(inverse, weights=np.concatenate([self.counts[i], c])).astype(np.int64)
            if 2 * v.size >= v[-1] + 1:  # dense is no larger now: switch for good
                h = np.zeros(int(v[-1]) + 1, dtype=np.int64)
                h[v] = c
                self.dense[i], self.values[i], self.counts[i] = h, _EMPTY, _EMPTY
            else:
                self.values[i], self.counts[i] = v.copy(), c.copy()

    def _sorted(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        dense = self.dense[i]
        if dense is None:
            return self.values[i], self.counts[i]
        seen = np.flatnonzero(dense)
        return seen, dense[seen]

    def quantile(self, q: float) -> np.ndarray:
        """Per client, the smallest value s with P(S <= s) >= q (nan for a client with no count)."""
        out = np.full(len(self.dense), np.nan)
        for i in range(len(out)):
            values, counts = self._sorted(i)
            if values.size:
                cdf = np.cumsum(counts)
                out[i] = values[np.searchsorted(cdf, q * cdf[-1], side="left")]
        return out

    def maximum(self) -> np.ndarray:
        """Per client, the largest value counted (nan for a client with none)."""
        out = np.full(len(self.dense), np.nan)
        for i, dense in enumerate(self.dense):
            if dense is not None:
                out[i] = len(dense) - 1
            elif self.values[i].size:
                out[i] = self.values[i][-1]
        return out

    def nbytes(self) -> int:
        """Bytes held by the counts."""
        return sum((d.nbytes if d is not None else 0) + v.nbytes + c.nbytes
                   for d, v, c in zip(self.dense, self.values, self.counts))
