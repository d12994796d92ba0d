"""Checkpoints of a training run: ``checkpoint.pt`` in the run folder, replaced atomically.

A checkpoint holds the scenario it belongs to (as parsed), the update count K it was taken
at, and the training state (see ``TrainingObserver.state_dict`` and ``Rounds.state_dict``).
The queueing state is not saved: resuming replays the queueing run, a function of the seed,
up to K. Resuming with another scenario, or with a file that is not a fedsim checkpoint, is a
one-line :class:`~fedsim.errors.ScenarioError` on ``--resume``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fedsim import __version__
from fedsim.errors import ScenarioError
from fedsim.scenario import Scenario

FILENAME = "checkpoint.pt"
FORMAT = 2


def _scenario_key(scenario: Scenario) -> str:
    return json.dumps(scenario.to_dict(), sort_keys=True, default=str)


def save_checkpoint(path: Path, scenario: Scenario, state: dict[str, Any]) -> None:
    """Write ``state`` for ``scenario`` to ``path`` (a temporary file renamed onto it)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": FORMAT, "fedsim_version": __version__, "scenario": _scenario_key(scenario),
                "state": state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(folder: Path, scenario: Scenario) -> dict[str, Any]:
    """The training state saved in ``folder/checkpoint.pt`` for this very scenario."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        raise ScenarioError("--resume", f"no {FILENAME} in {folder}; write one with --checkpoint-every N")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is the same user error
        raise ScenarioError("--resume", f"cannot read {path} ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ScenarioError("--resume", f"{path} is not a fedsim checkpoint (format {FORMAT})")
    if saved["scenario"] != _scenario_key(scenario):
        raise ScenarioError("--resume", f"{path} was written for another scenario; resume with the scenario file "
                            "of that run, unchanged")
    return saved["state"]
