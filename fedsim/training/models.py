"""Models: a registry of factories ``build(input_shape, classes, **params) -> torch.nn.Module``.

In a scenario::

    model: logistic                         # multinomial logistic regression
    model: {name: mlp, hidden: [200]}       # ReLU layers of the given widths
    model: cnn                              # the CNN of McMahan et al. (2017), for images
    model: "mypackage.models:make_net"      # a factory: next to the scenario, or any importable one
    model: {name: "mypackage.models:make_net", width: 64}   # extra fields go to the factory

A user factory is called as ``factory(input_shape, num_classes, **extra_fields)`` and returns an
``nn.Module`` mapping a batch of inputs to class logits, with float32 parameters. The module's
parameters are what a task snapshots; its buffers (batch-norm statistics, say) are shared by
all versions. torch is imported when a model is built, never when a scenario is validated.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.errors import ScenarioError
from fedsim.fields import Field, int_list
from fedsim.plugins import resolve_callable

FACTORY_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


@dataclass(frozen=True)
class ModelKind:
    """A registered model: its fields, its factory, whether it needs image inputs, and the
    batched gradient kernel that computes it (:mod:`fedsim.training.kernels`; None: vmap)."""

    name: str
    fields: dict[str, Field]
    build: Callable[..., Any]
    images_only: bool = False
    kernel: str | None = None


MODELS: dict[str, ModelKind] = {}


def register_model(name: str, fields: dict[str, Field] | None = None, *, images_only: bool = False,
                   kernel: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
        MODELS[name] = ModelKind(name, fields or {}, build, images_only, kernel)
        return build

    return decorate


def _features(input_shape: tuple[int, ...]) -> int:
    size = 1
    for d in input_shape:
        size *= d
    return size


@register_model("logistic", kernel="dense")
def logistic(input_shape: tuple[int, ...], classes: int) -> Any:
    """Softmax regression: logits = W x + b on the flattened input."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(_features(input_shape), classes))


@register_model("mlp", {"hidden": Field((200,), int_list(1, min_length=1), "widths of the hidden layers")},
                kernel="dense")
def mlp(input_shape: tuple[int, ...], classes: int, hidden: tuple[int, ...]) -> Any:
    """Fully connected ReLU network on the flattened input (the 2NN of McMahan et al. has [200, 200])."""
    from torch import nn

    layers: list[Any] = [nn.Flatten()]
    width = _features(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


@register_model("cnn", {"channels": Field((32, 64), int_list(1, min_length=1), "channels of the 5x5 conv layers"),
                        "hidden": Field((512,), int_list(1, min_length=1), "width of the dense layer")},
                images_only=True, kernel="cnn")
def cnn(input_shape: tuple[int, ...], classes: int, channels: tuple[int, ...], hidden: tuple[int, ...]) -> Any:
    """CNN of McMahan et al. (2017): [5x5 conv, ReLU, 2x2 max-pool] per entry of ``channels``,
    then dense ReLU layer(s) and the output layer (32, 64 channels and 512 units by default)."""
    import torch
    from torch import nn

    layers: list[Any] = []
    depth = input_shape[0]
    for c in channels:
        layers += [nn.Conv2d(depth, c, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
        depth = c
    body = nn.Sequential(*layers)
    with torch.no_grad():
        width = body(torch.zeros(1, *input_shape)).numel()
    head: list[Any] = [nn.Flatten()]
    for h in hidden:
        head += [nn.Linear(width, h), nn.ReLU()]
        width = h
    head.append(nn.Linear(width, classes))
    return nn.Sequential(body, *head)


def is_factory_path(name: str) -> bool:
    """True for ``package.module:factory``."""
    return bool(FACTORY_PATH.match(name))


def factory_source(name: str) -> Path | None:
    """The source file of the (already imported) module of a ``package.module:factory`` model."""
    if not is_factory_path(name):
        return None
    module = sys.modules.get(name.split(":")[0])
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def build_model(name: str, params: dict[str, Any], input_shape: tuple[int, ...], classes: int,
                path: str = "training.model", base_dir: Path | None = None) -> Any:
    """Build the module (a registered model, or a user factory called with the extra fields)."""
    from torch import nn

    if name in MODELS:
        module = MODELS[name].build(input_shape, classes, **params)
    else:
        factory = resolve_callable(name, base_dir, path)
        try:
            module = factory(input_shape, classes, **params)
        except TypeError as exc:
            raise ScenarioError(path, f"model factory {name!r} failed: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ScenarioError(path, f"model factory {name!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module
