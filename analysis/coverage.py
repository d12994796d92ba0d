"""Coverage of fedsim's confidence intervals over independent replications.

    python analysis/coverage.py [CASE ...] [--seeds 200] [--time T | --updates N]

Runs ``--seeds`` independent seeds of each case in this process and prints, for the
throughput and for every client's mean staleness, how often the 95% interval contains the
exact product-form value (every case has exponential services, so the values are exact), and
how many runs were flagged (``stationary`` false or batch means failing their independence
test). "covered" counts every run; "covered | not flagged" only the runs without a flag;
"misleading" is the fraction of runs that carry no flag and miss the exact value.

Cases: ``heterogeneous`` (the network of scenarios/heterogeneous.yaml: 100 clients, uniform
routing, C = 100), ``mild`` (rates 1, 1, 1, 0.6, uniform, C = 20), ``tied`` (rates 0.6, 0.6,
1, 1, uniform, C = 30), ``heavy`` (the classic worked example at C = 20: rates 1,
2, 5, 10, weights 0.4, 0.3, 0.2, 0.1), and the two stationary cases of tests/test_coverage.py:
``heavy8`` (the worked example at C = 8, 20,000 updates) and ``tied4`` (rates 1, 1, 4, 4,
uniform, C = 4, 20,000 updates). ``--time`` or ``--updates`` sets the horizon (defaults per
case).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedsim.analytic import solve  # noqa: E402
from fedsim.run import simulate  # noqa: E402
from fedsim.scenario import parse_scenario  # noqa: E402


def _one_per_client(rates: list[float], weights: list[float] | None = None) -> list[dict[str, Any]]:
    weights = weights or [1.0] * len(rates)
    return [{"group": f"c{k}", "count": 1, "routing_weight": w, "service": {"dist": "exponential", "rate": r}}
            for k, (r, w) in enumerate(zip(rates, weights))]


CASES: dict[str, tuple[dict[str, float], int, list[dict[str, Any]]]] = {
    # (default horizon, concurrency, client groups)
    "heterogeneous": ({"time": 500.0}, 100,
                      yaml.safe_load((REPO / "scenarios" / "heterogeneous.yaml").read_text())["clients"]),
    "mild": ({"time": 1000.0}, 20, _one_per_client([1.0, 1.0, 1.0, 0.6])),
    "tied": ({"time": 3000.0}, 30, _one_per_client([0.6, 0.6, 1.0, 1.0])),
    "heavy": ({"time": 1000.0}, 20, _one_per_client([1.0, 2.0, 5.0, 10.0], [0.4, 0.3, 0.2, 0.1])),
    "heavy8": ({"updates": 20_000}, 8, _one_per_client([1.0, 2.0, 5.0, 10.0], [0.4, 0.3, 0.2, 0.1])),
    "tied4": ({"updates": 20_000}, 4, _one_per_client([1.0, 1.0, 4.0, 4.0])),
}


def case_scenario(case: str, seed: int, horizon: dict[str, float] | None = None) -> Any:
    """The scenario of ``case`` with ``seed`` (default warm-up and statistics settings)."""
    default, concurrency, groups = CASES[case]
    routing = "weights" if "routing_weight" in groups[0] else "uniform"
    return parse_scenario({"name": case, "seed": seed, "concurrency": concurrency, "routing": routing,
                           "horizon": horizon or default, "clients": groups})


def flagged(stats_: Any) -> bool:
    """True when the run says its intervals are not to be trusted (fields absent: never)."""
    return getattr(stats_, "warning", None) is not None


def replicate(case: str, seeds: int, horizon: dict[str, float] | None = None) -> dict[str, Any]:
    """Coverage figures of ``case`` over ``seeds`` replications (seeds 1..seeds)."""
    first = case_scenario(case, 1, horizon)
    exact = solve(first.mu, first.p, first.concurrency)
    cover_thr, cover_stale, flags, lag1, transient = [], [], [], [], []
    for seed in range(1, seeds + 1):
        st = simulate(case_scenario(case, seed, horizon)).stats
        c = st.clients
        cover_thr.append(abs(st.throughput - exact.throughput) <= st.throughput_ci)
        cover_stale.append(np.abs(c.staleness_mean - exact.staleness) <= c.staleness_ci)
        flags.append(flagged(st))
        transient.append(getattr(st, "stationary", True) is False)
        lag1.append(st.batch_test.statistic if hasattr(st, "batch_test") else np.nan)
    thr, stale, flag = np.array(cover_thr), np.array(cover_stale), np.array(flags)
    return {"exact": exact, "throughput": thr, "staleness": stale, "flagged": flag, "scenario": first,
            "statistic": np.array(lag1, dtype=float), "transient": np.array(transient)}


def binomial_band(runs: int, level: float = 0.95, alpha: float = 0.01) -> tuple[float, float]:
    """Acceptance region of a coverage rate: the central 1 - alpha of Binomial(runs, level) / runs."""
    lo, hi = stats.binom.ppf([alpha / 2, 1 - alpha / 2], runs, level)
    return float(lo / runs), float(hi / runs)


def print_case(case: str, r: dict[str, Any], seconds: float) -> None:
    s, flag = r["scenario"], r["flagged"]
    runs = len(flag)
    ok = ~flag
    length = f"T = {s.horizon.time:g}" if s.horizon.time is not None else f"{s.horizon.updates:,} updates"
    print(f"{case}: n = {s.n_clients}, C = {s.concurrency}, {length}, {runs} seeds "
          f"({seconds:.0f} s); flagged {flag.mean():.0%} (not stationary {r['transient'].mean():.0%}); 99% band of a 95% rate over {runs} runs "
          f"{binomial_band(runs)[0]:.3f}-{binomial_band(runs)[1]:.3f}")
    groups = [g.name for g in s.groups]
    rows = [("throughput", r["throughput"][:, None], r["exact"].throughput)]
    for gi, name in enumerate(groups):
        members = np.flatnonzero(s.client_group == gi)
        rows.append((f"staleness {name}", r["staleness"][:, members], r["exact"].staleness[members[0]]))
    print(f"  {'figure':<24}{'exact':>10}{'covered':>10}{'| not flagged':>15}{'misleading':>12}")
    for label, cov, value in rows:
        given = cov[ok].mean() if ok.any() else float("nan")
        mislead = (~cov & ok[:, None]).mean()
        print(f"  {label:<24}{value:>10.4g}{cov.mean():>10.3f}{given:>15.3f}{mislead:>12.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", type=int, default=200)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--time", type=float, default=None, help="horizon time (default per case)")
    length.add_argument("--updates", type=int, default=None, help="horizon in updates")
    args = parser.parse_args()
    horizon = {"time": args.time} if args.time else {"updates": args.updates} if args.updates else None
    for case in args.cases:
        start = time.perf_counter()
        r = replicate(case, args.seeds, horizon)
        print_case(case, r, time.perf_counter() - start)


if __name__ == "__main__":
    main()
