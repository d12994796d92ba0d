"""What client behaviour costs the engine: the network of benchmarks/bench_engine.py (n = 100
heterogeneous exponential clients, C = 50) with behaviour added, against the bare heapq loop
of the base network.

Variants, each timed back to back with the bare loop in one process, repeated; the figure is
the median of the per-repeat ratios (fedsim updates/s over bare-loop updates/s):

- **base**: no behaviour (fedsim's fast path, :class:`fedsim.engine.Engine`);
- **neutral**: every client with a speed profile of factor 1 (the device stations of
  :mod:`fedsim.devices` on the station engine, nothing ever interrupted);
- **on/off, pause**: every client alternates exponential on (mean 50) and off (mean 10)
  periods and pauses its task;
- **drop + dropout**: the same periods with ``offline: drop`` and ``dropout: 0.05``.

Every run keeps the full statistics (the tracker and, with behaviour, the behaviour tracker).

    python benchmarks/bench_behaviour.py [--updates 300000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import CLASSES, CONCURRENCY, N_CLIENTS, run_bare  # noqa: E402

from fedsim.behaviour_tracking import BehaviourTracker  # noqa: E402
from fedsim.engine import Engine  # noqa: E402
from fedsim.scenario import Scenario, parse_scenario  # noqa: E402
from fedsim.tracking import Tracker  # noqa: E402

ON_OFF = {"on": {"dist": "exponential", "mean": 50.0}, "off": {"dist": "exponential", "mean": 10.0}}
VARIANTS = {
    "base": {},
    "neutral": {"speed_profile": {"period": 100.0, "factors": [1.0]}},
    "on/off, pause": {"availability": ON_OFF | {"offline": "pause"}},
    "drop + dropout": {"availability": ON_OFF | {"offline": "drop"}, "dropout": 0.05},
}


def scenario(updates: int, behaviour: dict) -> Scenario:
    return parse_scenario({
        "name": "bench-behaviour", "seed": 1, "concurrency": CONCURRENCY,
        "horizon": {"updates": updates, "warmup": updates // 10},
        "clients": [{"group": f"rate{rate}", "count": N_CLIENTS // 4, "routing_weight": w,
                     "service": {"dist": "exponential", "rate": rate}} | behaviour for rate, w in CLASSES],
    })


def run_fedsim(s: Scenario) -> None:
    observers = [Tracker(s)] + ([BehaviourTracker(s)] if s.behaves else [])
    Engine(s, observers).run()
    for observer in observers:
        observer.result()


def rate(fn, s: Scenario) -> float:
    start = time.perf_counter()
    fn(s)
    return s.horizon.updates / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base = scenario(args.updates, {})
    print(f"client behaviour: n = {N_CLIENTS}, C = {CONCURRENCY}, {args.updates:,} updates, {args.repeats} repeats; "
          "median of per-repeat ratios to the bare loop of the base network")
    for name, behaviour in VARIANTS.items():
        s = scenario(args.updates, behaviour)
        ratios, speeds = [], []
        for repeat in range(args.repeats):
            pair = [(run_fedsim, s), (run_bare, base)]
            timed = [rate(fn, x) for fn, x in (pair if repeat % 2 == 0 else pair[::-1])]
            fedsim_rate, bare_rate = timed if repeat % 2 == 0 else timed[::-1]
            ratios.append(fedsim_rate / bare_rate)
            speeds.append(fedsim_rate)
        print(f"  {name:<16} {statistics.median(speeds):>10,.0f} updates/s   / bare loop = "
              f"{statistics.median(ratios):.2f}  (per repeat {min(ratios):.2f} to {max(ratios):.2f})")


if __name__ == "__main__":
    main()
