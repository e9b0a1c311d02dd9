"""Plugins: --include, installed entry points, sources, and caches that know their code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import config, plugins, run
from methods.base import METHODS
from methods.explainers import EXPLAINERS
from metrics.base import METRICS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

#: a plugin registering one of everything (the project's own under other names)
EVERYTHING = '''
import functools

from harness.backbones import BACKBONES, cifar_resnet
from harness.config import register_preset
from harness.data import DATASETS
from methods.explainers import EXPLAINERS, register_explainer
from metrics.base import METRICS, MetricSpec, register_metric

register_explainer("plug-x", description="a plugin's explainer")(EXPLAINERS.get("random"))
spec = METRICS.get("sparseness")
register_metric(MetricSpec("plug_sparseness", True, "a plugin's column",
                           factory=spec.factory))
register_preset("plug-smoke", {"extends": "smoke", "train": {"epochs": 1}})
BACKBONES.add("plug-resnet8", functools.partial(cifar_resnet, 8), family="cifar-resnet")
digits = DATASETS.entry("cluttered-digits")
DATASETS.add("plug-digits", digits.obj, **digits.meta)
'''


@pytest.fixture(autouse=True)
def _forget_plugins() -> Iterator[None]:
    yield
    plugins.reset()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _run(args: list[str], tmp: Path) -> list[str]:
    return [*args, "--preset", "smoke", "--db", str(tmp / "db"), "--cache-dir",
            str(tmp / "cache"), "--out", str(tmp / "out")]


def test_include_file_lists_its_entries_with_their_source(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = _write(tmp_path / "everything.py", EVERYTHING)
    assert run.main(["--include", str(EXAMPLES / "new_method.py"), "--include", str(plugin),
                     "--list"]) == 0
    out = capsys.readouterr().out
    gate = next(line for line in out.splitlines() if line.startswith("  gate "))
    assert gate.endswith(f"[from --include {EXAMPLES / 'new_method.py'}]")
    for name in ("plug-x", "plug_sparseness", "plug-smoke", "plug-resnet8", "plug-digits"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name))
        assert line.endswith(f"[from --include {plugin}]"), line
    # the project's own entries carry no mark
    assert "[from" not in next(ln for ln in out.splitlines() if ln.startswith("  abn "))
    assert METHODS.entry("gate").source == f"--include {EXAMPLES / 'new_method.py'}"
    assert config.PRESETS["plug-smoke"]["train"]["epochs"] == 1
    assert config.PRESETS["plug-smoke"]["dataset_kwargs"] == \
        config.PRESETS["smoke"]["dataset_kwargs"]


def test_a_plugin_s_dataset_backbone_preset_explainer_and_metric_in_a_run(
        tmp_path: Path) -> None:
    import pandas as pd

    plugin = _write(tmp_path / "everything.py", EVERYTHING)
    args = ["--include", str(plugin), "--methods", "baseline", "--explainers", "native,plug-x",
            "--dataset", "plug-digits", "--backbone", "plug-resnet8", "--preset", "plug-smoke",
            "--no-progress", "--db", str(tmp_path / "db"), "--cache-dir",
            str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert run.main(args) == 0
    frame = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert list(frame["method"]) == ["baseline", "baseline+plug-x"]
    assert set(frame["dataset"]) == {"plug-digits"} and set(frame["backbone"]) == {
        "plug-resnet8"}
    assert frame["plug_sparseness"].notna().all()
    # the plugin's explainer is the random one under another name: the same scores
    assert frame.loc[1, "plug_sparseness"] == pytest.approx(frame.loc[1, "sparseness"])


def test_include_folder_package_and_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mine"
    _write(folder / "a_method.py", (EXAMPLES / "new_method.py").read_text())
    _write(folder / "b_metric.py", (EXAMPLES / "custom_metric.py").read_text())
    _write(folder / "_private.py", "raise RuntimeError('not imported')\n")
    plugins.include(str(folder))
    assert "gate" in METHODS and "relevance_rank_acc" in METRICS
    assert METHODS.entry("gate").obj.__module__ == "attnbench_include.mine.a_method"
    plugins.reset()
    # a folder with __init__.py is one package (its relative imports work)
    pkg = tmp_path / "pkg"
    _write(pkg / "__init__.py", "from . import inner  # noqa: F401\n")
    _write(pkg / "inner.py", EVERYTHING)
    plugins.include(str(pkg))
    assert EXPLAINERS.entry("plug-x").source == f"--include {pkg}"
    plugins.reset()
    # an importable module name
    _write(tmp_path / "site" / "labplugin.py", EVERYTHING)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert run.main(["--include", "labplugin", "--list"]) == 0
    assert "[from --include labplugin]" in capsys.readouterr().out
    # nothing of that name
    assert run.main(["--include", "no_such_plugin_module", "--list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --include 'no_such_plugin_module': no such file, folder or "
                   "importable module")
    _write(tmp_path / "notes.txt", "x")
    assert run.main(["--include", str(tmp_path / "notes.txt"), "--list"]) == 2
    assert "not a Python file (.py)" in capsys.readouterr().err


def test_a_name_registered_twice_names_both_sources(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clash = _write(tmp_path / "clash.py", '''
        from methods import METHODS, register_method
        register_method("abn")(METHODS.get("baseline"))
        ''')
    assert run.main(["--include", str(clash), "--list"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --include {clash}: method 'abn' is registered twice: by "
                   f"attnbench and by --include {clash}\n")
    first = _write(tmp_path / "one" / "gate.py", (EXAMPLES / "new_method.py").read_text())
    second = _write(tmp_path / "two" / "gate.py", (EXAMPLES / "new_method.py").read_text())
    assert run.main(["--include", str(first), "--include", str(second), "--list"]) == 2
    assert (f"method 'gate' is registered twice: by --include {first} and by --include "
            f"{second}") in capsys.readouterr().err


def test_a_plugin_failing_half_way_leaves_nothing_behind(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = _write(tmp_path / "broken.py", '''
        from methods import METHODS, register_method
        register_method("half-way")(METHODS.get("baseline"))
        x = {}["missing"]
        ''')
    assert run.main(["--include", str(broken), "--methods", "half-way"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --include {broken}: KeyError: 'missing' (at broken.py:4)\n"
    assert "half-way" not in METHODS


def test_an_edited_include_replaces_what_it_registered(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.py", EVERYTHING)
    plugins.include(str(path))
    before = METRICS.get("plug_sparseness")
    plugins.include(str(path))  # unchanged: nothing happens
    assert METRICS.get("plug_sparseness") is before
    path.write_text(EVERYTHING.replace("a plugin's column", "edited"))
    plugins.include(str(path))
    assert METRICS.get("plug_sparseness").description == "edited"
    assert "plug-x" in EXPLAINERS and "plug-smoke" in config.PRESETS


def _dist(site: Path, dist: str, name: str, target: str, code: str) -> None:
    """A distribution installed in ``site``: its module and its entry point."""
    _write(site / f"{target.split(':')[0]}.py", code)
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    _write(info / "METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    _write(info / "entry_points.txt", f"[attnbench.plugins]\n{name} = {target}\n")


def test_installed_plugins_load_at_start_up_and_a_broken_one_is_one_line(
        tmp_path: Path) -> None:
    site = tmp_path / "site"
    _write(site / "good_impl.py", EVERYTHING)
    _dist(site, "good-plugin", "good", "good_plugin:register", '''
        def register():  # an entry point may name a callable: called once
            import good_impl  # noqa: F401
        ''')
    _dist(site, "bad-plugin", "bad", "bad_plugin", '''
        from methods import METHODS, register_method
        register_method("bad-method")(METHODS.get("baseline"))
        import not_installed_anywhere  # noqa: F401
        ''')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    listed = subprocess.run([sys.executable, "-m", "harness.run", "--list"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.strip().startswith("plug-x"))
    assert line.endswith("[from entry point good (good-plugin 1.0)]")
    warning = ("warning: plugin entry point bad (bad-plugin 1.0) failed to load "
               "(ModuleNotFoundError: No module named 'not_installed_anywhere'); going on "
               "without it")
    assert listed.stderr.strip() == warning
    assert "bad-method" not in listed.stdout  # undone: none of its names stay
    asked = subprocess.run([sys.executable, "-m", "harness.run", "--methods", "bad-method",
                            "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert asked.returncode == 2
    lines = asked.stderr.strip().splitlines()
    assert lines[0] == warning and len(lines) == 2
    assert lines[1].startswith("error: unknown method 'bad-method'")
    assert lines[1].endswith("; plugin entry point bad (bad-plugin 1.0) failed to load "
                             "(ModuleNotFoundError: No module named 'not_installed_anywhere')")


def test_editing_a_plugin_invalidates_exactly_what_its_code_computed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The plugin method's loss retrains it (and re-scores its row), the plugin metric's
    code re-scores its column alone; the project's rows stay cached throughout."""
    method = tmp_path / "plug" / "new_method.py"
    metric = tmp_path / "plug" / "custom_metric.py"
    shutil.copytree(EXAMPLES, tmp_path / "plug", ignore=shutil.ignore_patterns("timm*"))
    args = _run(["--include", str(method), "--include", str(metric),
                 "--methods", "baseline,gate", "--explainers", "native"], tmp_path)

    def rows() -> dict[str, str]:
        assert run.main(args) == 0
        out = capsys.readouterr().out
        return {name: next(ln for ln in out.splitlines() if ln.startswith(f"  {name} "))
                for name in ("baseline", "gate")}

    first = rows()
    assert "(training " in first["gate"] and "(training cached" not in first["gate"]
    again = rows()
    assert all("(training cached, evaluation cached)" in line for line in again.values())
    metric.write_text(metric.read_text().replace("k.clamp_min(1).float()",
                                                 "k.clamp_min(1).double()"))
    edited = rows()
    for line in edited.values():  # one part of each row computed again: the column
        assert "(training cached, evaluation " in line and " parts cached)" in line, line
        done, total = line.split(", ")[-1].split(" parts")[0].split(" of ")
        assert int(total) - int(done) == 1, line
    method.write_text(method.read_text().replace("loss = ce + self.sparsity * l1",
                                                 "loss = ce + self.sparsity * l1 * 1.0"))
    retrained = rows()
    assert "(training cached" not in retrained["gate"] and "parts cached" not in \
        retrained["gate"] and "evaluation cached" not in retrained["gate"]
    assert "(training cached, evaluation cached)" in retrained["baseline"]


def test_library_explainers_example_end_to_end(tmp_path: Path) -> None:
    """examples/captum_explainer.py on the smoke preset: captum's Integrated Gradients
    and pytorch-grad-cam's Eigen-CAM as rows of the leaderboard; Eigen-CAM is
    class-agnostic, and class sensitivity says so."""
    import pandas as pd

    args = _run(["--include", str(EXAMPLES / "captum_explainer.py"), "--methods", "baseline",
                 "--explainers", "captum-ig,pgc-eigencam", "--no-progress"], tmp_path)
    assert run.main(args) == 0
    frame = pd.read_csv(tmp_path / "out" / "leaderboard.csv").set_index("method")
    assert list(frame.index) == ["baseline+captum-ig", "baseline+pgc-eigencam"]
    assert frame["insertion_auc"].notna().all()
    assert frame.loc["baseline+pgc-eigencam", "class_sensitivity"] == pytest.approx(1.0)
    assert frame.loc["baseline+captum-ig", "class_sensitivity"] < 1.0
