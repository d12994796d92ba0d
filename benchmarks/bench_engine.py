"""Engine speed against bare heapq event loops of the same models, and peak memory.

Two networks, each timed against its own bare loop:

- **base**: n = 100 heterogeneous exponential clients, skewed routing, C = 50 (clients only,
  the server instantaneous): fedsim's fast path (:class:`fedsim.engine.Engine`);
- **extended**: the same clients with a lognormal delay downlink, an exponential uplink (FIFO
  for two speed classes, delay for the others) and an exponential FIFO server: fedsim's
  station engine (:class:`fedsim.stations.StationEngine`), with the station statistics too.

Same number of updates for every contender, in one process, repeated; the figure reported is
the median of the per-repeat ratios (fedsim updates/s divided by bare-loop updates/s, the two
timed back to back), so machine noise hits both sides alike. On a shared VM single ratios
still scatter by about +-0.07, hence several repeats. A naive SimPy model of the base network
(a Store per client, a process per client and per task hand-off) is timed too, for reference.

The bare loops draw the same random numbers from the same streams as the engine and return
every client's staleness sum and count and the final time, so they double as an independent
check of the engine's sample path (tests/test_engine_stations.py compares them exactly).

Peak memory: a fresh subprocess runs 10^7 updates of the base network with tracking and
reports its maximum resident set size.

    python benchmarks/bench_engine.py [--updates 1000000] [--extended-updates 300000]
                                      [--repeats 7] [--naive-repeats 1] [--memory-updates 10000000]
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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from fedsim.engine import STAGES, Engine, draw_blocks, routing_draws, service_times
from fedsim.scenario import LINKS, Scenario, Streams, parse_scenario
from fedsim.simkernel import NORMAL
from fedsim.stations import SERVER_BLOCK, TICKS_PER_UNIT, grid_durations, tie_keys
from fedsim.stations_tracking import StationTracker
from fedsim.tracking import Tracker

N_CLIENTS = 100
CONCURRENCY = 50
CLASSES = [(10.0, 2.0), (3.0, 1.0), (1.0, 1.0), (0.3, 0.5)]  # (rate, routing weight)


def bench_scenario(updates: int) -> Scenario:
    """n = 100 clients in four speed classes, routing weights skewed towards fast clients."""
    return parse_scenario({
        "name": "bench", "seed": 1, "concurrency": CONCURRENCY,
        "horizon": {"updates": updates, "warmup": updates // 10},
        "clients": [{"group": f"rate{rate}", "count": N_CLIENTS // 4, "routing_weight": w,
                     "service": {"dist": "exponential", "rate": rate}} for rate, w in CLASSES],
    })


def bench_extended_scenario(updates: int) -> Scenario:
    """The clients of :func:`bench_scenario` with links on every route and a server (its
    utilisation about 0.8)."""
    return parse_scenario({
        "name": "bench-extended", "seed": 1, "concurrency": CONCURRENCY,
        "horizon": {"updates": updates, "warmup": updates // 10},
        "server": {"service": {"dist": "exponential", "rate": 8.0}},
        "clients": [{"group": f"rate{rate}", "count": N_CLIENTS // 4, "routing_weight": w,
                     "service": {"dist": "exponential", "rate": rate},
                     "downlink": {"dist": "lognormal", "mean": 0.2, "cv": 1.0, "station": "delay"},
                     "uplink": {"dist": "exponential", "mean": 0.1, "station": "fifo" if k < 2 else "delay"}}
                    for k, (rate, w) in enumerate(CLASSES)],
    })


def run_fedsim(scenario: Scenario) -> None:
    """fedsim's engine with its full statistics (the tracker; the station tracker if extended)."""
    observers = [Tracker(scenario)]
    if scenario.extended:
        observers.append(StationTracker(scenario))
    Engine(scenario, observers).run()
    for observer in observers:
        observer.result()


@dataclass(frozen=True)
class BareRun:
    """What a bare loop keeps: per client, the staleness sum and the number of updates; the
    time of the last update."""

    stale_sum: list[int]
    count: list[int]
    time: float


