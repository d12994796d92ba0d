"""A torch module whose parameters are views into one flat vector.

A model version is then a single tensor: a snapshot is one copy, an update rule is one or two
vector operations, and computing on another version means pointing the module's parameters at
that vector's views (no copy). Gradients accumulate into one flat buffer ``grad``, whose views
are the parameters' ``.grad``.
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.errors import ScenarioError


class FlatModel:
    """``module`` with its trainable parameters laid out in flat vectors of length ``size``.

    The module must come with float32 parameters; ``dtype`` float64 converts it (a reference
    run for numerical checks).
    """

    def __init__(self, module: nn.Module, device: torch.device, path: str = "training.model",
                 dtype: torch.dtype = torch.float32) -> None:
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ScenarioError(path, "the model has no trainable parameters")
        dtypes = {p.dtype for p in params}
        if dtypes != {torch.float32}:
            raise ScenarioError(path, f"model parameters must all be float32, got {sorted(map(str, dtypes))}")
        self.module = module.to(device=device, dtype=dtype)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.size = sum(self.numels)
        self.device = device
        self.grad = torch.zeros(self.size, device=device, dtype=dtype)
        for p, g in zip(self.params, self.views(self.grad)):
            p.grad = g
        self._bound: list[torch.Tensor] | None = None

    def flatten(self) -> torch.Tensor:
        """A new flat vector holding the module's current parameter values."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Parameter-shaped views into ``flat`` (in the order of ``module.parameters()``)."""
        return [v.view(shape) for v, shape in zip(torch.split(flat, self.numels), self.shapes)]

    def bind(self, views: list[torch.Tensor]) -> None:
        """Make the module compute with the parameters ``views`` (no copy)."""
        if views is not self._bound:
            for p, v in zip(self.params, views):
                p.data = v
            self._bound = views

    def state_dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The module's state_dict with parameters ``flat`` (copies, on the CPU)."""
        views = self.views(flat)
        self.bind(views)
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
