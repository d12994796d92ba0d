"""Time the optimiser on large networks: n = 1,000 clients, C searched in 1..1,000.

    python benchmarks/bench_optimize.py

Cases: 1,000 clients in 10 speed classes (one routing probability per class), 1,000 clients
that all differ (1,000 probabilities), and the 10 classes with links (FIFO uplinks, delay
downlinks), a server and power (the extended network). For each objective: seconds for the
whole search (routing and concurrency), the optimal C, the number of concurrencies where the
routing was optimised and the L-BFGS iterations in total. One run per case (each is seconds).

Then the analytic solution at n = 10,000 clients and C = 1,000: ``solve_extended`` against
``solve`` on the base network (the ratio, median of side-by-side pairs), and with links and a
server.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsim.analytic import ExtendedNetwork, PowerModel, solve, solve_extended  # noqa: E402
from fedsim.optimize import BoundConstants, GroupNetwork, Objective, bound_terms, optimise  # noqa: E402

CONSTANTS = BoundConstants(A=2.3, L=0.33, S=0.68, eta=0.05)


def extended_classes() -> GroupNetwork:
    """10 classes of 100 clients, from fast and power-hungry to slow and frugal, with links and a server."""
    mu = np.geomspace(0.02, 5.0, 10)
    watts = np.geomspace(0.5, 20.0, 10)
    return GroupNetwork(counts=np.full(10, 100), mu=mu, uplink=0.5 / np.sqrt(mu), uplink_delay=np.zeros(10, bool),
                        downlink=np.full(10, 0.2), server=0.01,
                        power=PowerModel(compute=watts, uplink=0.3 * watts, downlink=0.1 * watts, idle=0.05 * watts,
                                         server_busy=200.0, server_idle=80.0))


def bench_optimiser() -> None:
    cases = {
        "1000 clients, 10 classes": GroupNetwork(counts=np.full(10, 100), mu=np.geomspace(0.02, 5.0, 10)),
        "1000 distinct clients": GroupNetwork(counts=np.ones(1000), mu=np.geomspace(0.02, 5.0, 1000)),
        "10 classes, links, server": extended_classes(),
    }
    print(f"{'case':<28}{'objective':<16}{'seconds':>9}{'C*':>6}{'solved C':>10}{'iterations':>12}")
    for label, network in cases.items():
        objectives = [Objective.per_update(1e5), Objective.wall_clock(20.0), Objective.wall_clock(2000.0)]
        if network.power is not None:
            target = bound_terms(network, network.uniform(), network.n, CONSTANTS, Objective.wall_clock(2000.0)).total
            objectives = [Objective.wall_clock(2000.0), Objective.time(target), Objective.energy(target)]
        for objective in objectives:
            start = time.perf_counter()
            opt = optimise(network, CONSTANTS, objective, c_max=1000)
            seconds = time.perf_counter() - start
            name = objective.name + ("" if objective.budget is None else f" T={objective.budget:g}")
            iterations = sum(r.iterations for r in opt.solved.values())
            print(f"{label:<28}{name:<16}{seconds:>9.2f}{opt.concurrency:>6}{len(opt.solved):>10}{iterations:>12}")


def bench_analytic(pairs: int = 7) -> None:
    rng = np.random.default_rng(1)
    n, C = 10_000, 1_000
    mu, p = 10.0 ** rng.uniform(-3, 3, n), rng.dirichlet(np.ones(n))
    base = ExtendedNetwork(mu)
    extended = ExtendedNetwork(mu, downlink=rng.uniform(0.1, 1.0, n), uplink=rng.uniform(0.1, 1.0, n),
                               uplink_delay=rng.random(n) < 0.5, server=1e-3)

    def seconds(f) -> float:
        start = time.perf_counter()
        f()
        return time.perf_counter() - start

    ratios, ext = [], []
    for k in range(pairs):  # alternate the order within each pair
        runs = [("solve", lambda: solve(mu, p, C)), ("ext", lambda: solve_extended(base, p, C))]
        t = dict((name, seconds(f)) for name, f in (runs if k % 2 == 0 else runs[::-1]))
        ratios.append(t["ext"] / t["solve"])
        ext.append(seconds(lambda: solve_extended(extended, p, C)) / t["solve"])
    print(f"n = {n}, C = {C}: solve_extended / solve on the base network {statistics.median(ratios):.2f} "
          f"(median of {pairs} pairs, {min(ratios):.2f} to {max(ratios):.2f}); with links on every client "
          f"(3n + 1 FIFO stations at most) and a server {statistics.median(ext):.2f}")


if __name__ == "__main__":
    bench_optimiser()
    bench_analytic()
