"""Training speed: fedsim's batched and sequential paths against a plain torch loop.

Network of ``scenarios/train_synthetic.yaml`` scaled to n = 100 clients (20 fast, rate 5,
routing weight 2; 40 medium, rate 2, weight 1; 40 slow, rate 0.5, weight 0.5), its
Synthetic(1, 1) data (60 features, 10 classes, about 100 samples per client) and Generalized
AsyncSGD (lr 0.02, batches of 32), for C in {10, 50, 100} and two models: logistic regression
and the MLP 60-64-10. Each cell times, in one process and in alternation, ``--repeats`` times:

- batched: ``simulate`` with the training observer, ``training.batched: true`` (the dense
  kernel over each window of in-flight tasks);
- sequential: the same with ``batched: false`` (autograd, one task per completion);
- plain loop: ``torch.optim.SGD`` (``zero_grad``, forward, ``backward``, ``step``) over as many
  mini-batches, drawn beforehand in the order fedsim's clients consume them, no simulation.

Each fedsim run includes the engine, the tracker, the versions, the client work and the final
evaluation (setup excluded); the plain loop includes the same final evaluation. Reported:
updates per second (median over repeats), the medians of the per-repeat ratios, and the
mean window (tasks per batched call). Target: batched >= 3x the plain loop at C = 50, both models.

    python benchmarks/bench_training.py [--updates 6000] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fedsim.run import simulate
from fedsim.scenario import Scenario, parse_scenario
from fedsim.training.session import TrainingSession
from fedsim.training.workload import build_workload

CONCURRENCIES = (10, 50, 100)
MODELS = {"logistic": "logistic", "mlp 60-64-10": {"name": "mlp", "hidden": [64]}}
GROUPS = (("fast", 20, 5.0, 2.0), ("medium", 40, 2.0, 1.0), ("slow", 40, 0.5, 0.5))
LR = 0.02
TARGET = 3.0


def bench_scenario(model: object, concurrency: int, updates: int, device: str, batched: bool | None) -> Scenario:
    """The benchmark network; ``batched`` None: no training section (the queueing run alone)."""
    doc = {
        "name": "bench-training", "seed": 2025, "concurrency": concurrency, "routing": "weights",
        "horizon": {"updates": updates, "warmup": updates // 10},
        "clients": [{"group": g, "count": n, "service": {"dist": "exponential", "rate": r}, "routing_weight": w}
                    for g, n, r, w in GROUPS],
    }
    if batched is not None:
        doc["training"] = {"dataset": {"name": "synthetic", "dim": 60, "classes": 10, "samples": 100},
                           "model": model, "device": device, "batched": batched,
                           "algorithm": {"name": "generalized_async_sgd", "lr": LR, "batch_size": 32},
                           "eval": {"every_updates": updates}}
    return parse_scenario(doc)


class ClientOrder:
    """Records which client completes each update (the queueing path, identical with training)."""

    def __init__(self) -> None:
        self.clients: list[int] = []

    def on_complete(self, task: object, update: int, now: float) -> None:
        self.clients.append(task.client)  # type: ignore[attr-defined]


def run_fedsim(scenario: Scenario) -> tuple[float, float | None]:
    """Wall seconds of the simulation with training (setup excluded) and the mean window."""
    session = TrainingSession(scenario)
    start = time.perf_counter()
    simulate(scenario, observers=[session.observer])
    _sync(session.workload.device)
    seconds = time.perf_counter() - start
    return seconds, session.mean_window


def plain_loop(scenario: Scenario, clients: list[int]) -> Callable[[], float]:
    """A plain SGD loop over the batches fedsim's clients consume, in that order; returns a
    function timing one run of it."""

    def run() -> float:
        wl = build_workload(scenario)
        module = wl.flat.module
        for p, v in zip(wl.flat.params, wl.flat.views(wl.w0)):
            p.data = v.clone()
            p.grad = None
        x, y = wl.trainer.x, wl.trainer.y
        batches = [torch.from_numpy(wl.sampler.next(c)[0]).to(wl.device) for c in clients]
        opt = torch.optim.SGD(module.parameters(), lr=LR)
        _sync(wl.device)
        start = time.perf_counter()
        for idx in batches:
            opt.zero_grad()
            F.cross_entropy(module(x.index_select(0, idx)), y.index_select(0, idx)).backward()
            opt.step()
        wl.evaluator(torch.cat([p.detach().reshape(-1) for p in wl.flat.params]))
        _sync(wl.device)
        return time.perf_counter() - start

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=6_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    n = args.updates
    torch.set_num_threads(1)
    print(f"training: n = 100 clients (train_synthetic's network), Generalized AsyncSGD, {n:,} updates per run, "
          f"device {args.device}, torch threads 1, {args.repeats} repeats (medians)")
    print(f"{'model':<14}{'C':>5}{'window':>8}{'batched/s':>11}{'sequential/s':>14}{'plain/s':>9}"
          f"{'batched/plain':>15}{'sequential/plain':>18}{'batched/sequential':>20}")
    met = True
    for label, model in MODELS.items():
        for c in CONCURRENCIES:
            order = ClientOrder()
            simulate(bench_scenario(model, c, n, args.device, None), observers=[order])
            batched = bench_scenario(model, c, n, args.device, True)
            sequential = bench_scenario(model, c, n, args.device, False)
            plain = plain_loop(batched, order.clients)
            times: dict[str, list[float]] = {"b": [], "s": [], "p": []}
            window = None
            for r in range(args.repeats):
                runs = [("b", lambda: run_fedsim(batched)), ("s", lambda: run_fedsim(sequential)),
                        ("p", lambda: (plain(), None))]
                for key, fn in runs[r % 3:] + runs[:r % 3]:  # rotate which goes first
                    seconds, w = fn()
                    times[key].append(seconds)
                    window = w if key == "b" else window
            ratio = {k: statistics.median(times[a][i] / times[b][i] for i in range(args.repeats))
                     for k, (a, b) in {"bp": ("p", "b"), "sp": ("p", "s"), "bs": ("s", "b")}.items()}
            rate = {k: n / statistics.median(v) for k, v in times.items()}
            print(f"{label:<14}{c:>5}{window:>8.2f}{rate['b']:>11,.0f}{rate['s']:>14,.0f}{rate['p']:>9,.0f}"
                  f"{ratio['bp']:>14.2f}x{ratio['sp']:>17.2f}x{ratio['bs']:>19.2f}x")
            if c == 50:
                met = met and ratio["bp"] >= TARGET
    print(f"target: batched >= {TARGET:g}x the plain loop at C = 50 for both models: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
