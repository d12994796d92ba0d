"""Per-client staleness histograms: fedsim's sparse-or-dense counts against dense histograms.

The completion records of one engine run are folded, alternately and in one process, into
dense per-client histograms (one int64 count per staleness value up to each client's largest,
what the tracker kept before) and into :class:`fedsim.histograms.ClientHistograms`; the
figures are the median fold time over 5 repeats and the bytes held at the end, for a small
network where every client has many updates and a large one where clients have few.
Targets: time ratio <= 1.5, bytes ratio <= 1 (and far below 1 for the large network).

    .venv/bin/python benchmarks/bench_histograms.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsim.engine import Engine  # noqa: E402
from fedsim.histograms import ClientHistograms  # noqa: E402
from fedsim.scenario import parse_scenario  # noqa: E402

CASES = [(100, 50, 1_000_000), (10_000, 1_000, 300_000)]
REPEATS = 5


def records(n: int, C: int, updates: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(client, staleness) of every chunk of completion records of one run."""
    scenario = parse_scenario({"name": "h", "concurrency": C, "horizon": {"updates": updates},
                               "clients": [{"count": n // 2, "service": {"dist": "exponential", "rate": 1.0}},
                                           {"group": "slow", "count": n - n // 2,
                                            "service": {"dist": "exponential", "rate": 0.5}}]})
    chunks = []

    class Keep:
        def on_records(self, r):  # noqa: ANN001, ANN202
            chunks.append((r.client, r.apply - r.dispatch_update))

    Engine(scenario, [Keep()]).run()
    return chunks


def dense(chunks: list, n: int) -> int:
    hist = [np.zeros(0, dtype=np.int64) for _ in range(n)]
    for client, staleness in chunks:
        order = np.argsort(client, kind="stable")
        client, staleness = client[order], staleness[order]
        starts = np.flatnonzero(np.diff(client, prepend=-1))
        for i, part in zip(client[starts], np.split(staleness, starts[1:])):
            h, old = np.bincount(part), hist[i]
            if len(h) > len(old):
                h[: len(old)] += old
                hist[i] = h
            else:
                old[: len(h)] += h
    return sum(h.nbytes for h in hist)


def sparse(chunks: list, n: int) -> int:
    hist = ClientHistograms(n)
    for client, staleness in chunks:
        hist.add(client, staleness)
    return hist.nbytes()


def main() -> None:
    for n, C, updates in CASES:
        chunks = records(n, C, updates)
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        size = {}
        for _ in range(REPEATS):
            for name, fold in (("dense", dense), ("sparse", sparse)):
                start = time.perf_counter()
                size[name] = fold(chunks, n)
                times[name].append(time.perf_counter() - start)
        d, s = (float(np.median(times[k])) for k in ("dense", "sparse"))
        print(f"n = {n:,}, C = {C:,}, {updates:,} updates: fold {s:.3f} s against dense {d:.3f} s "
              f"(ratio {s / d:.2f}); {size['sparse']:,} bytes against {size['dense']:,} "
              f"(ratio {size['sparse'] / size['dense']:.3f})")


if __name__ == "__main__":
    main()
