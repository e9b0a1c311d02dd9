"""The Python API: harness.plan / harness.execute, and the run path's shape."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

import harness
from harness import plugins, run
from harness.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _forget_plugins() -> Iterator[None]:
    yield
    plugins.reset()


def _where(tmp: Path, name: str) -> dict[str, str]:
    return {"out": str(tmp / name), "db": str(tmp / "db.sqlite"),
            "cache_dir": str(tmp / "cache")}


def test_plan_and_execute_give_the_command_line_s_leaderboard(tmp_path: Path) -> None:
    plan = harness.plan(methods=["baseline", "abn"], preset="smoke", seeds=[0, 1],
                        progress=False, **_where(tmp_path, "api"))
    assert plan.methods == ("baseline", "abn") and plan.seeds == (0, 1)
    assert plan.rows() == [("baseline", "native"), ("abn", "native"),
                           ("baseline", "random")]
    result = harness.execute(plan)
    frame = result.frame
    assert isinstance(frame, pd.DataFrame)
    assert result.run_id == 1 and len(result.rows) == 6  # 3 rows x 2 seeds
    assert set(frame["method"]) == {"baseline", "abn", "baseline+random"}
    assert (tmp_path / "api" / "leaderboard.csv").is_file()
    # the command line is a layer over the same steps: the same numbers from the store
    assert run.main(["--methods", "baseline,abn", "--preset", "smoke", "--seeds", "2",
                     "--no-progress", "--out", str(tmp_path / "cli"), "--db",
                     str(tmp_path / "db.sqlite"), "--cache-dir", str(tmp_path / "cache")]) == 0
    cli = pd.read_csv(tmp_path / "cli" / "leaderboard.csv")
    api = pd.read_csv(tmp_path / "api" / "leaderboard.csv")
    cols = [c for c in api.columns if c.startswith(("top1", "insertion_auc", "mprt"))]
    pd.testing.assert_frame_equal(api[["method", "seed", *cols]], cli[["method", "seed", *cols]])


def test_plan_checks_everything_up_front(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown method 'abm'; did you mean "):
        harness.plan(methods=["abm"], preset="smoke", **_where(tmp_path, "x"))
    with pytest.raises(UserError, match="--seeds"):
        harness.plan(methods="all", seeds="a,b", **_where(tmp_path, "x"))
    with pytest.raises(TypeError, match="no_such_option"):
        harness.plan(methods="all", no_such_option=1)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_plan_loads_plugins(tmp_path: Path) -> None:
    plan = harness.plan(methods=["baseline", "gate"], preset="smoke", explainers="native",
                        include=[str(ROOT / "examples" / "new_method.py")], progress=False,
                        **_where(tmp_path, "p"))
    result = harness.execute(plan)
    assert list(result.frame["method"]) == ["baseline", "gate"]


#: the run path: argument parsing, planning, the loop, training, evaluation of a row,
#: recording, the store and the statistics — every module of harness/ (the dataset
#: readers of harness/data aside)
RUN_PATH = tuple(sorted(str(p.relative_to(ROOT)) for p in (ROOT / "harness").glob("*.py")))


@pytest.mark.parametrize("path", RUN_PATH)
def test_the_run_path_reads_as_steps(path: str) -> None:
    """No function body over 60 lines (its docstring aside), no parameter list of a
    dozen items; argparse's option table, one call per option, is data and exempt."""
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        a = node.args
        n_params = len(a.posonlyargs + a.args + a.kwonlyargs) - (
            1 if a.args and a.args[0].arg in ("self", "cls") else 0)
        assert n_params < 12, f"{path}:{node.name} takes {n_params} parameters"
        if node.name == "build_parser":
            continue
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        length = (node.end_lineno or node.lineno) - body[0].lineno + 1
        assert length <= 60, f"{path}:{node.name} is {length} lines"
