"""The documentation's generated pages against the code they are generated from, and the
README's shape (docs/gen.py, README.md)."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_gen", DOCS / "gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_gen"] = module
    spec.loader.exec_module(module)
    return module


gen = _gen()


def table_rows(text: str) -> list[list[str]]:
    """The cells of every body row of the Markdown pipe tables in ``text``."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])])
    return rows


def section(page: str, title: str) -> str:
    start = page.index(f"## `{title}`")
    end = page.find("\n## ", start + 1)
    return page[start:end if end >= 0 else None]


@pytest.mark.parametrize("module", ["run", "report"])
def test_cli_page_lists_exactly_the_parsers_options_with_their_help(module: str) -> None:
    from harness import report, run

    parser: argparse.ArgumentParser = {"run": run, "report": report}[module].build_parser()
    page = section(gen.cli_page(), f"python -m harness.{module}")
    rows = table_rows(page)[1:]  # the header row is first
    documented = {opt for cells in rows for opt in re.findall(r"--[a-z][a-z-]*", cells[0])}
    expected = {o for a in gen.options(parser) for o in a.option_strings}
    assert documented == expected
    by_option = {re.findall(r"--[a-z][a-z-]*", cells[0])[0]: cells[1] for cells in rows}
    for action in gen.options(parser):
        help_text = " ".join((action.help or "").replace("%%", "%").split())
        assert by_option[action.option_strings[0]] == gen.cell(help_text) or not help_text
    assert parser.format_usage().strip().splitlines()[0] in page


