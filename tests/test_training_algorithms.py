"""Update rules against hand-computed cases, the snapshot/staleness contract with the engine,
the bound on model versions, exact equality with sequential SGD, and the FedAvg round loop."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fedsim.run import simulate
from fedsim.scenario import Streams, parse_scenario
from fedsim.training.algorithms import ALGORITHMS, ClientWork, Context
from fedsim.training.algorithms.fedasync import staleness_weight
from fedsim.training.config import parse_training
from fedsim.training.session import TrainingSession
from fedsim.training.versions import ModelVersions
from fedsim.training.workload import build_workload


def scenario_doc(algorithm: dict, *, concurrency: int = 4, updates: int = 600, groups=None, seed: int = 9,
                 model="logistic", dataset=None, routing: str = "uniform") -> dict:
    groups = groups or [(3, 2.0, 1.0), (3, 0.5, 1.0)]
    return {
        "name": "alg", "seed": seed, "concurrency": concurrency, "horizon": {"updates": updates}, "routing": routing,
        "clients": [{"group": f"g{k}", "count": count, "service": {"dist": "exponential", "rate": rate}}
                    | ({"routing_weight": w} if routing == "weights" else {})
                    for k, (count, rate, w) in enumerate(groups)],
        "training": {"dataset": dataset or {"name": "synthetic", "dim": 6, "classes": 3, "samples": 40},
                     "model": model, "algorithm": algorithm, "eval": {"every_updates": updates}},
    }


def run(doc: dict, **kwargs) -> TrainingSession:
    scenario = parse_scenario(doc)
    session = TrainingSession(scenario)
    simulate(scenario, observers=[session.observer], **kwargs)
    session.finish()
    return session


# ---------------------------------------------------------------------------------------
# hand-computed cases, on a two-coordinate "model" and given client results


def rule(name: str, w0=(1.0, 2.0), p=(0.5, 0.25, 0.25), sizes=(1, 1, 1), **fields):
    params = parse_training({"algorithm": {"name": name, **fields}}).algorithm.kwargs
    model = ModelVersions(torch.tensor(w0), lambda t: [t])
    return ALGORITHMS[name](params, Context(model, np.array(p), np.array(sizes))), model


def test_staleness_functions_of_fedasync():
    assert staleness_weight("constant", 7, 0.5, 4) == 1.0
    assert staleness_weight("polynomial", 3, 0.5, 4) == 0.5  # (3 + 1)^(-1/2)
    assert staleness_weight("hinge", 4, 10, 4) == 1.0
    assert staleness_weight("hinge", 6, 10, 4) == pytest.approx(1 / 21)  # 1 / (10 (6 - 4) + 1)


@pytest.mark.parametrize(("algorithm", "work"), [
    ({"name": "generalized_async_sgd", "lr": 0.1}, ClientWork(1, 0.1, "gradient")),
    ({"name": "async_sgd", "local_steps": 3}, ClientWork(3, 0.05, "delta")),
    ({"name": "fedasync", "local_steps": 2, "rho": 0.5}, ClientWork(2, 0.05, "model", prox=0.5)),
    ({"name": "fedbuff"}, ClientWork(1, 0.05, "delta")),  # FedBuff sends w_client - w_s even after one step
    ({"name": "fedavg", "local_steps": 4}, ClientWork(4, 0.05, "model")),
])
def test_each_rule_declares_the_work_its_clients_compute(algorithm, work):
    params = dict(algorithm)
    r, _ = rule(params.pop("name"), **params)
    assert r.work == work


def test_fedasync_mixes_the_client_model_with_the_discounted_weight():
    r, model = rule("fedasync", alpha=0.6, staleness="polynomial", a=0.5)
    v = model.share(0)
    r.apply(0, v.flat + torch.tensor([2.0, -4.0]), staleness=3, version_step=v.step)  # a_t = 0.6 * 4^(-1/2) = 0.3
    torch.testing.assert_close(model.w, torch.tensor([1.0 + 0.3 * 2.0, 2.0 + 0.3 * -4.0]))
    torch.testing.assert_close(v.flat, torch.tensor([1.0, 2.0]))  # the task's snapshot is untouched


def test_fedbuff_buffers_k_weighted_deltas_then_applies_their_mean():
    r, model = rule("fedbuff", w0=(0.0, 0.0), buffer_size=2, server_lr=1.5)
    old = model.share(0)
    model.add_(torch.tensor([1.0, 1.0]))  # a server step while `old` is in flight
    new = model.share(1)
    r.apply(0, torch.tensor([2.0, 0.0]), staleness=1, version_step=old.step)  # one step behind: weight 1 / sqrt(2)
    assert torch.equal(model.w, torch.tensor([1.0, 1.0])) and r.count == 1 and model.step == 1
    r.apply(1, torch.tensor([0.0, 4.0]), staleness=0, version_step=new.step)  # weight 1; full buffer: w += 1.5 * mean
    expected = torch.tensor([1.0 + 1.5 / 2 * 2.0 / math.sqrt(2.0), 1.0 + 1.5 / 2 * 4.0])
    torch.testing.assert_close(model.w, expected)
    assert r.count == 0 and torch.equal(r.buffer, torch.zeros(2)) and model.step == 2


@pytest.mark.parametrize(("name", "weights"), [("generalized_async_sgd", (2 / 3, 4 / 3, 4 / 3)),
                                               ("async_sgd", (1.0, 1.0, 1.0))])
def test_async_sgd_steps_with_and_without_the_importance_weight(name, weights):
    """p = (1/2, 1/4, 1/4), n = 3: Generalized AsyncSGD weighs client i by 1 / (n p_i)."""
    g = torch.tensor([0.5, -1.0])
    r, model = rule(name, lr=0.1)
    w = torch.tensor([1.0, 2.0])
    for client in range(3):
        r.apply(client, g, staleness=0, version_step=model.step)
        w = w - 0.1 * weights[client] * g
    torch.testing.assert_close(model.w, w)
    r2, model2 = rule(name, lr=0.1, local_steps=3)
    r2.apply(1, torch.tensor([0.3, 0.6]), staleness=0, version_step=0)  # local steps: w += (w_client - w_s) / (n p_i)
    torch.testing.assert_close(model2.w, torch.tensor([1.0 + weights[1] * 0.3, 2.0 + weights[1] * 0.6]))


def test_fedavg_averages_the_round_models_weighted_by_data_size():
    r, model = rule("fedavg", w0=(1.0, 1.0), sizes=(1, 3, 5))
    r.aggregate([0, 1], [torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])])  # 1 and 3 samples
    torch.testing.assert_close(model.w, torch.tensor([(2.0 + 3 * 1.0) / 4, (1.0 + 3 * 3.0) / 4]))


def test_model_versions_copy_on_change_only_while_tasks_hold_the_model():
    views = lambda t: [t[:2], t[2:]]  # noqa: E731 -- two "parameters"
    model = ModelVersions(torch.tensor([1.0, 2.0, 3.0]), views)
    model.add_([torch.tensor([1.0, 1.0]), torch.tensor([1.0])], alpha=2.0)  # nobody holds it: in place
    first = model.current
    assert torch.equal(model.w, torch.tensor([3.0, 4.0, 5.0])) and model.step == 1 and len(model.held) == 1
    held = model.share(7)
    model.add_(torch.tensor([1.0, 0.0, -1.0]))  # held: written out of place, the snapshot stays
    assert model.current is not first and torch.equal(held.flat, torch.tensor([3.0, 4.0, 5.0]))
    assert torch.equal(model.w, torch.tensor([4.0, 4.0, 4.0])) and (held.first, held.last, held.step) == (7, 7, 1)
    model.share(8)
    model.lerp_(torch.zeros(3), 0.25)
    assert torch.equal(model.w, torch.tensor([3.0, 3.0, 3.0])) and len(model.held) == 3 == model.max_alive
    model.release(held)
    assert len(model.held) == 2 and model._pool == [held]  # its buffer is reused by the next copy
    model.writable()  # held by no task: changed in place
    assert model.current is not held and model.step == 4
    model.share(9)
    model.writable()  # held: copied, into the pooled buffer
    assert model.current is held and model.step == 5 and len(model.held) == 3


# ---------------------------------------------------------------------------------------
# with the engine


def test_async_sgd_with_one_client_and_one_task_is_sequential_sgd_exactly():
    doc = scenario_doc({"name": "async_sgd", "lr": 0.2, "batch_size": 8}, concurrency=1, updates=150,
                       groups=[(1, 1.0, 1.0)], model={"name": "mlp", "hidden": [7]})
    doc["training"]["batched"] = False  # autograd, as torch.optim.SGD
    session = run(doc)
    wl = build_workload(parse_scenario(doc))  # the same initial model and the same batch sequence
    module = wl.flat.module
    for p, v in zip(wl.flat.params, wl.flat.views(wl.w0)):
        p.data, p.grad = v.clone(), None
    opt = torch.optim.SGD(module.parameters(), lr=0.2)
    for _ in range(150):
        idx = torch.from_numpy(wl.sampler.next(0)[0])
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(wl.trainer.x[idx]), wl.trainer.y[idx]).backward()
        opt.step()
    assert torch.equal(session.w, torch.cat([p.detach().reshape(-1) for p in module.parameters()]))


def test_rule_sees_the_staleness_the_tracker_records_task_by_task(tmp_path):
    doc = scenario_doc({"name": "generalized_async_sgd", "lr": 0.05}, concurrency=6, updates=500)
    scenario = parse_scenario(doc)
    session = TrainingSession(scenario)
    seen, steps = [], []
    apply = session.observer.apply

    def spy(client, result, staleness, version_step):
        seen.append((client, staleness))
        steps.append(session.model.step - version_step)  # model changes since the snapshot
        apply(client, result, staleness, version_step)

    session.observer.apply = spy
    simulate(scenario, observers=[session.observer], trace=tmp_path / "trace.parquet")
    trace = pd.read_parquet(tmp_path / "trace.parquet")
    assert len(seen) == len(trace) == 500
    np.testing.assert_array_equal(np.array(seen), trace[["client", "staleness"]].to_numpy())
    assert steps == [s for _, s in seen]  # every completion changes the model: lag in steps = staleness
    assert trace["staleness"].max() >= 5


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(("algorithm", "concurrency"), [({"name": "generalized_async_sgd"}, 7),
                                                         ({"name": "fedasync", "local_steps": 2}, 3),
                                                         ({"name": "fedbuff", "buffer_size": 3}, 7)])
def test_at_most_c_model_versions_are_alive(algorithm, concurrency, batched):
    """A version lives until the work of its last task is computed (the sequential path: at
    that task's completion, before the rule changes the model), so at most C are alive: the
    C - 1 other tasks' and the new model. On the batched path only tasks still waiting for
    their work hold one."""
    doc = scenario_doc(algorithm, concurrency=concurrency, updates=400)
    doc["training"]["batched"] = batched
    scenario = parse_scenario(doc)
    session = TrainingSession(scenario)
    observer = session.observer
    alive, expected = [], []
    on_complete = observer.on_complete

    def spy(task, update, now):
        on_complete(task, update, now)
        alive.append(len(session.model.held))
        waiting = {id(t.payload.version) for t in observer.in_flight if t.payload.version is not None}
        expected.append(len(waiting | {id(session.model.current)}))

    observer.on_complete = spy
    simulate(scenario, observers=[observer])
    assert alive == expected  # alive: the current model and the versions of tasks still waiting for their work
    assert max(alive) <= concurrency and session.model.max_alive <= concurrency
    if batched:
        assert observer.window_tasks == 400 + len(observer.in_flight) - len(observer.pending)
        assert observer.windows < 400 / 1.5  # windows of more than 1.5 tasks on average
    elif algorithm["name"] != "fedbuff":  # the bound is reached: every in-flight task holds its own version
        assert session.model.max_alive == concurrency


def test_tasks_dispatched_before_any_change_share_one_version():
    doc = scenario_doc({"name": "fedbuff", "buffer_size": 4}, concurrency=5, updates=40)
    scenario = parse_scenario(doc)
    session = TrainingSession(scenario)
    payloads = []
    on_dispatch = session.observer.on_dispatch

    def spy(task):
        on_dispatch(task)
        payloads.append((task.dispatch_update, task.payload.version, task.payload.step))

    session.observer.on_dispatch = spy
    simulate(scenario, observers=[session.observer])
    first = [p for s, p, _ in payloads if s == 0]
    assert len(first) == 5 and all(p is first[0] for p in first)
    # FedBuff changes the model once per 4 completions: consecutive dispatches between two
    # server steps share one version, so a version is copied at most once per server step
    distinct_steps = {step for _, _, step in payloads}
    assert len(distinct_steps) <= 40 // 4 + 1


# ---------------------------------------------------------------------------------------
# FedAvg rounds


def test_fedavg_round_lasts_as_long_as_its_slowest_client():
    rates = [1.0, 2.0, 4.0, 8.0]
    doc = scenario_doc({"name": "fedavg", "clients_per_round": 2}, updates=20,
                       groups=[(1, r, 1.0) for r in rates])
    for k, g in enumerate(doc["clients"]):
        g["service"] = {"dist": "deterministic", "rate": rates[k]}
    scenario = parse_scenario(doc)
    session = TrainingSession(scenario)
    result = session.run_rounds()
    assert result.rounds == 10 and result.updates == 20
    route = Streams(scenario.seed).generator("routing")
    expected = sum(max(1.0 / rates[c] for c in route.choice(4, size=2, replace=False, p=scenario.p))
                   for _ in range(10))
    assert result.sim_time == pytest.approx(expected, rel=1e-12)
    assert result.participation.sum() == 20


def test_fedavg_time_horizon_keeps_only_rounds_that_end_in_time():
    doc = scenario_doc({"name": "fedavg", "clients_per_round": 1}, groups=[(2, 1.0, 1.0)])
    doc["horizon"] = {"time": 3.5}
    for g in doc["clients"]:
        g["service"] = {"dist": "deterministic", "mean": 1.0}
    session = TrainingSession(parse_scenario(doc))
    result = session.run_rounds()
    assert (result.rounds, result.sim_time) == (3, 3.0)
    assert [row[0] for row in session.record.rows] == [0, 3]


def test_fedavg_with_every_client_and_one_step_is_one_weighted_gradient_step():
    doc = scenario_doc({"name": "fedavg", "clients_per_round": 3, "lr": 0.3}, updates=3,
                       groups=[(3, 1.0, 1.0)], dataset={"name": "synthetic", "dim": 6, "classes": 3, "samples": 40})
    scenario = parse_scenario(doc)
    session = TrainingSession(scenario)
    session.run_rounds()
    order = Streams(scenario.seed).generator("routing").choice(3, size=3, replace=False, p=scenario.p)
    wl = build_workload(scenario)
    sizes = wl.sizes.astype(float)
    expected = torch.zeros_like(wl.w0)
    for c in order:  # sum_k m_k / M (w0 - lr g_k(w0)), the batches drawn in the same client order
        g = torch.cat([t.reshape(-1) for t in wl.trainer.gradient(wl.flat.views(wl.w0), wl.sampler.next(int(c))[0])])
        expected += sizes[c] / sizes.sum() * (wl.w0 - 0.3 * g)
    torch.testing.assert_close(session.w, expected)
