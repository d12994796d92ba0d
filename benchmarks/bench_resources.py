"""The resource estimate against the measured peak memory of `fedsim run`, on small to large runs.

Each case is a `fedsim run SCENARIO --quiet` in a child process; its peak resident memory
comes from ``os.wait4``; the estimate is ``fedsim.run.preflight(...).estimate`` (what
`fedsim validate` prints and what the resource check compares with the limit). The largest
case is the feasible large run n = 100,000 clients, C = 10,000 tasks, 10^6 updates.
Target: estimate / peak within [0.5, 2] for every case.

    .venv/bin/python benchmarks/bench_resources.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedsim.resources import format_bytes  # noqa: E402
from fedsim.run import preflight  # noqa: E402
from fedsim.scenario import load_scenario  # noqa: E402


def network(n: int, C: int, updates: int) -> dict:
    return {"name": f"n{n}-C{C}", "seed": 1, "concurrency": C, "horizon": {"updates": updates, "warmup": updates // 10},
            "clients": [{"group": "fast", "count": n // 2, "service": {"dist": "exponential", "rate": 1.0}},
                        {"group": "slow", "count": n - n // 2, "service": {"dist": "exponential", "rate": 0.5}}]}


CASES = [
    ("scenarios/default.yaml", None),
    ("n = 10,000, C = 1,000, 10^6 updates", network(10_000, 1_000, 1_000_000)),
    ("n = 100,000, C = 10,000, 10^6 updates", network(100_000, 10_000, 1_000_000)),
    ("scenarios/train_synthetic.yaml, 5,000 updates", "train"),
]


def measure(path: Path, out: Path, extra: list[str]) -> tuple[int, float]:
    """(peak resident bytes, wall seconds) of `fedsim run path`."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "run", str(path), "--out", str(out), "--quiet",
                             *extra], cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"fedsim run {path} failed")
    return usage.ru_maxrss * 1024, time.perf_counter() - start


def main() -> None:
    print(f"{'case':<44}{'estimate':>12}{'peak RSS':>12}{'ratio':>8}{'wall':>9}")
    worst = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec in CASES:
            extra: list[str] = []
            if spec is None:
                path = REPO / label
            elif spec == "train":
                path, extra = REPO / "scenarios" / "train_synthetic.yaml", ["--set", "horizon.updates=5000"]
            else:
                path = Path(tmp) / f"{spec['name']}.yaml"
                path.write_text(yaml.safe_dump(spec))
            overrides = {"horizon.updates": 5000} if extra else None
            found = preflight(load_scenario(path, overrides)).estimate
            peak, wall = measure(path, Path(tmp) / "out", extra)
            ratio = found.total / peak
            worst.append(ratio)
            print(f"{label:<44}{format_bytes(found.total):>12}{format_bytes(peak):>12}{ratio:>8.2f}{wall:>8.1f}s")
    print(f"estimate / peak from {min(worst):.2f} to {max(worst):.2f} (target within [0.5, 2])")


if __name__ == "__main__":
    main()
