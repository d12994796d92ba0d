"""A model factory for fedsim: ``model: "mynets:wide"`` in a scenario next to this file."""

import math

from torch import nn


def wide(input_shape, classes, width=64):
    """One wide ReLU layer on the flattened input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Linear(width, classes))
