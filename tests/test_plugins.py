"""Plug-ins: modules next to a scenario or sweep file, installed entry points, factory paths,
in-process, on a process pool, and the worked example of docs/extending.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO
from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.plugins import import_near, registered_modules
from fedsim.scenario import load_scenario, parse_scenario
from fedsim.sweep import parse_sweep, run_sweep

EXAMPLE = REPO / "examples" / "plugins"

LAW = '''
from fedsim.distributions import MeanCvDistribution, register_distribution
from fedsim.routing import register_routing
import numpy as np

@register_distribution("{name}")
class Law(MeanCvDistribution):
    """Twice an exponential's cv is impossible; this is an exponential under another name."""
    fixed_cv = 1.0
    def _draw(self, rng, size):
        return rng.exponential(self.mean, size)

@register_routing("{name}_first")
def first(groups):
    return np.repeat([2.0] + [1.0] * (len(groups) - 1), [g.count for g in groups])
'''


def scenario(law: str, **extra) -> dict:
    return {"name": "plug", "seed": 1, "concurrency": 3, "horizon": {"updates": 4000, "warmup": 400},
            "clients": [{"group": "a", "count": 2, "service": {"dist": "exponential", "rate": 2.0}},
                        {"group": "b", "count": 2, "service": {"dist": law, "mean": 1.0}}]} | extra


def test_plugins_next_to_the_scenario_are_imported_before_it_is_parsed(registries, tmp_path, write_yaml):
    (tmp_path / "plug_laws_a.py").write_text(LAW.format(name="plug_law_a"))
    (tmp_path / "plug_pkg_a").mkdir()
    (tmp_path / "plug_pkg_a" / "__init__.py").write_text("")
    (tmp_path / "plug_pkg_a" / "more.py").write_text(LAW.format(name="plug_law_b"))
    with pytest.raises(ScenarioError, match=r"^clients\[1\]\.service\.dist: unknown distribution 'plug_law_a'"):
        parse_scenario(scenario("plug_law_a"), base_dir=tmp_path)
    path = write_yaml(scenario("plug_law_a", plugins=["plug_laws_a", "plug_pkg_a.more"], routing="plug_law_b_first"))
    s = load_scenario(path)  # no PYTHONPATH: found in the file's folder
    assert s.plugins == ("plug_laws_a", "plug_pkg_a.more") and s.groups[1].service.name == "plug_law_a"
    assert s.p.tolist() == pytest.approx([2 / 6, 2 / 6, 1 / 6, 1 / 6])
    assert s.to_dict()["plugins"] == ["plug_laws_a", "plug_pkg_a.more"]
    assert "plugins" not in parse_scenario(scenario("exponential")).to_dict()  # absent unless given
    # the worker's view: what registered plug-ins in this process, and where it came from
    assert ("plug_laws_a", tmp_path.resolve()) in registered_modules()
    assert ("plug_pkg_a.more", tmp_path.resolve()) in registered_modules()
    assert main(["validate", str(path)]) == 0


def test_plugin_errors_are_one_line_and_name_the_entry(registries, tmp_path, write_yaml, capsys):
    (tmp_path / "plug_broken.py").write_text("x = 1 / 0\n")
    (tmp_path / "plug_needs.py").write_text("import plug_nowhere_to_be_found\n")
    cases = [
        ("plug_laws_x", "plugins[0]: cannot import 'plug_laws_x': no such module in "),
        ("plug_broken", "plugins[0]: importing 'plug_broken' failed: ZeroDivisionError: division by zero"),
        ("plug_needs", "plugins[0]: importing 'plug_needs' failed: ModuleNotFoundError: No module named "
                       "'plug_nowhere_to_be_found'"),
        ("not a module", "plugins[0]: must be a module name such as mylaws or mylab.policies, got 'not a module'"),
    ]
    for name, message in cases:
        assert main(["validate", str(write_yaml(scenario("exponential", plugins=[name])))]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    out = tmp_path / "out"
    assert main(["run", str(write_yaml(scenario("exponential", plugins=["plug_broken"]))), "--out", str(out)]) == 2
    assert not out.exists()
    assert main(["validate", str(write_yaml(scenario("exponential", plugins="plug_broken")))]) == 2
    assert capsys.readouterr().err.endswith("error: plugins: must be a list of module names, such as [mylaws], "
                                            "got 'plug_broken'\n")
    # a module of the standard library is found on the Python path: allowed (it registers nothing)
    assert main(["validate", str(write_yaml(scenario("exponential", plugins=["json"])))]) == 0
    # a different module of the same name already imported: an error, not a silent mix
    other = tmp_path / "other"
    other.mkdir()
    (other / "plug_broken.py").write_text("")
    import_near("plug_broken", other, "plugins[0]")
    with pytest.raises(ScenarioError, match=r"^plugins\[0\]: 'plug_broken' next to the file .* clashes with"):
        import_near("plug_broken", tmp_path, "plugins[0]")


def test_installed_entry_points_are_loaded_and_their_failures_are_one_line(tmp_path):
    """A package declaring [project.entry-points."fedsim.plugins"], seen by a fresh process."""
    site = tmp_path / "site"
    (site / "plug_ep_demo-0.1.dist-info").mkdir(parents=True)
    (site / "plug_ep_demo-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: plug-ep-demo\n"
                                                                  "Version: 0.1\n")
    (site / "plug_ep_demo-0.1.dist-info" / "entry_points.txt").write_text("[fedsim.plugins]\ndemo = plug_ep_demo\n")
    (site / "plug_ep_demo.py").write_text(LAW.format(name="plug_ep_law"))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario("plug_ep_law", routing="plug_ep_law_first")))
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    done = subprocess.run([sys.executable, "-m", "fedsim.cli", "validate", str(path)], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0 and "valid" in done.stdout, done.stderr
    (site / "plug_ep_demo.py").write_text("raise RuntimeError('not today')\n")
    done = subprocess.run([sys.executable, "-m", "fedsim.cli", "validate", str(path)], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 2 and done.stderr == (
        "error: plugins (entry point demo = plug_ep_demo of group fedsim.plugins): loading it failed: "
        "RuntimeError: not today\n")


def test_a_sweep_imports_its_plugins_and_workers_import_what_the_driver_registered(registries, tmp_path):
    """Sweep-level plugins (relative to the sweep file) and a module the caller imported itself
    (as in a notebook, no plugins field) both reach the pool's worker processes."""
    (tmp_path / "plug_laws_s.py").write_text(LAW.format(name="plug_law_s"))
    elsewhere = tmp_path / "lib"
    elsewhere.mkdir()
    (elsewhere / "plug_laws_n.py").write_text(LAW.format(name="plug_law_n"))
    sys.path.insert(0, str(elsewhere))
    try:
        import plug_laws_n  # noqa: F401
    finally:
        sys.path.remove(str(elsewhere))
    base = scenario("plug_law_s")
    base["clients"][0]["service"] = {"dist": "plug_law_n", "rate": 2.0}
    with pytest.raises(ScenarioError, match=r"unknown distribution 'plug_law_s'; allowed: .* \(in the sweep cell"):
        parse_sweep({"scenario": base, "grid": {"concurrency": [1, 4]}}, base_dir=tmp_path)
    sweep = parse_sweep({"plugins": ["plug_laws_s"], "scenario": base, "grid": {"concurrency": [1, 4]}},
                        base_dir=tmp_path)
    assert sweep.manifest()["plugins"] == ["plug_laws_s"]
    report = run_sweep(sweep, tmp_path / "out", workers=2)
    assert not report.failed and report.ran == 2


# ---------------------------------------------------------------------------------------
# the worked example of docs/extending.md


def test_docs_embed_the_example_files_verbatim():
    text = (REPO / "docs" / "extending.md").read_text()
    shown = dict(re.findall(r"^`(examples/plugins/[\w.]+)`:\n\n```\w*\n(.*?)^```$", text, flags=re.S | re.M))
    files = sorted(str(p.relative_to(REPO)) for p in EXAMPLE.iterdir() if p.suffix in (".py", ".yaml"))
    assert sorted(shown) == files
    for name, body in shown.items():
        assert body == (REPO / name).read_text(), name


def test_the_worked_example_runs_in_a_fresh_process_without_pythonpath(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO)}  # fedsim only: the example's folder is not on the path
    done = subprocess.run([sys.executable, "-m", "fedsim.cli", "validate", str(EXAMPLE / "queueing.yaml")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "C = 8, routing sqrt_rate; plugins mylab)" in done.stdout


def test_the_worked_example_trains_and_sweeps(registries, tmp_path, capsys):
    out = tmp_path / "train"
    assert main(["validate", str(EXAMPLE / "training.yaml")]) == 0
    said = capsys.readouterr().out  # the factory's model is built from the file's folder and run on a batch
    assert "routing sqrt_rate; plugins mylab)" in said
    assert "training: damped_async_sgd, model mynets:wide (484 parameters) on blobs" in said
    assert main(["run", str(EXAMPLE / "training.yaml"), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenario"]["plugins"] == ["mylab"]
    assert summary["model_parameters"] == (10 * 32 + 32) + (32 * 4 + 4)  # mynets:wide with width 32
    assert summary["final_accuracy"] > 0.6  # 4 well-separated classes: chance is 0.25
    clients = pd.read_csv(out / "clients.csv")
    assert clients["p"].iloc[0] == pytest.approx(2 * clients["p"].iloc[-1])  # sqrt_rate: sqrt(4) / sqrt(1)

    report = run_sweep(parse_sweep(yaml.safe_load((EXAMPLE / "sweep.yaml").read_text()), base_dir=EXAMPLE),
                       tmp_path / "sweep", workers=1)
    assert not report.failed and report.ran == 6
    df = pd.read_parquet(tmp_path / "sweep" / "results.parquet")
    slow = df[df["group"] == "slow"]
    assert (slow["service_cv"] == slow["clients[1].service.cv"]).all() and (slow["mean_service"] == 1.0).all()


def test_validate_checks_that_the_model_factory_imports(tmp_path, write_yaml, capsys):
    doc = scenario("exponential", training={"model": "plug_nonets:wide"})
    assert main(["validate", str(write_yaml(doc))]) == 2
    assert capsys.readouterr().err.startswith("error: training.model: cannot import 'plug_nonets': no such module")


def test_plugins_module_sits_at_the_bottom():
    code = ("import sys, fedsim.plugins; print(sorted(m for m in sys.modules if m.startswith('fedsim')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "['fedsim', 'fedsim.errors', 'fedsim.plugins']", done.stderr