def test_cli_page_changes_when_the_parser_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page is read from the parser: an option added there appears in it."""
    from harness import run

    real = run.build_parser

    def with_extra() -> argparse.ArgumentParser:
        p = real()
        p.add_argument("--made-up-option", metavar="X", help="an option only this test has")
        return p

    monkeypatch.setattr(run, "build_parser", with_extra)
    assert "`--made-up-option X` | an option only this test has" in gen.cli_page()


def _ids(page: str) -> list[str]:
    body = page.split(gen.DETAILS)[0]
    return [cells[0].strip("`") for cells in table_rows(body)[1:]]


def test_registry_tables_hold_every_entry_in_registry_order() -> None:
    import harness.run  # noqa: F401  (registers everything)
    from harness import backbones, data
    from methods.base import METHODS
    from methods.explainers import EXPLAINERS
    from metrics.base import METRICS

    for page, registry in ((gen.methods_page, METHODS), (gen.explainers_page, EXPLAINERS),
                           (gen.metrics_page, METRICS), (gen.datasets_page, data.DATASETS),
                           (gen.backbones_page, backbones.BACKBONES)):
        assert _ids(page()) == registry.names(), page.__name__


def test_method_and_metric_rows_carry_the_registry_metadata() -> None:
    rows = {cells[0].strip("`"): cells for cells in table_rows(gen.methods_page())[1:]}
    assert rows["abn-amb"][1] == "`abn`"  # trained from
    assert rows["abn-hk"][5].split(", ")[:2] == ["attention mechanism", "needs boxes"]
    assert rows["cam"][6] == "epochs 0"
    metric_rows = {cells[0].strip("`"): cells for cells in table_rows(gen.metrics_page())[1:]}
    assert metric_rows["deletion_auc"][1] == "↓" and metric_rows["top1"][2] == "accuracy"
    assert metric_rows["mAP"][3] == "multi"


def test_presets_table_quotes_each_file_header_and_its_paper_values() -> None:
    from harness import config, paper_values

    page = gen.presets_page()
    table_part, details = page.split(gen.DETAILS)
    names = [re.match(r"\[`([^`]+)`\]", cells[0]).group(1)  # type: ignore[union-attr]
             for cells in table_rows(table_part)[1:]]
    assert names == list(config.PRESETS)
    header = gen.preset_header(config.PRESET_DIR / "abn-cifar100.yaml")
    assert header.startswith("ABN Sec. 4.1-4.2")
    start = details.index("### `abn-cifar100`")
    own = details[start:details.index("\n### ", start + 1)]
    assert header in own
    values = paper_values.PAPER_VALUES["abn-cifar100"]
    assert values and all(f"`{v.metric}` {v.quoted} — {v.source}" in own for v in values)


def test_preset_fields_are_those_a_file_may_hold_with_their_ranges() -> None:
    from harness import config

    page = gen.config_page()
    fields = [cells[0].strip("`") for cells in table_rows(page) if cells[0] != "field"]
    assert "train.epochs" in fields and "eval.causal_n" in fields
    assert not set(config.NOT_IN_FILES) & set(fields)  # run-set fields are not offered
    rows = {cells[0].strip("`"): cells for cells in table_rows(page)}
    assert rows["train.epochs"][3] == "in [1, 10000]"
    assert rows["train.schedule"][3] == "step / cosine"


def test_diagram_source_is_read_and_checked(tmp_path: Path) -> None:
    nodes, edges = gen.read_diagram(DOCS / "dataflow.txt")
    assert {"plan", "train", "evaluate", "store", "reports"} <= set(nodes)
    assert ("evaluate", "store", "rows, per-image scores") in edges
    bad = tmp_path / "bad.txt"
    bad.write_text("node a | A | 0,0 | step\nedge a -> b | to nowhere\n", encoding="utf-8")
    with pytest.raises(ValueError, match="names no node 'b'"):
        gen.read_diagram(bad)
    bad.write_text("node a | A\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected"):
        gen.read_diagram(bad)
    svg = tmp_path / "flow.svg"
    gen.draw_diagram(DOCS / "dataflow.txt", svg)
    text = svg.read_text(encoding="utf-8")
    assert text.startswith("<?xml") and "results store" in text


def test_readme_is_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert local, "README links into the docs"
    for link in local:
        assert (ROOT / link).exists(), link
    # the quick start is the two commands
    assert "./dev python -m harness.run --methods all" in readme
    assert "./dev python -m pytest" in readme


def test_store_and_plugin_check_tables_come_from_the_schema_and_the_checks() -> None:
    from harness import store, testing

    rows = table_rows(gen.store_page())[1:]
    assert [r[0].strip("`") for r in rows] == list(store.expected_schema())
    assert all(r[1] != "—" for r in rows), "every table of the store is described"
    assert rows[0][2] == ", ".join(f"`{c}`" for c in store.expected_schema()[rows[0][0].strip("`")])
    checks = [r[0] for r in table_rows(gen.testing_page())[1:]]
    own = [n for n, f in vars(testing).items()
           if n.startswith("check_") and getattr(f, "__module__", "") == testing.__name__]
    assert checks == [f"`{n}(...)`" for n in own] and "`check_method(...)`" in checks


def test_findings_table_is_the_measured_runs_leaderboard(tmp_path: Path) -> None:
    import pandas as pd

    for _, csv, columns in gen.FINDINGS:
        frame = pd.read_csv(DOCS / csv, dtype={"seed": str})
        text = gen.findings_table(DOCS / csv, columns)
        rows = {cells[0]: cells for cells in table_rows(text)[1:]}
        assert len(rows) == int((frame["seed"] == "all").sum())
        abn = frame[(frame["method"] == "abn") & (frame["seed"] == "all")].iloc[0]
        assert rows["abn"][1] == f"{abn['top1']:.3f} ± {abn['top1_sd']:.3f}"
        assert f"Revision `{abn['git_rev']}`" in text
    # a row without a value is an empty cell, not "nan"
    small = tmp_path / "data" / "run.csv"
    small.parent.mkdir()
    small.write_text("method,explainer,seed,seeds,n,n_causal,git_rev,dataset,backbone,top1,top1_sd\n"
                     "baseline+random,random,all,0,10,5,abc,d,b,,\n", encoding="utf-8")
    assert table_rows(gen.findings_table(small, ("top1",)))[1] == ["baseline+random", "—"]
