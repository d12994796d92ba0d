"""The scenario schema: the extended network's fields, round trips, and the import graph."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedsim.errors import ScenarioError
from fedsim.optimize.objective import OPTIMAL_ROUTINGS
from fedsim.scenario import ClientPower, ServerPower, Station, parse_scenario
from fedsim.sections import SECTIONS

EXTENDED = {
    "name": "extended",
    "concurrency": 4,
    "horizon": {"time": 100.0},
    "server": {"service": {"dist": "exponential", "rate": 20.0}},
    "server_power": {"busy": 150.0, "idle": 60.0},
    "clients": [
        {"group": "phones", "count": 3, "service": {"dist": "exponential", "rate": 0.5},
         "downlink": {"dist": "lognormal", "mean": 0.4, "cv": 2.0},
         "uplink": {"dist": "exponential", "mean": 1.2, "station": "fifo"},
         "power": {"compute": 3.0, "uplink": 1.5}},
        {"group": "servers", "count": 2, "service": {"dist": "exponential", "rate": 4.0}},
    ],
}


def test_links_server_and_power_are_parsed_with_their_defaults():
    s = parse_scenario(EXTENDED)
    phones, servers = s.groups
    assert phones.downlink == Station(phones.downlink.law, "delay")  # the default link discipline
    assert phones.downlink.law.name == "lognormal" and phones.downlink.law.mean == pytest.approx(0.4)
    assert phones.uplink.kind == "fifo" and phones.uplink.law.rate == pytest.approx(1 / 1.2)
    assert phones.power == ClientPower(compute=3.0, uplink=1.5, downlink=0.0, idle=0.0)
    assert servers.downlink is None and servers.uplink is None and servers.power is None
    assert s.server.kind == "fifo" and s.server.law.rate == pytest.approx(20.0)
    assert s.server_power == ServerPower(busy=150.0, idle=60.0)
    assert s.extended


def test_exact_iff_every_fifo_station_is_exponential():
    assert parse_scenario(EXTENDED).exact  # a lognormal delay link keeps the product form
    doc = {**EXTENDED, "clients": [dict(EXTENDED["clients"][0], uplink={"dist": "deterministic", "mean": 1.0,
                                                                         "station": "fifo"})]}
    assert not parse_scenario(doc).exact
    doc = {**EXTENDED, "server": {"service": {"dist": "gamma", "mean": 0.05, "cv": 0.5}}}
    assert not parse_scenario(doc).exact


def test_base_scenario_is_not_extended_and_round_trips():
    base = {k: v for k, v in EXTENDED.items() if k not in ("server", "server_power")}
    base["clients"] = [{"group": "a", "count": 2, "service": {"dist": "exponential", "rate": 1.0}}]
    s = parse_scenario(base)
    assert not s.extended and s.server is None
    assert "server" not in s.to_dict() and set(s.to_dict()["clients"][0]) == {"group", "count", "service"}


def test_to_dict_parses_back_to_the_same_scenario():
    s = parse_scenario(EXTENDED)
    again = parse_scenario(s.to_dict())
    assert again.groups == s.groups and again.server == s.server and again.server_power == s.server_power


def test_section_routings_are_the_optimisers():
    assert set(SECTIONS["optimization"].routings) == set(OPTIMAL_ROUTINGS)
    with pytest.raises(ScenarioError, match="allowed: .*optimal-wall-clock"):
        parse_scenario({**EXTENDED, "routing": "fastest"})


def test_scenario_module_depends_on_no_room_above_it():
    code = ("import sys, fedsim.scenario; "
            "bad = sorted(m for m in sys.modules if m.startswith(('fedsim.optimize', 'fedsim.training', "
            "'fedsim.engine', 'fedsim.run', 'fedsim.report'))); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
