"""Shared helpers for the tests."""

from __future__ import annotations

import os
import sys

# One BLAS thread: the tests' matrices are small, and threads that spin for a core only slow
# them down on a machine whose cores are busy (set before numpy is first imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# MKL's conditional numerical reproducibility: its default AVX-512 GEMMs may round a product
# differently with the operands' alignment in memory, so a task's gradient could change in the
# last bit with the other tasks of its batch; the bit-for-bit tests of the batched kernels need
# the alignment-independent code path (set before torch loads MKL; docs/training.md).
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from scipy import stats  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def bonferroni_z(sim: np.ndarray, half_width: np.ndarray, expected: np.ndarray, *, batches: int,
                 level: float) -> np.ndarray:
    """Studentised distances |sim - expected| / SE, SE recovered from a batch-means half-width."""
    se = half_width / stats.t.ppf(0.5 + level / 2, batches - 1)
    return np.abs(sim - expected) / se


def bonferroni_critical(m: int, batches: int, family_alpha: float = 0.01) -> float:
    """Two-sided t critical value keeping the family-wise error of m comparisons at alpha."""
    return float(stats.t.ppf(1 - family_alpha / (2 * m), batches - 1))


@pytest.fixture
def write_yaml(tmp_path: Path):
    """Write a mapping as a YAML file in tmp_path and return its path."""

    def write(doc: Any, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


@pytest.fixture
def registries():
    """Restore fedsim's registries and forget the plug-in modules (``plug_*`` and those of
    examples/plugins) after a test that imports plug-ins in its own process."""
    import fedsim.training.algorithms as algorithms
    import fedsim.training.datasets as datasets
    import fedsim.training.models as models
    import fedsim.training.partition as partition
    from fedsim.distributions import DISTRIBUTIONS
    from fedsim.routing import ROUTING_POLICIES

    saved = [(r, dict(r)) for r in (DISTRIBUTIONS, ROUTING_POLICIES, algorithms.ALGORITHMS, models.MODELS,
                                    datasets.DATASETS, partition.PARTITIONS)]
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)
    for name in [m for m in sys.modules if m.startswith(("plug_", "mylab", "mynets"))]:
        del sys.modules[name]
