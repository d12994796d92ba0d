"""Speed and peak memory against the number of clients n, with full tracking.

For n = 10, 100, 1,000, 10,000, 100,000 clients (four speed classes, rates 10, 3, 1, 0.3
with routing weights 2, 1, 1, 0.5, as in bench_engine.py) and C = n / 2 capped at 1,000, a
fresh subprocess builds the engine with its tracker, runs ``--updates`` updates, computes the
statistics, and reports its peak resident memory. Updates per second count the run and
the statistics (``Engine.run`` and ``Tracker.result``); building the network (one random
stream and one station per client) is timed apart as "setup". The tracker's own time (its
``on_records``, ``on_finish`` and ``result``) is timed too, per update, and the rest of the
run is the engine's. The median over ``--repeats`` subprocesses is printed, and the ratios
of the largest n to n = 100.

    python benchmarks/bench_scale.py [--updates 500000] [--repeats 3] [--sizes 10 100 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from fedsim.engine import Engine
from fedsim.scenario import Scenario, parse_scenario
from fedsim.tracking import Tracker

CLASSES = [(10.0, 2.0), (3.0, 1.0), (1.0, 1.0), (0.3, 0.5)]  # (rate, routing weight)
MAX_CONCURRENCY = 1000


def scale_scenario(n: int, updates: int) -> Scenario:
    """n clients in four speed classes (sizes n // 4, the last takes the rest), C = min(n // 2, 1000)."""
    counts = [n // 4] * 3 + [n - 3 * (n // 4)]
    return parse_scenario({
        "name": f"scale{n}", "seed": 1, "concurrency": max(1, min(n // 2, MAX_CONCURRENCY)),
        "horizon": {"updates": updates},
        "clients": [{"group": f"rate{rate}", "count": count, "routing_weight": w,
                     "service": {"dist": "exponential", "rate": rate}}
                    for (rate, w), count in zip(CLASSES, counts) if count],
    })


class TimedTracker(Tracker):
    """A Tracker that adds up the time spent in its own hooks."""

    seconds = 0.0

    def on_records(self, records: object) -> None:
        start = time.perf_counter()
        super().on_records(records)
        self.seconds += time.perf_counter() - start

    def on_finish(self, engine: Engine) -> None:
        start = time.perf_counter()
        super().on_finish(engine)
        self.seconds += time.perf_counter() - start


def measure(n: int, updates: int) -> dict[str, float]:
    """In this process: setup seconds, updates per second, the tracker's and the engine's
    microseconds per update, and peak memory (MB) at the end."""
    start = time.perf_counter()
    scenario = scale_scenario(n, updates)
    tracker = TimedTracker(scenario)
    engine = Engine(scenario, [tracker])
    built = time.perf_counter()
    engine.run()
    ran = time.perf_counter()
    tracker.result()
    done = time.perf_counter()
    tracked = tracker.seconds + (done - ran)
    return {"setup_s": built - start, "updates_per_s": updates / (done - built),
            "tracker_us": 1e6 * tracked / updates, "engine_us": 1e6 * (done - built - tracked) / updates,
            "max_rss_mb": peak_mb()}


def peak_mb() -> float:
    """This process's peak resident memory (MB): ``VmHWM`` where Linux has it (``ru_maxrss``
    survives ``exec`` there and would count the parent's), else ``ru_maxrss``."""
    import resource
    from pathlib import Path

    status = Path("/proc/self/status")
    hwm = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM")] \
        if status.exists() else []
    return int(hwm[0]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_in_subprocess(n: int, updates: int) -> dict[str, float]:
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); from bench_scale import measure;"
            f"print(json.dumps(measure({n}, {updates})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1_000, 10_000, 100_000])
    args = parser.parse_args()
    print(f"scale: {args.updates:,} updates, C = n/2 up to {MAX_CONCURRENCY}, median of {args.repeats} subprocesses")
    print(f"  {'n':>8}{'C':>6}{'updates/s':>12}{'tracker us/upd':>16}{'engine us/upd':>15}{'setup s':>9}"
          f"{'peak MB':>9}")
    med = {}
    for n in args.sizes:
        runs = [measure_in_subprocess(n, args.updates) for _ in range(args.repeats)]
        med[n] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        m, c = med[n], max(1, min(n // 2, MAX_CONCURRENCY))
        print(f"  {n:>8,}{c:>6}{m['updates_per_s']:>12,.0f}{m['tracker_us']:>16.2f}{m['engine_us']:>15.2f}"
              f"{m['setup_s']:>9.2f}{m['max_rss_mb']:>9.0f}")
    if 100 in med and len(med) > 1:
        top = max(med)
        print(f"  n = {top:,} against n = 100: updates/s {med[top]['updates_per_s'] / med[100]['updates_per_s']:.2f} "
              f"(target >= 0.5); tracker time per update {med[top]['tracker_us'] / med[100]['tracker_us']:.1f}x; "
              f"engine time per update {med[top]['engine_us'] / med[100]['engine_us']:.1f}x")


if __name__ == "__main__":
    main()