def run_bare(scenario: Scenario) -> BareRun:
    """A minimal heapq loop of the base model, keeping only staleness sums.

    A task is a tuple (dispatch update, dispatch time), as in the model. The loop draws its
    random numbers exactly as the engine does (same blocks, same streams), so the ratio
    measures the simulation machinery, not the sampling.
    """
    streams = Streams(scenario.seed)
    n, p = scenario.n_clients, scenario.p
    blocks = draw_blocks(p)
    laws, rngs = scenario.services(), streams.per_client("service", n)
    service = [service_times(laws[i], rngs[i], int(blocks[i])) for i in range(n)]
    route = routing_draws(p, streams.generator("routing"))
    queues: list[deque[tuple[int, float]]] = [deque() for _ in range(n)]
    stale_sum = [0] * n
    count = [0] * n
    heap: list[tuple[float, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    t = 0
    now = 0.0
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
    return BareRun(stale_sum, count, now)


def run_bare_extended(scenario: Scenario) -> BareRun:
    """A minimal heapq loop of the extended network, keeping only staleness sums.

    Stations are numbered; ``after[k]`` is the station a task goes to when station k has
    served it (-1: the update is applied). A heap entry is ``(time, priority, seq, station,
    task)`` and a task the tuple (client, dispatch update). FIFO stations keep a deque, delay
    stations nothing. Durations and tie keys come from the engine's streams and block sizes,
    atomic laws on the engine's grid (:mod:`fedsim.stations`), so the sample path is the
    engine's.
    """
    streams = Streams(scenario.seed)
    n, p = scenario.n_clients, scenario.p
    blocks = draw_blocks(p)
    compute_rngs = streams.per_client("service", n)
    link_seeds = {link: streams.seed_sequence(link).spawn(n) for link in LINKS}
    tie_seeds = streams.seed_sequence("ties").spawn(len(STAGES))
    tie_children: dict[int, list[np.random.SeedSequence]] = {}
    draw: list[Callable[[], float]] = []
    key: list[Callable[[], float] | None] = []
    fifo: list[bool] = []
    after: list[int] = []

    def station(law, kind: str, stage: int, client: int, rng: np.random.Generator, block: int, nxt: int) -> int:
        if law.atomic:
            if stage not in tie_children:
                tie_children[stage] = tie_seeds[stage].spawn(n)
            draw.append(grid_durations(law, rng, block))
            key.append(tie_keys(np.random.Generator(np.random.PCG64(tie_children[stage][client])), block))
        else:
            draw.append(service_times(law, rng, block))
            key.append(None)
        fifo.append(kind == "fifo")
        after.append(nxt)
        return len(draw) - 1

    last = -1
    if scenario.server is not None:
        last = station(scenario.server.law, "fifo", 3, 0, streams.generator("server"), SERVER_BLOCK, -1)
    first = []
    for i, g in enumerate(scenario.client_group):
        group, block = scenario.groups[g], int(blocks[i])
        nxt = last
        if group.uplink is not None:
            rng = np.random.Generator(np.random.PCG64(link_seeds["uplink"][i]))
            nxt = station(group.uplink.law, group.uplink.kind, 2, i, rng, block, nxt)
        nxt = station(group.service, "fifo", 1, i, compute_rngs[i], block, nxt)
        if group.downlink is not None:
            rng = np.random.Generator(np.random.PCG64(link_seeds["downlink"][i]))
            nxt = station(group.downlink.law, group.downlink.kind, 0, i, rng, block, nxt)
        first.append(nxt)
    route = routing_draws(p, streams.generator("routing"))
    queues: list[deque[tuple[int, int]]] = [deque() for _ in draw]
    heap: list[tuple[float, float, int, int, tuple[int, int]]] = []
    push, pop = heapq.heappush, heapq.heappop
    seq = 0
    stale_sum = [0] * n
    count = [0] * n

    def start(k: int, task: tuple[int, int], now: float) -> None:
        nonlocal seq
        if key[k] is None:
            push(heap, (now + draw[k](), NORMAL, seq, k, task))
        else:
            push(heap, ((round(now * TICKS_PER_UNIT) + draw[k]()) / TICKS_PER_UNIT, key[k](), seq, k, task))
        seq += 1

    def arrive(k: int, task: tuple[int, int], now: float) -> None:
        if fifo[k]:
            queues[k].append(task)
            if len(queues[k]) == 1:
                start(k, task, now)
        else:
            start(k, task, now)

    t = 0
    now = 0.0
    for _ in range(scenario.concurrency):
        j = route()
        arrive(first[j], (j, 0), 0.0)
    limit = scenario.horizon.updates
    while t < limit:
        now, _, _, k, task = pop(heap)
        if fifo[k]:
            q = queues[k]
            q.popleft()
            if q:
                start(k, q[0], now)
        nxt = after[k]
        if nxt >= 0:
            arrive(nxt, task, now)
            continue
        i, s = task
        stale_sum[i] += t - s
        count[i] += 1
        t += 1
        j = route()
        arrive(first[j], (j, t), now)
    return BareRun(stale_sum, count, now)


def run_naive_simpy(scenario: Scenario) -> None:
    """A textbook SimPy model of the base network: a Store per client, staleness sums only."""
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


def peak_memory_mb(updates: int) -> float:
    """Peak resident memory (MB) of a fresh process simulating ``updates`` updates with tracking.

    Read from the process's own high-water mark (``VmHWM`` in /proc/self/status) where Linux
    has it: ``ru_maxrss`` survives ``exec`` there, so it would report this (larger) parent's.
    """
    code = (
        "import resource, sys; sys.path.insert(0, 'benchmarks');"
        "from bench_engine import bench_scenario, run_fedsim;"
        f"run_fedsim(bench_scenario({updates}));"
        "from pathlib import Path; status = Path('/proc/self/status');"
        "hwm = [l.split()[1] for l in status.read_text().splitlines() if l.startswith('VmHWM')] "
        "if status.exists() else [];"
        "print(int(hwm[0]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def seconds(fn: Callable[[Scenario], object], scenario: Scenario) -> float:
    start = time.perf_counter()
    fn(scenario)
    return time.perf_counter() - start


def compare(scenario: Scenario, bare: Callable[[Scenario], BareRun], repeats: int,
            naive_repeats: int = 0) -> tuple[dict[str, list[float]], list[float], list[float]]:
    """Updates/s of fedsim and of the bare loop (and the naive SimPy model), and the ratios.

    Each repeat times a fedsim/bare pair back to back (alternating which goes first), so a
    slow spell of the machine hits both sides of the ratio alike.
    """
    updates = scenario.horizon.updates
    rows: dict[str, list[float]] = {"fedsim": [], "bare": [], "naive_simpy": []}
    ratios, naive_ratios = [], []
    pair = (("fedsim", run_fedsim), ("bare", bare))
    for repeat in range(repeats):
        for name, fn in pair if repeat % 2 == 0 else pair[::-1]:
            rows[name].append(updates / seconds(fn, scenario))
        ratios.append(rows["fedsim"][-1] / rows["bare"][-1])
        if repeat < naive_repeats:
            rows["naive_simpy"].append(updates / seconds(run_naive_simpy, scenario))
            naive_ratios.append(rows["naive_simpy"][-1] / rows["bare"][-1])
    return {k: v for k, v in rows.items() if v}, ratios, naive_ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1_000_000)
    parser.add_argument("--extended-updates", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--naive-repeats", type=int, default=1, help="the slow reference runs fewer times")
    parser.add_argument("--memory-updates", type=int, default=10_000_000)
    args = parser.parse_args()
    rows, ratios, naive_ratios = compare(bench_scenario(args.updates), run_bare, args.repeats, args.naive_repeats)
    print(f"engine, base network: n = {N_CLIENTS}, C = {CONCURRENCY}, {args.updates:,} updates, "
          f"{args.repeats} repeats (naive SimPy {args.naive_repeats}); medians, ratios per repeat")
    for name, values in rows.items():
        print(f"  {name:<12} {statistics.median(values):>12,.0f} updates/s")
    print(f"  fedsim / bare loop       = {statistics.median(ratios):.2f}  (target >= 0.40; "
          f"per repeat {min(ratios):.2f} to {max(ratios):.2f})")
    if naive_ratios:
        print(f"  naive SimPy / bare loop  = {statistics.median(naive_ratios):.2f}")
    if args.extended_updates:
        rows, ratios, _ = compare(bench_extended_scenario(args.extended_updates), run_bare_extended, args.repeats)
        print(f"engine, extended network (links, server): n = {N_CLIENTS}, C = {CONCURRENCY}, "
              f"{args.extended_updates:,} updates, {args.repeats} repeats")
        for name, values in rows.items():
            print(f"  {name:<12} {statistics.median(values):>12,.0f} updates/s")
        print(f"  fedsim / bare loop       = {statistics.median(ratios):.2f}  "
              f"(per repeat {min(ratios):.2f} to {max(ratios):.2f})")
    if args.memory_updates:
        mb = peak_memory_mb(args.memory_updates)
        print(f"  peak memory, {args.memory_updates:,} updates with tracking: {mb:.0f} MB (target < 300 MB)")
    print(f"  (this process: max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
