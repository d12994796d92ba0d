"""The run folder of the extended network: station and energy columns, server keys, the figure.

The analytical columns are checked against the mean value analysis of
tests/test_engine_stations.py (an independent computation), the simulated ones against the
analytical ones within their intervals; a base scenario's files keep exactly the base columns.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import bonferroni_critical, bonferroni_z
from fedsim.cli import main
from fedsim.report import station_column_order
from fedsim.scenario import parse_scenario
from test_engine_stations import POWER, exact, exp

BASE_COLUMNS = ["client", "group", "p", "mean_service", "service_cv", "completions", "staleness_sim", "staleness_ci",
                "staleness_analytic", "staleness_rel_error", "staleness_p50", "staleness_p90", "staleness_p99",
                "staleness_max", "sojourn_sim", "sojourn_ci", "sojourn_analytic", "queue_sim", "queue_ci",
                "queue_analytic"]
SERVER_KEYS = [f"{key}_{kind}" for key in ("server_queue", "server_utilisation", "power", "energy_per_update")
               for kind in ("sim", "ci", "analytic")]

EXTENDED = {
    "name": "outputs", "seed": 2, "concurrency": 5, "horizon": {"updates": 60_000, "warmup": 3_000},
    "server": {"service": {"dist": "exponential", "rate": 5.0}},
    "server_power": {"busy": 30.0, "idle": 10.0},
    "clients": [
        {"group": "phones", "count": 3, "service": {"dist": "exponential", "rate": 1.0}, "power": POWER,
         "downlink": {"dist": "lognormal", "mean": 0.3, "cv": 1.5}, "uplink": exp(0.4, "fifo")},
        {"group": "laptops", "count": 2, "service": {"dist": "exponential", "rate": 3.0}, "uplink": exp(0.1)},
    ],
}


def run(write_yaml, tmp_path, doc, name="out"):
    out = tmp_path / name
    assert main(["run", str(write_yaml(doc, f"{name}.yaml")), "--out", str(out), "--quiet"]) == 0
    return pd.read_csv(out / "clients.csv"), json.loads((out / "summary.json").read_text()), out


def test_extended_run_folder(write_yaml, tmp_path):
    clients, summary, out = run(write_yaml, tmp_path, EXTENDED)
    assert list(clients.columns) == BASE_COLUMNS + station_column_order()
    assert all(key in summary for key in SERVER_KEYS) and summary["exact"] is True
    assert (out / "time_breakdown.png").stat().st_size > 20_000
    model = exact(parse_scenario(EXTENDED))
    # analytical columns: fedsim.analytic as wired by the run, against an independent MVA
    for k, name in enumerate(("downlink", "compute", "uplink")):
        assert np.allclose(clients[f"{name}_queue_analytic"], model.queue[k], rtol=1e-9, atol=1e-12)
        assert np.allclose(clients[f"{name}_time_analytic"], model.time[k], rtol=1e-9, atol=1e-12)
    assert np.allclose(clients["energy_analytic"], model.power, rtol=1e-9, atol=1e-12)
    assert summary["server_queue_analytic"] == pytest.approx(model.server_queue, rel=1e-9)
    assert summary["energy_per_update_analytic"] == pytest.approx(model.energy_per_update, rel=1e-9)
    assert np.allclose(clients["staleness_analytic"], model.staleness, rtol=1e-9)
    # queue_* counts the client's tasks anywhere in the network: sum over its stations and its
    # share of the server queue; sojourn_* is the whole round trip
    route = model.queue.sum(axis=0) + clients["p"] * model.server_queue
    assert np.allclose(clients["queue_analytic"], route, rtol=1e-9)
    assert np.allclose(clients["sojourn_analytic"], model.time.sum(axis=0) + model.server_time, rtol=1e-9)
    # simulated columns within Bonferroni intervals of the analytical ones
    batches = summary["batches"]
    sims = [(clients[f"{c}_sim"], clients[f"{c}_ci"], clients[f"{c}_analytic"])
            for c in ("staleness", "sojourn", "queue", *(f"{s}_{f}" for s in ("downlink", "compute", "uplink")
                                                         for f in ("queue", "time")), "energy")]
    sims += [(np.array([summary[f"{k}_sim"]]), np.array([summary[f"{k}_ci"]]), np.array([summary[f"{k}_analytic"]]))
             for k in ("server_queue", "server_utilisation", "power", "energy_per_update")]
    present = [(s[a > 0], c[a > 0], a[a > 0]) for s, c, a in ((np.asarray(x, float) for x in t) for t in sims)]
    crit = bonferroni_critical(sum(a.size for _, _, a in present), batches)
    for sim, ci, analytic in present:
        assert np.all(bonferroni_z(sim, ci, analytic, batches=batches, level=0.95) < crit)
    # a link a client lacks holds no task and takes no time
    laptops = clients["group"] == "laptops"
    assert (clients.loc[laptops, ["downlink_queue_sim", "downlink_time_sim", "downlink_queue_analytic"]] == 0).all().all()


def test_base_scenario_keeps_the_base_files(write_yaml, tmp_path):
    doc = {k: v for k, v in EXTENDED.items() if k not in ("server", "server_power")}
    doc["clients"] = [{k: v for k, v in g.items() if k not in ("downlink", "uplink", "power")} for g in doc["clients"]]
    clients, summary, out = run(write_yaml, tmp_path, doc)
    assert list(clients.columns) == BASE_COLUMNS
    assert not any(key in summary for key in SERVER_KEYS) and not (out / "time_breakdown.png").exists()
    # powers alone make it a network with stations: energy of compute and idle, no link, no server
    doc["clients"][0]["power"] = POWER
    clients, summary, _ = run(write_yaml, tmp_path, doc, "powered")
    assert list(clients.columns) == BASE_COLUMNS + station_column_order()
    assert summary["server_queue_sim"] == summary["server_utilisation_analytic"] == 0
    assert (clients[["uplink_time_sim", "downlink_queue_analytic"]] == 0).all().all()
    assert clients.loc[0, "compute_time_analytic"] == pytest.approx(clients.loc[0, "sojourn_analytic"], rel=1e-12)


def test_analytic_command_on_the_extended_network(write_yaml, tmp_path):
    out = tmp_path / "an"
    assert main(["analytic", str(write_yaml(EXTENDED)), "--out", str(out)]) == 0
    clients = pd.read_csv(out / "clients.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert {"compute_time_analytic", "uplink_queue_analytic", "energy_analytic"} <= set(clients.columns)
    assert summary["power_analytic"] > 0 and summary["mean_staleness_analytic"] == pytest.approx(4.0)
