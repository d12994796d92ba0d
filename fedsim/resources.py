"""The memory a run needs, estimated before it starts, against what this machine has.

:func:`estimate` adds up the structures a run allocates, each from the sizes the scenario
fixes (bytes, approximately; measured on CPython 3.11 / numpy 2, 64-bit):

- engine: a client costs about 2.9 kB (its SimPy event, queue, service-time stream and
  block of pre-drawn service times), a task in circulation about 100 B;
- statistics: the tracker's per-(slot, client) sums (:mod:`fedsim.tracking`), 48 B a row,
  at most min(U, S n) + S min(C, n) rows for S slots (512, or 16 ``statistics.batches``
  rounded up to a power of two if more; fewer past 2^21 rows, down to a quarter), twice over
  while they are compacted, its pending rows (2^18), and 8 B per slot;
- staleness sketches (:mod:`fedsim.sketch`): client i, with k_i = p_i U updates and mean
  staleness E[tau_i] (product form), holds at most min(k_i, 33 b_i) bucket counts of 16 B,
  b_i the buckets up to its largest staleness, taken as E[tau_i] (1 + ln k_i) (the largest of
  k_i draws of a geometric-like law), twice over while they are compacted; past 2^21 counts
  the segments merge, down to min(k_i, 2 b_i);
- results: the per-client tables (clients.csv and its statistics), about 700 B per client;
- with links, a server or powers: the stations' engine (as much again as the engine) and
  their statistics (per station present, 3 arrays of batch sums like the tracker's);
- the analytical solution, O(n + C) float64;
- trace: 44 B per update, three times over when kept in memory (``fedsim.run(trace=True)``);
  ``trace.parquet`` is streamed to disk by the CLI and costs no memory;
- training: torch itself (about 600 MB), the dataset (24 B per input value while it is
  built), C + 2 model versions of 4 B per parameter, the mini-batch activations (forward
  and backward), and the batch sampler's index streams (64 batches ahead per client). The
  model's parameters are first counted by building it on torch's ``meta`` device (no
  memory), then, with its activations, on the real model run on two samples.

U is ``horizon.updates``, or for a time horizon ``throughput x horizon.time`` (the product
form's throughput when solved, else its upper bound min(1 / max_i rho_i, C / sum_i rho_i)).

:func:`check_memory` refuses an estimate above the limit, by default the memory available to
this process now (Linux: ``MemAvailable`` of /proc/meminfo, and the cgroup's limit); the
CLI's ``--max-memory SIZE`` and the API's ``max_memory`` replace it. The estimate is meant to
be within a factor of about two of the peak; its purpose is to refuse what cannot fit at
once, with a one-line error, instead of being killed by the kernel hours later.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.engine import has_stations
from fedsim.errors import ScenarioError
from fedsim.scenario import LINKS, Scenario

__all__ = ["Estimate", "available_memory", "cheap_to_solve", "check_memory", "estimate", "format_bytes", "parse_size"]

CLIENT_BYTES = 2_900
TASK_BYTES = 100
RECORD_BLOCK_BYTES = 12 << 20  # completion-record chunk and routing block
RESULT_BYTES_PER_CLIENT = 700
PYTHON_BYTES = 180 << 20  # the interpreter with numpy, scipy, pandas, simpy
TORCH_BYTES = 610 << 20
TRACE_ROW_BYTES = 44
DATA_BYTES_PER_VALUE = 24
REFILL_BATCHES = 64
SOLVE_WORK_LIMIT = 2e9
"""Largest n C + C^2 for which the product form is solved before the memory check (seconds)."""


@dataclass(frozen=True)
class Estimate:
    """The memory a run needs, by part (bytes), and the number of updates it simulates."""

    parts: tuple[tuple[str, float], ...]
    updates: float

    @property
    def total(self) -> float:
        return float(sum(b for _, b in self.parts))

    def describe(self, largest: int = 3) -> str:
        """``2.1 GB (staleness sketches 1.5 GB, engine 300 MB, ...)``."""
        top = sorted(self.parts, key=lambda p: -p[1])[:largest]
        return f"{format_bytes(self.total)} ({', '.join(f'{name} {format_bytes(b)}' for name, b in top)})"


def format_bytes(n: float) -> str:
    """Bytes in kB/MB/GB/TB (powers of 1000), three significant digits."""
    if not math.isfinite(n):
        return "inf"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kKmMgGtT]?)(i?[bB])?\s*")


def parse_size(text: str, where: str = "--max-memory") -> int:
    """``512M``, ``4G``, ``4GiB``, ``1.5T`` or a number of bytes -> bytes (K, M, G, T are powers of 1024)."""
    match = _SIZE.fullmatch(str(text))
    if not match:
        raise ScenarioError(where, f"must be a size such as 512M, 4G or 4GiB, got {text!r}")
    value = float(match.group(1)) * 1024 ** " KMGT".index((match.group(2) or " ").upper())
    if not math.isfinite(value) or value < 1:
        raise ScenarioError(where, f"must be a positive size, got {text!r}")
    return int(value)


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable and the cgroup limit (Linux), the
    physical memory elsewhere, None when unknown."""
    candidates: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            candidates.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return max(0, min(candidates))


