"""Engine speed against a bare heapq event loop of the same model, and peak memory.

Same network for every contender (n = 100 heterogeneous exponential clients, skewed routing,
C = 50), same number of updates, in one process, repeated; the figure reported is the median
of the per-repeat ratios (fedsim updates/s divided by bare-loop updates/s, the two timed back
to back), so machine noise hits both sides alike. On a shared VM single ratios still scatter
by about +-0.07, hence several repeats. A naive SimPy model (a Store per client, a process per client and
per task hand-off) is timed too, for reference.

Peak memory: a fresh subprocess runs 10^7 updates with tracking (no trace) and reports its
maximum resident set size.

    python benchmarks/bench_engine.py [--updates 1000000] [--repeats 7] [--naive-repeats 1]
                                      [--memory-updates 10000000]
"""

from __future__ import annotations

import argparse
import heapq
import resource
import statistics
import subprocess
import sys
import time
from collections import deque

import numpy as np
import simpy

from fedsim.engine import Engine, routing_draws, service_times
from fedsim.scenario import Scenario, Streams, parse_scenario
from fedsim.tracking import Tracker

N_CLIENTS = 100
CONCURRENCY = 50


def bench_scenario(updates: int) -> Scenario:
    """n = 100 clients in four speed classes, routing weights skewed towards fast clients."""
    classes = [(10.0, 2.0), (3.0, 1.0), (1.0, 1.0), (0.3, 0.5)]  # (rate, routing weight)
    return parse_scenario({
        "name": "bench", "seed": 1, "concurrency": CONCURRENCY,
        "horizon": {"updates": updates, "warmup": updates // 10},
        "clients": [{"group": f"rate{rate}", "count": N_CLIENTS // 4, "routing_weight": w,
                     "service": {"dist": "exponential", "rate": rate}} for rate, w in classes],
    })


def run_fedsim(scenario: Scenario) -> float:
    """Seconds for fedsim's engine with its tracker (the full statistics)."""
    start = time.perf_counter()
    tracker = Tracker(scenario)
    Engine(scenario, [tracker]).run()
    tracker.result()
    return time.perf_counter() - start


def run_bare(scenario: Scenario) -> float:
    """Seconds for a minimal heapq loop of the same model, keeping only staleness sums.

    A task is a tuple (dispatch update, dispatch time), as in the model. The loop draws its
    random numbers exactly as the engine does (same blocks, same streams), so the ratio
    measures the simulation machinery, not the sampling.
    """
    start = time.perf_counter()
    streams = Streams(scenario.seed)
    n, p = scenario.n_clients, scenario.p
    blocks = np.clip(np.rint(p * (1 << 16)), 16, 4096).astype(int)
    laws, rngs = scenario.services(), streams.per_client("service", n)
    service = [service_times(laws[i], rngs[i], int(blocks[i])) for i in range(n)]
    route = routing_draws(p, streams.generator("routing"))
    queues: list[deque[tuple[int, float]]] = [deque() for _ in range(n)]
    stale_sum = [0] * n
    count = [0] * n
    heap: list[tuple[float, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    t = 0
    for _ in range(scenario.concurrency):
        j = route()
        queues[j].append((0, 0.0))
        if len(queues[j]) == 1:
            push(heap, (service[j](), j))
    limit = scenario.horizon.updates
    while t < limit:
        now, i = pop(heap)
        q = queues[i]
        s, _ = q.popleft()
        stale_sum[i] += t - s
        count[i] += 1
        t += 1
        if q:
            push(heap, (now + service[i](), i))
        j = route()
        qj = queues[j]
        qj.append((t, now))
        if len(qj) == 1:
            push(heap, (now + service[j](), j))
    return time.perf_counter() - start


def run_naive_simpy(scenario: Scenario) -> float:
    """Seconds for a textbook SimPy model: a Store per client, staleness sums only."""
    start = time.perf_counter()
    env = simpy.Environment()
    streams = Streams(scenario.seed)
    n, p = scenario.n_clients, scenario.p
    laws, rngs = scenario.services(), streams.per_client("service", n)
    service = [service_times(laws[i], rngs[i], 256) for i in range(n)]
    route = routing_draws(p, streams.generator("routing"))
    stores = [simpy.Store(env) for _ in range(n)]
    state = {"t": 0}
    stale_sum = [0] * n
    done = env.event()

    def client(i: int):
        while True:
            s = yield stores[i].get()
            yield env.timeout(service[i]())
            stale_sum[i] += state["t"] - s
            state["t"] += 1
            if state["t"] == scenario.horizon.updates and not done.triggered:
                done.succeed()
            stores[route()].put(state["t"])

    for i in range(n):
        env.process(client(i))
    for _ in range(scenario.concurrency):
        stores[route()].put(0)
    env.run(until=done)
    return time.perf_counter() - start


def peak_memory_mb(updates: int) -> float:
    """Max RSS (MB) of a fresh process simulating ``updates`` updates with tracking."""
    code = (
        "import resource, sys; sys.path.insert(0, 'benchmarks');"
        "from bench_engine import bench_scenario, run_fedsim;"
        f"run_fedsim(bench_scenario({updates}));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--naive-repeats", type=int, default=1, help="the slow reference runs fewer times")
    parser.add_argument("--memory-updates", type=int, default=10_000_000)
    args = parser.parse_args()
    scenario = bench_scenario(args.updates)
    rows = {"fedsim": [], "bare": [], "naive_simpy": []}
    ratios, naive_ratios = [], []
    # Each repeat times a fedsim/bare pair back to back (alternating which goes first), so a
    # slow spell of the machine hits both sides of the ratio alike.
    pair = (("fedsim", run_fedsim), ("bare", run_bare))
    for repeat in range(args.repeats):
        for name, fn in pair if repeat % 2 == 0 else pair[::-1]:
            rows[name].append(args.updates / fn(scenario))
        ratios.append(rows["fedsim"][-1] / rows["bare"][-1])
        if repeat < args.naive_repeats:
            rows["naive_simpy"].append(args.updates / run_naive_simpy(scenario))
            naive_ratios.append(rows["naive_simpy"][-1] / rows["bare"][-1])
    print(f"engine: n = {N_CLIENTS}, C = {CONCURRENCY}, {args.updates:,} updates, "
          f"{args.repeats} repeats (naive SimPy {args.naive_repeats}); medians, ratios per repeat")
    for name, values in rows.items():
        print(f"  {name:<12} {statistics.median(values):>12,.0f} updates/s")
    print(f"  fedsim / bare loop       = {statistics.median(ratios):.2f}  (target >= 0.40; "
          f"per repeat {min(ratios):.2f} to {max(ratios):.2f})")
    print(f"  naive SimPy / bare loop  = {statistics.median(naive_ratios):.2f}")
    if args.memory_updates:
        mb = peak_memory_mb(args.memory_updates)
        print(f"  peak memory, {args.memory_updates:,} updates with tracking: {mb:.0f} MB (target < 300 MB)")
    print(f"  (this process: max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
