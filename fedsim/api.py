"""fedsim from Python (a notebook, a script): load a scenario, run it, open a saved run, sweep.

::

    import fedsim

    sc = fedsim.load_scenario("scenarios/two_speeds.yaml", concurrency=20)   # overrides by field path
    res = fedsim.run(sc)                          # or fedsim.run("file.yaml", seed=3)
    res.clients, res.groups, res.summary          # DataFrame, DataFrame, dict
    res.training                                  # the learning curve (DataFrame) or None
    res = fedsim.run(sc, trace=True); res.trace   # one row per completed task, in memory
    res.save("results/x"); fedsim.open_run("results/x") == res
    table = fedsim.sweep("sweeps/concurrency.yaml", workers=2)   # results.parquet as a DataFrame

Overrides name fields by their path (``concurrency``, ``horizon.updates``, and, through a
dict, ``**{"clients[1].service.cv": 2.0}``) and are set on the YAML mapping before it is
validated: a bad value is the same :class:`~fedsim.errors.ScenarioError` as in the file.
A run here is exactly ``fedsim run`` (:func:`fedsim.run.run_scenario`), minus the files: it
writes nothing until :meth:`~fedsim.report.Run.save`, and leaves global state alone
(matplotlib, seaborn and torch settings are restored or never touched).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedsim.errors import ScenarioError
from fedsim.paths import apply_overrides
from fedsim.report import Run, open_run
from fedsim.scenario import Scenario, load_scenario as _load_file, parse_scenario

__all__ = ["Run", "load_scenario", "open_run", "run", "sweep"]


def load_scenario(source: str | Path | Mapping[str, Any] | Scenario, /, **overrides: Any) -> Scenario:
    """A validated scenario from a YAML file, a mapping, or a scenario (with overrides).

    ``overrides`` map field paths to values and are validated with the scenario. A mapping's
    relative file names resolve from the current folder; a scenario's from its file's folder.
    """
    if isinstance(source, Scenario):
        if not overrides:
            return source
        base = Path(source.source).parent if source.source is not None else None
        return parse_scenario(apply_overrides(source.raw, overrides), base_dir=base, source=source.source)
    if isinstance(source, Mapping):
        return parse_scenario(apply_overrides(source, overrides), base_dir=Path.cwd())
    if not isinstance(source, (str, Path)):
        raise ScenarioError("scenario", f"must be a scenario, a mapping or a YAML file path, got {type(source).__name__}")
    return _load_file(source, overrides)


def run(scenario: str | Path | Mapping[str, Any] | Scenario, /, *, trace: bool = False, progress: bool = False,
        max_memory: int | str | None = None, **overrides: Any) -> Run:
    """Run a scenario as ``fedsim run`` does and return the :class:`~fedsim.report.Run`.

    ``trace``: keep one row per completed task in ``Run.trace``. ``progress``: a progress
    bar on stderr. ``max_memory``: the memory limit of the resource check (bytes, or a size
    such as ``"4G"``; default what the machine has available). ``overrides``: field paths
    and values applied first, as in :func:`load_scenario`.
    """
    from fedsim.resources import parse_size
    from fedsim.run import run_scenario

    limit = parse_size(max_memory, "max_memory") if isinstance(max_memory, str) else max_memory
    return run_scenario(load_scenario(scenario, **overrides), trace=bool(trace), progress=progress,
                        max_memory=limit)


def sweep(path: str | Path, *, out: str | Path | None = None, workers: int | None = None, ray: str | None = None,
          progress: bool = False) -> Any:
    """Run the sweep file ``path`` into ``out`` (default ``results/<file name>``, resumable) and
    return results.parquet as a pandas DataFrame (see :mod:`fedsim.sweep`)."""
    from fedsim.folders import check_out
    from fedsim.sweep import load_results, load_sweep, run_sweep

    spec = load_sweep(path)
    folder = check_out(Path(out) if out is not None else Path("results") / Path(path).stem, "out")
    report = run_sweep(spec, folder, workers=workers, ray=ray, progress=progress)
    return load_results(report.results.parent)[0]