def check_memory(found: Estimate, max_memory: int | None = None) -> Estimate:
    """``found`` if it fits ``max_memory`` (default :func:`available_memory`); else ScenarioError."""
    limit = available_memory() if max_memory is None else max_memory
    if limit is not None and found.total > limit:
        source = "--max-memory" if max_memory is not None else "the memory available on this machine"
        raise ScenarioError("memory", f"the run needs about {found.describe()}, above the limit of "
                            f"{format_bytes(limit)} ({source}); make the scenario smaller, or set the limit with "
                            f"--max-memory SIZE (max_memory= in Python) if the estimate is too high")
    return found


def cheap_to_solve(scenario: Scenario) -> bool:
    """True when the product-form solution costs at most a few seconds (n C + C^2 <= 2e9)."""
    n, C = scenario.n_clients, scenario.concurrency
    return n * C + C * C <= SOLVE_WORK_LIMIT


# ---------------------------------------------------------------------------------------


def _throughput_bound(scenario: Scenario) -> float:
    rho = scenario.p / scenario.mu
    return float(min(1.0 / rho.max(), scenario.concurrency / rho.sum()))


def _updates(scenario: Scenario, throughput: float) -> float:
    """The updates of the run (the tracker keeps the warm-up's too until the window is chosen)."""
    h = scenario.horizon
    return float(h.updates) if h.updates is not None else throughput * h.time


def _tracker_tables(scenario: Scenario, updates: float) -> float:
    from fedsim.tracking import SLOT_ENTRY_BUDGET, KeyedSums, slot_bounds

    n, C = scenario.n_clients, scenario.concurrency
    most, fewest = slot_bounds(scenario.statistics.batches)
    rows = min(updates, most * n) + most * min(C, n)
    if rows > SLOT_ENTRY_BUDGET:  # the slots halve, down to the fewest
        rows = max(SLOT_ENTRY_BUDGET, min(updates, fewest * n) + fewest * min(C, n))
    return 48.0 * (2 * rows + KeyedSums.MIN_PENDING) + 8.0 * most  # rows, and the slots' start times


def _sketches(scenario: Scenario, updates: float, staleness: np.ndarray) -> float:
    from fedsim.sketch import bucket_of
    from fedsim.tracking import SKETCH_ENTRY_BUDGET, SKETCH_SEGMENTS

    k = scenario.p * updates
    tau = np.nan_to_num(np.asarray(staleness, dtype=float), nan=0.0)
    largest = np.minimum(tau * (1.0 + np.log(np.maximum(k, 1.0))), 2.0**62)
    buckets = bucket_of(np.ceil(largest).astype(np.int64)) + 1
    rows = float(np.minimum(k, (SKETCH_SEGMENTS + 1) * buckets).sum())
    if rows > SKETCH_ENTRY_BUDGET:  # segments merge, down to the first half and the rest
        rows = max(SKETCH_ENTRY_BUDGET, float(np.minimum(k, 2 * buckets).sum()))
    return 32.0 * rows + 24.0 * scenario.n_clients


