"""Where a run came from: versions, the command, the start time, and the files it read.

``summary.json`` carries :func:`provenance` under the key ``provenance``::

    fedsim_version, git_commit, git_dirty      # the commit of the source tree fedsim runs from, when it is a git checkout
    python, numpy, simpy, torch                # versions (torch only when it was imported)
    command                                    # the command line, or null from the Python API
    started                                    # UTC start time, ISO 8601
    inputs: {path: "sha256:<hex>"}             # every file the scenario reads

``inputs`` hashes (SHA-256 of the bytes) the scenario file itself, every empirical
service-time file (compute laws, links, the server), the dataset files of a torchvision
dataset, and the source file of a ``module:factory`` model. Files above
:data:`HASH_LIMIT` are recorded by size only (``"size:<bytes>"``), so the hash never costs
more than reading the file once.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from fedsim import __version__
from fedsim.scenario import Scenario

HASH_LIMIT = 2 << 30
"""Largest file hashed (2 GiB); larger ones are recorded by size."""


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


@cache
def _git() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding this fedsim package, or (None, None)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def _version(module: str) -> str | None:
    mod = sys.modules.get(module)
    return getattr(mod, "__version__", None) if mod is not None else None


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a regular file, ``size:<n>`` above :data:`HASH_LIMIT`, or why not."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            return "not a regular file"
        if size > HASH_LIMIT:
            return f"size:{size}"
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return f"sha256:{digest.hexdigest()}"


def input_files(scenario: Scenario) -> Iterator[Path]:
    """Every file the scenario reads, in a stable order (see the module docstring)."""
    if scenario.source is not None:
        yield Path(scenario.source)
    base = Path(scenario.source).parent if scenario.source is not None else None
    laws = [g.service for g in scenario.groups]
    laws += [s.law for g in scenario.groups for s in (g.downlink, g.uplink) if s is not None]
    laws += [scenario.server.law] if scenario.server is not None else []
    for law in laws:
        file = getattr(law, "file", None)
        if isinstance(file, str):
            location = Path(file).expanduser()
            yield location if location.is_absolute() or base is None else base / location
    cfg = scenario.training
    if cfg is not None:
        from fedsim.training.datasets import dataset_files
        from fedsim.training.models import factory_source

        yield from dataset_files(cfg.dataset.name, cfg.dataset.kwargs, cfg.base_dir)
        source = factory_source(cfg.model.name)
        if source is not None:
            yield source


def provenance(scenario: Scenario, *, command: Sequence[str] | None, started: str) -> dict[str, Any]:
    """The ``provenance`` record of a run of ``scenario`` started at ``started`` by ``command``."""
    commit, dirty = _git()
    inputs: dict[str, str] = {}
    for path in input_files(scenario):
        inputs.setdefault(str(path), file_digest(path))
    return {
        "fedsim_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "numpy": _version("numpy"),
        "simpy": _version("simpy"),
        "torch": _version("torch"),
        "command": None if command is None else shlex.join(command),
        "started": started,
        "inputs": inputs,
    }
