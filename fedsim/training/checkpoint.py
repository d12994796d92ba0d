"""Checkpoints of a training run: ``checkpoint.pt`` in the run folder, replaced atomically.

A checkpoint holds the scenario it belongs to (as parsed), the update count K it was taken
at, and the training state (see ``TrainingObserver.state_dict`` and ``Rounds.state_dict``).
The queueing state is not saved: resuming replays the queueing run, a function of the seed,
up to K. Resuming with another scenario, or with a file that is not a fedsim checkpoint, is a
one-line :class:`~fedsim.errors.ScenarioError` on ``--resume``.

A checkpoint is data only: tensors, numbers, strings, lists, tuples and dicts (numpy arrays
are stored as tensors with a tag), read back with ``torch.load(weights_only=True)``, whose
unpickler builds nothing else, so a crafted ``checkpoint.pt`` cannot run code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim import __version__
from fedsim.errors import ScenarioError
from fedsim.inputs import check_regular_file

FILENAME = "checkpoint.pt"
FORMAT = 3
MAX_BYTES = 16 << 30
"""Largest checkpoint read (16 GiB)."""
_ARRAY = "__ndarray__"


def _scenario_key(scenario: Any) -> str:
    return json.dumps(scenario.to_dict(), sort_keys=True, default=str)


def _encode(value: Any) -> Any:
    """The state with numpy arrays as ``{__ndarray__: tensor}`` and numpy scalars as Python ones."""
    if isinstance(value, np.ndarray):
        return {_ARRAY: torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(v) for v in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_ARRAY}:
            return value[_ARRAY].numpy()
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v) for v in value)
    return value


def save_checkpoint(path: Path, scenario: Any, state: dict[str, Any]) -> None:
    """Write ``state`` for ``scenario`` to ``path`` (a temporary file renamed onto it)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": FORMAT, "fedsim_version": __version__, "scenario": _scenario_key(scenario),
                "state": _encode(state)}, tmp)
    os.replace(tmp, path)


def load_checkpoint(folder: Path, scenario: Any) -> dict[str, Any]:
    """The training state saved in ``folder/checkpoint.pt`` for this very scenario."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        raise ScenarioError("--resume", f"no {FILENAME} in {folder}; write one with --checkpoint-every N")
    check_regular_file(path, "--resume", f"checkpoint {path}", MAX_BYTES)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable or unsafe file is the same user error
        raise ScenarioError("--resume", f"cannot read {path} as a fedsim checkpoint ({type(exc).__name__}; "
                            "checkpoints hold tensors and plain values only)") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or not isinstance(saved.get("state"), dict):
        raise ScenarioError("--resume", f"{path} is not a fedsim checkpoint (format {FORMAT})")
    if saved.get("scenario") != _scenario_key(scenario):
        raise ScenarioError("--resume", f"{path} was written for another scenario; resume with the scenario file "
                            "of that run, unchanged")
    return _decode(saved["state"])
