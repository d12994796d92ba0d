"""The client-behaviour fields of a scenario: parsing, defaults, round trips, one-line errors
naming the field, trace files, and the exact cases of the analysis."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from fedsim.behaviour import OnOff, SpeedProfile, StepSum, exact_case
from fedsim.behaviour_analytic import client_factors
from fedsim.errors import ScenarioError
from fedsim.scenario import Streams, load_scenario, parse_scenario

BASE = {
    "name": "behaviour", "seed": 1, "concurrency": 4, "horizon": {"updates": 1000},
    "clients": [
        {"group": "phones", "count": 3, "service": {"dist": "lognormal", "mean": 0.5, "cv": 1.0, "per": "step",
                                                     "steps": 4},
         "availability": {"on": {"dist": "exponential", "mean": 30.0}, "off": {"dist": "exponential", "mean": 10.0},
                          "offline": "drop"},
         "speed_profile": {"period": 1440, "factors": [1.0, 0.5, 0.8]}, "dropout": 0.05},
        {"group": "servers", "count": 2, "service": {"dist": "exponential", "rate": 4.0}},
    ],
}


def with_group(**fields) -> dict:
    doc = copy.deepcopy(BASE)
    doc["clients"][0] = {"group": "phones", "count": 3, "service": {"dist": "exponential", "rate": 1.0}} | fields
    return doc


def test_fields_are_parsed_with_their_meaning():
    s = parse_scenario(BASE)
    phones, servers = s.groups
    assert isinstance(phones.service, StepSum) and phones.service.steps == 4
    assert phones.service.mean == pytest.approx(2.0) and phones.service.cv == pytest.approx(0.5)
    schedule = phones.availability.schedule
    assert isinstance(schedule, OnOff) and phones.availability.offline == "drop"
    assert (schedule.on.name, schedule.on.mean, schedule.off.mean) == ("exponential", 30.0, 10.0)
    assert schedule.fraction == pytest.approx(0.75)
    assert phones.speed_profile == SpeedProfile(1440.0, (1.0, 0.5, 0.8))
    assert phones.dropout == 0.05 and phones.behaves and not servers.behaves
    assert s.behaves and not s.exact
    assert np.allclose(s.mean_service, [2.0] * 3 + [0.25] * 2)
    a, c = client_factors(s)
    assert np.allclose(a, [0.75] * 3 + [1, 1]) and np.allclose(c, [0.75 * (2.3 / 3)] * 3 + [1, 1])


def test_round_trip_and_yaml_on_off_keys(write_yaml):
    s = parse_scenario(BASE)
    again = parse_scenario(s.to_dict())
    assert again.groups == s.groups
    # YAML 1.1 reads the keys on and off as booleans; they are taken back as names
    path = write_yaml(BASE)
    assert "true:" not in path.read_text()
    text = path.read_text().replace("'on'", "on").replace("'off'", "off")
    path.write_text(text)
    assert load_scenario(path).groups == s.groups


def test_no_behaviour_fields_leave_the_scenario_as_it_was():
    doc = with_group()
    s = parse_scenario(doc)
    assert not s.behaves and s.to_dict()["clients"][0].keys() == {"group", "count", "service"}
    assert parse_scenario(with_group(dropout=0.0)).groups == s.groups


@pytest.mark.parametrize("fields, path, words", [
    ({"service": {"dist": "exponential", "rate": 1.0, "per": "round"}}, "clients[0].service.per", "task, step"),
    ({"service": {"dist": "exponential", "rate": 1.0, "steps": 3}}, "clients[0].service.steps", "per: step"),
    ({"service": {"dist": "exponential", "rate": 1.0, "per": "step", "steps": 0}}, "clients[0].service.steps", ">= 1"),
    ({"availability": {"on": {"dist": "exponential", "mean": 3.0}}}, "clients[0].availability.off", "missing"),
    ({"availability": {"on": {"dist": "exponential", "mean": -3.0}, "off": {"dist": "exponential", "mean": 1.0}}},
     "clients[0].availability.on.mean", "positive"),
    ({"availability": {"on": {"dist": "exponential", "mean": 3.0}, "off": {"dist": "exponential", "mean": 1.0},
                       "offline": "kill"}}, "clients[0].availability.offline", "pause, drop"),
    ({"availability": {"on": {"dist": "exponential", "mean": 3.0}, "off": {"dist": "exponential", "mean": 1.0},
                       "period": 5}}, "clients[0].availability.period", "only used with trace"),
    ({"availability": {"trace": "t.csv", "on": {"dist": "exponential", "mean": 3.0}}}, "clients[0].availability.on",
     "not both"),
    ({"availability": {"sometimes": True}}, "clients[0].availability.sometimes", "allowed: on, off, trace"),
    ({"speed_profile": {"period": 10}}, "clients[0].speed_profile.factors", "missing"),
    ({"speed_profile": {"period": 10, "factors": [1.0, 0.0]}}, "clients[0].speed_profile.factors[1]", "positive"),
    ({"speed_profile": {"period": -1, "factors": [1.0]}}, "clients[0].speed_profile.period", "positive"),
    ({"speed_profile": {"period": 10, "factors": []}}, "clients[0].speed_profile.factors", "non-empty"),
    ({"dropout": 1.0}, "clients[0].dropout", "[0, 1)"),
    ({"dropout": -0.1}, "clients[0].dropout", "between"),
    ({"dropout": "often"}, "clients[0].dropout", "number"),
])
def test_bad_fields_are_one_line_errors_naming_the_field(fields, path, words):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(with_group(**fields))
    assert err.value.path == path and words in err.value.message and "\n" not in str(err.value)


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, words", [
    ("client,begin,end\na,0,1\n", "missing start"),
    ("client,start,end\na,0,x\n", "line 2: end 'x' is not a number"),
    ("client,start,end\na,2,1\n", "line 2: need 0 <= start < end"),
    ("client,start,end\na,0,3\na,2,4\n", "line 3: client 'a' interval [2, 4) overlaps"),
    ("client,start,end\n", "a header and no rows"),
    ("", "is empty"),
    ("client,start,end\na,0,30\n", "line 2: end 30 is beyond the period 24"),
])
def test_bad_trace_files_are_one_line_errors(tmp_path, text, words):
    trace = write(tmp_path, "t.csv", text)
    doc = with_group(availability={"trace": str(trace), "period": 24})
    with pytest.raises(ScenarioError) as err:
        parse_scenario(doc)
    assert err.value.path == "clients[0].availability.trace" and words in err.value.message


def test_trace_files_must_be_regular(tmp_path):
    with pytest.raises(ScenarioError, match="it is a folder; give a regular file"):
        parse_scenario(with_group(availability={"trace": str(tmp_path)}))
    with pytest.raises(ScenarioError, match="no such file 'missing.csv'"):
        parse_scenario(with_group(availability={"trace": "missing.csv"}), base_dir=tmp_path)


def test_trace_devices_are_cycled_over_the_group_and_repeat(tmp_path):
    trace = write(tmp_path, "t.csv", "# comment\nclient,end,start\nb,2,1\na,4,0\na,6,4\nb,10,8\n")
    s = parse_scenario(with_group(availability={"trace": "t.csv"}), base_dir=tmp_path)
    schedule = s.groups[0].availability.schedule
    assert schedule.period == 10.0 and schedule.labels == ("b", "a")
    assert np.array_equal(schedule.intervals(1)[1], [6.0])  # touching intervals joined
    assert schedule.device(2) == 0  # client 2 follows the first device again
    assert np.allclose(s.groups[0].availability.fractions(3), [0.3, 0.6, 0.3])
    assert schedule.online_at(1, 25.5) and not schedule.online_at(1, 27.0)
    assert schedule.mean_on(1) == pytest.approx(6.0)


def test_replayed_compute_durations(tmp_path):
    write(tmp_path, "durations.csv", "client,duration\nx,1.0\nx,3.0\ny,0.5\n")
    doc = with_group(service={"dist": "trace", "file": "durations.csv"})
    s = parse_scenario(doc, base_dir=tmp_path)
    assert np.allclose(s.mean_service[:3], [2.0, 0.5, 2.0])
    assert s.groups[0].service.mean == pytest.approx(1.5)  # the pooled law
    write(tmp_path, "bad.csv", "client,duration\nx,-1\n")
    with pytest.raises(ScenarioError, match="line 2: durations must be positive") as err:
        parse_scenario(with_group(service={"dist": "trace", "file": "bad.csv"}), base_dir=tmp_path)
    assert err.value.path == "clients[0].service.file"


def test_local_steps_come_from_training():
    doc = with_group(service={"dist": "exponential", "rate": 2.0, "per": "step"})
    doc["training"] = {"algorithm": {"name": "fedbuff", "local_steps": 5}}
    s = parse_scenario(doc)
    assert s.groups[0].service.steps == 5 and s.mean_service[0] == pytest.approx(2.5)
    assert parse_scenario(s.to_dict()).groups == s.groups
    doc["clients"][0]["service"]["steps"] = 5
    with pytest.raises(ScenarioError, match="comes from training.algorithm.local_steps") as err:
        parse_scenario(doc)
    assert err.value.path == "clients[0].service.steps"


def test_fedavg_refuses_behaviour():
    doc = with_group(dropout=0.1)
    doc["training"] = {"algorithm": {"name": "fedavg", "clients_per_round": 2}}
    with pytest.raises(ScenarioError, match="round-based") as err:
        parse_scenario(doc)
    assert err.value.path == "clients[0].dropout"


def test_exact_cases():
    exp = {"dist": "exponential", "rate": 1.0}
    onoff = {"on": {"dist": "exponential", "mean": 2.0}, "off": {"dist": "exponential", "mean": 1.0}}
    profile = {"period": 5.0, "factors": [1.0, 0.5]}

    def case(concurrency=4, **fields):
        doc = with_group(service=exp, **fields)
        doc["concurrency"] = concurrency
        doc["clients"][1]["service"] = exp
        return exact_case(parse_scenario(doc))

    assert case(dropout=0.2) == "dropout"
    assert case(availability=onoff) is None and case(1, availability=onoff) == "Markov chain (C = 1)"
    assert case(1, availability=onoff, speed_profile=profile) is None
    assert case(speed_profile=profile) is None  # the servers keep speed 1: no common clock
    doc = with_group(service=exp, speed_profile=profile)
    doc["clients"][1] |= {"service": exp, "speed_profile": profile}
    assert exact_case(parse_scenario(doc)) == "shared speed profile"
    gamma = {"on": {"dist": "gamma", "mean": 2.0, "cv": 0.5}, "off": {"dist": "exponential", "mean": 1.0}}
    assert case(1, availability=gamma) is None


def test_behaviour_streams_come_after_the_others():
    assert Streams.PURPOSES[-2:] == ("availability", "dropout")
    assert Streams.PURPOSES[:7] == ("service", "routing", "training", "downlink", "uplink", "server", "ties")
