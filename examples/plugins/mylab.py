"""Plug-ins for fedsim: a service-time law, a routing policy, an update rule and a dataset.

A scenario or sweep file next to this one loads them with ``plugins: [mylab]``.
"""

from __future__ import annotations

import math

import numpy as np

from fedsim.distributions import MeanCvDistribution, register_distribution
from fedsim.fields import Field, integer, positive
from fedsim.routing import register_routing
from fedsim.training.algorithms import UpdateRule, register_algorithm
from fedsim.training.datasets import RawData, register_dataset


@register_distribution("shifted_exponential")
class ShiftedExponential(MeanCvDistribution):
    """A fixed set-up time plus an exponential tail. Mean m and cv c in (0, 1] give the
    shift m (1 - c) and the tail mean m c (an exponential's sd is its mean)."""

    cv_min, cv_min_open, cv_max = 0.0, True, 1.0

    def _draw(self, rng, size):
        tail = self.mean * self.cv
        return (self.mean - tail) + rng.exponential(tail, size)


@register_routing("sqrt_rate")
def sqrt_rate(groups):
    """p_i proportional to sqrt(mu_i): between uniform and proportional routing."""
    return np.repeat([math.sqrt(g.service.rate) for g in groups], [g.count for g in groups])


@register_algorithm
class DampedAsyncSGD(UpdateRule):
    """w <- w - lr (1 + tau)^(-power) g_i(w_s): the staler the gradient, the smaller the step
    (with local_steps > 1, the client's model change is damped the same way)."""

    name = "damped_async_sgd"
    fields = {"power": Field(1.0, positive, "exponent of the damping factor (1 + tau)^-power")}

    def apply(self, client, result, staleness, version_step):
        damping = (1.0 + staleness) ** -self.params["power"]
        self.model.add_(result, alpha=-self.lr * damping if self.local_steps == 1 else damping)


BLOBS_FIELDS = {
    "dim": Field(10, integer(1), "input dimension"),
    "classes": Field(4, integer(2), "number of classes"),
    "samples": Field(50, integer(2), "training samples per client"),
    "spread": Field(1.0, positive, "standard deviation of a class around its centre"),
}


@register_dataset("blobs", BLOBS_FIELDS, images=False)
def blobs(params, n_clients, rng, base_dir, path):
    """Gaussian classes: centres c_k ~ N(0, I), inputs of class k ~ N(c_k, spread^2 I);
    n_clients * samples training points and a quarter as many test points."""
    centres = rng.standard_normal((params["classes"], params["dim"]))

    def draw(count):
        y = rng.integers(0, params["classes"], count)
        x = centres[y] + params["spread"] * rng.standard_normal((count, params["dim"]))
        return x.astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(n_clients * params["samples"])
    x_test, y_test = draw(max(1, n_clients * params["samples"] // 4))
    return RawData(x_train, y_train, x_test, y_test, input_shape=(params["dim"],), classes=params["classes"])
