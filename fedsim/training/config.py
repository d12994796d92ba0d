"""The ``training:`` section of a scenario, parsed and validated without importing torch.

::

    training:
      dataset: {name: synthetic, alpha: 1.0, beta: 1.0, dim: 60, classes: 10}   # the default
      partition: {dirichlet: 0.3}     # iid | natural | {dirichlet: a} | {shards_per_client: s}
      model: mlp                      # logistic | mlp | cnn | "package.module:factory"
      algorithm: {name: generalized_async_sgd, lr: 0.05, batch_size: 32, local_steps: 1}
      eval: {every_updates: 500}
      device: cpu                     # cpu | cuda | auto (cuda when available)
      threads: 1                      # torch CPU threads
      batched: auto                   # auto | true | false: in-flight tasks' work computed together

Defaults: dataset ``synthetic``; partition ``natural`` for synthetic data (each client keeps the
data generated for it), ``iid`` otherwise; model ``mlp``; algorithm ``generalized_async_sgd``;
evaluation every 500 updates; device ``cpu``; ``batched: auto`` (see
:mod:`fedsim.training.batching`); ``threads: 1`` (``torch.set_num_threads``: the
per-update tensors of federated models are small, and one thread is the fastest for them and
immune to other processes competing for the cores; raise it for large models). Each plug-in's own fields are declared next to it
(:mod:`fedsim.training.datasets`, :mod:`~fedsim.training.partition`,
:mod:`~fedsim.training.models`, :mod:`~fedsim.training.algorithms`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.errors import ScenarioError
from fedsim.sections import ScenarioDraft
from fedsim.training.algorithms import ALGORITHMS, COMMON_FIELDS
from fedsim.training.datasets import DATASETS
from fedsim.fields import Component, check_int, check_mapping, choice, frozen, named, parse_fields
from fedsim.training.models import MODELS, is_factory_path
from fedsim.training.partition import PARTITIONS

TRAINING_FIELDS = ("dataset", "partition", "model", "algorithm", "eval", "device", "threads", "batched")
DEVICES = ("cpu", "cuda", "auto")
DEFAULT_EVAL_EVERY = 500


@dataclass(frozen=True)
class TrainingConfig:
    """A validated ``training:`` section: the plug-ins with their parameters, defaults filled in.

    ``partition.params`` is empty or ``(("value", x),)`` (the rule's one parameter).
    ``base_dir`` is the scenario file's folder (dataset roots are relative to it).
    """

    dataset: Component
    partition: Component
    model: Component
    algorithm: Component
    eval_every: int = DEFAULT_EVAL_EVERY
    device: str = "cpu"
    threads: int = 1
    batched: str | bool = "auto"
    base_dir: Path | None = field(default=None, compare=False)

    @property
    def synchronous(self) -> bool:
        """True for a round-based rule (fedavg), which runs outside the asynchronous engine."""
        return ALGORITHMS[self.algorithm.name].synchronous

    def to_dict(self) -> dict[str, Any]:
        """The section in the YAML schema, defaults filled in (for summary.json)."""
        partition: Any = self.partition.name
        if self.partition.params:
            partition = {self.partition.name: self.partition["value"]}
        return {
            "dataset": self.dataset.to_dict(),
            "partition": partition,
            "model": self.model.to_dict(),
            "algorithm": self.algorithm.to_dict(),
            "eval": {"every_updates": self.eval_every},
            "device": self.device,
            "threads": self.threads,
            "batched": self.batched,
        }


def _unknown(path: str, what: str, name: str, allowed: list[str], extra: str = "") -> ScenarioError:
    return ScenarioError(path, f"unknown {what} {name!r}; allowed: {', '.join(sorted(allowed))}{extra}")


def _dataset(raw: Any, path: str) -> Component:
    name, spec = named(raw, path)
    if name not in DATASETS:
        raise _unknown(f"{path}.name" if spec else path, "dataset", name, list(DATASETS))
    return Component(name, parse_fields(spec, path, DATASETS[name].fields))


def _partition(raw: Any, path: str, dataset: Component) -> Component:
    if isinstance(raw, str):
        name, value, where = raw, None, path
    elif isinstance(raw, Mapping) and len(raw) == 1:
        name, value = next(iter(raw.items()))
        where = f"{path}.{name}"
    else:
        raise ScenarioError(path, f"must be a name (iid, natural) or a mapping with one rule, such as "
                            f"{{dirichlet: 0.3}} or {{shards_per_client: 2}}; got {raw!r}")
    rule = PARTITIONS.get(name)
    if rule is None:
        raise _unknown(path, "partition", str(name), list(PARTITIONS))
    if rule.check is None:
        if value is not None:
            raise ScenarioError(where, f"partition {name!r} takes no value; write {name}")
        params: tuple[tuple[str, Any], ...] = ()
    else:
        if value is None:
            raise ScenarioError(path, f"partition {name!r} needs a value, e.g. {{{name}: ...}}")
        params = (("value", rule.check(value, where)),)
    if rule.needs_owner and not DATASETS[dataset.name].natural:
        raise ScenarioError(path, f"partition {name!r} needs data that come with their clients (synthetic); "
                            f"{dataset.name} is split with iid, dirichlet or shards_per_client")
    return Component(name, params)


def _model(raw: Any, path: str, dataset: Component) -> Component:
    name, spec = named(raw, path)
    where = f"{path}.name" if spec else path
    if name in MODELS:
        kind = MODELS[name]
        if kind.images_only and not DATASETS[dataset.name].images:
            raise ScenarioError(where, f"model {name!r} needs image inputs (mnist, cifar10, ...); "
                                f"{dataset.name} gives vectors: use logistic or mlp")
        return Component(name, parse_fields(spec, path, kind.fields))
    if not is_factory_path(name):
        raise _unknown(where, "model", name, list(MODELS), ", or a factory written package.module:function")
    extra = {}
    for key, value in spec.items():
        if key != "name":
            if not isinstance(value, (bool, int, float, str, list)):
                raise ScenarioError(f"{path}.{key}", f"factory arguments must be numbers, strings or lists, got {value!r}")
            extra[key] = frozen(value)
    return Component(name, tuple(extra.items()))


def _algorithm(raw: Any, path: str) -> Component:
    name, spec = named(raw, path, default="generalized_async_sgd")
    if name not in ALGORITHMS:
        raise _unknown(f"{path}.name" if spec else path, "algorithm", name, list(ALGORITHMS))
    return Component(name, parse_fields(spec, path, COMMON_FIELDS | ALGORITHMS[name].fields))


def parse_training(raw: Any, path: str = "training", base_dir: Path | None = None) -> TrainingConfig:
    """Validate the ``training:`` mapping; every error names its field (``training.algorithm.lr``)."""
    doc = check_mapping(raw, path, TRAINING_FIELDS)
    dataset = _dataset(doc.get("dataset", "synthetic"), f"{path}.dataset")
    default_partition = "natural" if DATASETS[dataset.name].natural else "iid"
    partition = _partition(doc.get("partition", default_partition), f"{path}.partition", dataset)
    model = _model(doc.get("model", "mlp"), f"{path}.model", dataset)
    algorithm = _algorithm(doc.get("algorithm", {}), f"{path}.algorithm")
    evaluation = check_mapping(doc.get("eval", {}), f"{path}.eval", ("every_updates",))
    every = check_int(evaluation.get("every_updates", DEFAULT_EVAL_EVERY), f"{path}.eval.every_updates", 1)
    device = choice(*DEVICES)(doc.get("device", "cpu"), f"{path}.device")
    threads = check_int(doc.get("threads", 1), f"{path}.threads", 1)
    batched = doc.get("batched", "auto")
    if not (isinstance(batched, bool) or batched == "auto"):
        raise ScenarioError(f"{path}.batched", f"must be auto, true or false, got {batched!r}")
    return TrainingConfig(dataset=dataset, partition=partition, model=model, algorithm=algorithm,
                          eval_every=every, device=device, threads=threads, batched=batched, base_dir=base_dir)


def parse_section(raw: Any, draft: ScenarioDraft) -> TrainingConfig:
    """The ``training:`` section of a scenario (see :mod:`fedsim.sections`)."""
    return parse_training(raw, "training", draft.base_dir)