def _parameters(scenario: Scenario, input_shape: tuple[int, ...], classes: int) -> int:
    """The number of parameters of the scenario's model, built on torch's ``meta`` device
    (nothing allocated); 0 when the factory cannot be built there (it is counted once built)."""
    import torch

    from fedsim.training.models import build_model

    cfg = scenario.training
    try:
        with torch.device("meta"):
            module = build_model(cfg.model.name, cfg.model.kwargs, input_shape, classes)
        return int(sum(p.numel() for p in module.parameters()))
    except ScenarioError:
        raise
    except Exception:  # noqa: BLE001 -- a factory that needs real tensors: counted when built
        return 0


def _training(scenario: Scenario, parameters: int | None, activations: int) -> list[tuple[str, float]]:
    from fedsim.training.datasets import dataset_shape

    cfg = scenario.training
    n, C = scenario.n_clients, scenario.concurrency
    shape = dataset_shape(cfg.dataset.name, cfg.dataset.kwargs, n)
    parts: list[tuple[str, float]] = [("torch", TORCH_BYTES)]
    if shape is None:
        return parts
    samples, input_shape, classes = shape
    features = math.prod(input_shape)
    parts.append(("dataset", DATA_BYTES_PER_VALUE * float(samples) * features))
    params = parameters if parameters is not None else _parameters(scenario, input_shape, classes)
    batch = cfg.algorithm["batch_size"]
    versions = 3 if cfg.synchronous else C + 2
    parts.append(("model versions", 4.0 * versions * params))
    parts.append(("activations", 4.0 * activations * (3 * batch + min(8192, samples))))
    parts.append(("batch sampler", 16.0 * n * REFILL_BATCHES * batch))
    return parts


def estimate(scenario: Scenario, *, trace_in_memory: bool = False, solution: Any = None,
             parameters: int | None = None, activations: int = 0) -> Estimate:
    """The memory a run of ``scenario`` needs (see the module docstring). ``solution`` is the
    product-form solution when known (for the staleness sketches; without it E[tau_i] is
    taken as C - 1); ``parameters`` and ``activations`` (values per sample of one forward
    pass) measure the model once built."""
    n, C = scenario.n_clients, scenario.concurrency
    cfg = scenario.training
    parts: list[tuple[str, float]] = [("python", PYTHON_BYTES)]
    if cfg is not None and cfg.synchronous:  # FedAvg: rounds of draws, no network, no tracker
        updates = float(scenario.horizon.updates or 0)
        parts += [("rounds", 1_500.0 * n + RESULT_BYTES_PER_CLIENT * n)]
    else:
        throughput = solution.throughput if solution is not None else _throughput_bound(scenario)
        staleness = solution.staleness if solution is not None else np.full(n, C - 1.0)
        updates = _updates(scenario, throughput)
        batches = 2 * scenario.statistics.batches
        parts += [
            ("engine", CLIENT_BYTES * n + TASK_BYTES * C + RECORD_BLOCK_BYTES),
            ("statistics", _tracker_tables(scenario, updates)),
            ("staleness sketches", _sketches(scenario, updates, staleness)),
            ("results", RESULT_BYTES_PER_CLIENT * n),
            ("analytic", 8.0 * (10 * n + 4 * C)),
        ]
        if has_stations(scenario):
            links = any(getattr(g, link) is not None for g in scenario.groups for link in LINKS)
            stations = 3 if links else 1  # downlink, compute, uplink; or compute alone
            parts += [("engine stations", CLIENT_BYTES * n + TASK_BYTES * C),
                      ("station statistics", 8.0 * batches * n * (1 + 3 * stations) * 2
                       + 8.0 * n * len(scenario.groups))]
        if trace_in_memory:
            parts.append(("trace", 3.0 * TRACE_ROW_BYTES * updates))
    if cfg is not None:
        parts += _training(scenario, parameters, activations)
    return Estimate(tuple(parts), updates)
