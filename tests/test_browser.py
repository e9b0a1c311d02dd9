"""The leaderboard page in a real browser (headless Chromium): it loads without console
errors, sorts, toggles its intervals, shows every image, loads nothing from the network
and fits a 1440 px window.

The page is a smoke run's, made once for the module (a few minutes);
``ATTNBENCH_LEADERBOARD=PATH`` checks an existing leaderboard.html instead.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import browser

pytestmark = [pytest.mark.slow, pytest.mark.browser]

WIDTH = 1440


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    yield from browser.chromium(WIDTH, 1000)


@pytest.fixture(scope="module")
def leaderboard(driver: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke run's leaderboard.html (asks for the driver first: no run without a
    browser to look at it)."""
    given = os.environ.get("ATTNBENCH_LEADERBOARD")
    if given:
        path = Path(given).resolve()
        assert path.is_file(), f"ATTNBENCH_LEADERBOARD: no such file {path}"
        return path
    tmp = tmp_path_factory.mktemp("leaderboard")
    out = tmp / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.run", "--preset", "smoke", "--methods", "all",
         "--out", str(out), "--db", str(tmp / "s.sqlite"), "--cache-dir", str(tmp / "cache"),
         "--device", "cpu", "--no-progress"],
        cwd=browser.REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "leaderboard.html"


@pytest.fixture
def page(driver: Any, leaderboard: Path) -> Any:
    """The leaderboard freshly loaded (unsorted, intervals hidden); the console log holds
    this load's messages only."""
    driver.get_log("browser")
    driver.get(leaderboard.as_uri())
    driver.execute_script("window.scrollTo(0, 0)")
    return driver


#: the board as the reader sees it: per row the method key, the explainer and each
#: cell's shown value (its first text: "0.156", "n/a") with its data-sort attribute
READ_BOARD = """
return Array.from(document.querySelectorAll('#board tbody tr')).map(function (tr) {
  return Array.from(tr.cells).map(function (td) {
    var first = td.firstChild;
    var shown = td.dataset.key !== undefined ? td.dataset.key
      : (first && first.nodeType === Node.TEXT_NODE ? first.textContent
      : (first ? first.textContent : '')).trim();
    return [shown, td.dataset.sort === undefined ? null : td.dataset.sort];
  });
});
"""


def board(driver: Any) -> list[list[tuple[str, str | None]]]:
    return [[(s, k) for s, k in row] for row in driver.execute_script(READ_BOARD)]


def shown_number(text: str) -> float | None:
    """The number a cell shows, None for "n/a"."""
    if text == "n/a":
        return None
    return float(text)


def click_header(driver: Any, col: int) -> None:
    th = driver.find_elements("css selector", "#board thead th")[col]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})",
                          th)
    th.click()


def direction(values: list[float]) -> int:
    """+1 non-decreasing, -1 non-increasing, 0 neither (or all equal)."""
    if values[0] == values[-1]:
        return 0
    if all(a <= b for a, b in itertools.pairwise(values)):
        return 1
    if all(a >= b for a, b in itertools.pairwise(values)):
        return -1
    return 0


def test_loads_without_console_errors(page: Any) -> None:
    assert page.find_elements("css selector", "#board tbody tr"), "the leaderboard has no rows"
    assert browser.console_errors(page) == []


def test_numeric_columns_sort_both_ways_with_na_last(page: Any) -> None:
    rows = board(page)
    ths = page.find_elements("css selector", "#board thead th")
    heads = [th.text.split("\n")[0] for th in ths]
    # the columns the page shows (the others cannot be clicked until shown)
    numeric = [c for c, th in enumerate(ths)
               if th.is_displayed() and all(r[c][1] is not None for r in rows)]
    assert numeric, "no numeric column (cells with data-sort) on the board"
    as_rows = sorted(map(tuple, rows))
    checked = 0
    problems = []
    for col in numeric:
        values = {shown_number(r[col][0]) for r in rows} - {None}
        if len(values) < 2:
            continue  # one value (or none): no order to see
        seen = []
        for click in (1, 2):
            click_header(page, col)
            now = board(page)
            assert sorted(map(tuple, now)) == as_rows, f"{heads[col]}: rows changed by sorting"
            shown = [shown_number(r[col][0]) for r in now]
            n = sum(v is not None for v in shown)
            if any(v is None for v in shown[:n]):
                problems.append(f"{heads[col]} click {click}: n/a before numbers {shown}")
                continue
            d = direction([v for v in shown[:n] if v is not None])
            if d == 0:
                problems.append(f"{heads[col]} click {click}: not in order {shown}")
            seen.append(d)
        if len(seen) == 2 and seen[0] == seen[1]:
            problems.append(f"{heads[col]}: the second click did not reverse the order")
        checked += 1
    assert checked, "no numeric column with two different values to sort"
    assert not problems, "\n".join(problems)
    assert browser.console_errors(page) == []


def test_method_column_sorts_by_name(page: Any) -> None:
    names = [r[0][0] for r in board(page)]
    click_header(page, 0)
    first = [r[0][0] for r in board(page)]
    click_header(page, 0)
    second = [r[0][0] for r in board(page)]
    assert first == sorted(names, key=str.casefold)
    assert second == sorted(names, key=str.casefold, reverse=True)
    assert browser.console_errors(page) == []


#: per interval (.ci but the paper's quoted values, which always show) of the board's
#: shown cells: whether the reader sees it
VISIBLE_CI = """
return Array.from(document.querySelectorAll('#board td'))
  .filter(function (td) { return td.getClientRects().length > 0; })
  .flatMap(function (td) { return Array.from(td.querySelectorAll('.ci:not(.paper)')); })
  .filter(function (e) { return e.textContent.trim() !== ''; })
  .map(function (e) {
    var s = getComputedStyle(e);
    return e.getClientRects().length > 0 && s.visibility !== 'hidden' && s.display !== 'none';
  });
"""


def test_interval_toggle_shows_and_hides_the_intervals(page: Any) -> None:
    box = page.find_element("id", "show-ci")
    assert not box.is_selected()
    shown = page.execute_script(VISIBLE_CI)
    assert shown, "no interval on the board"
    assert not any(shown), "intervals shown before the toggle"
    box.click()
    assert box.is_selected()
    assert all(page.execute_script(VISIBLE_CI)), "the toggle did not show every interval"
    box.click()
    assert not any(page.execute_script(VISIBLE_CI)), "the toggle did not hide the intervals"
    assert browser.console_errors(page) == []


def test_every_image_loads(page: Any) -> None:
    assert page.execute_script("return document.images.length") > 0, "no image on the page"
    assert browser.broken_images(page) == []


def test_loads_nothing_from_the_network(page: Any) -> None:
    assert page.execute_script("return location.protocol") == "file:"
    assert browser.external_resources(page) == []


def test_in_page_links_reach_their_targets(page: Any) -> None:
    assert browser.missing_anchors(page) == []


def test_table_fits_a_1440_px_window(page: Any) -> None:
    """At the default columns the board fits: neither the page nor any box around the
    board (its scroll container) scrolls sideways."""
    m = page.execute_script("""
      var doc = document.scrollingElement, t = document.getElementById('board');
      var wide = [];
      for (var e = t.parentElement; e && e !== document.body; e = e.parentElement) {
        if (e.scrollWidth > e.clientWidth) {
          wide.push(e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')
                    + ' ' + e.scrollWidth + ' > ' + e.clientWidth);
        }
      }
      return {inner: innerWidth, page: [doc.scrollWidth, doc.clientWidth], wide: wide,
              table: Math.ceil(t.getBoundingClientRect().right),
              columns: t.tHead.rows[0].cells.length};""")
    assert m["inner"] == WIDTH, m
    assert m["page"][0] <= m["page"][1], f"the page scrolls sideways: {m}"
    assert m["wide"] == [], f"the board's container scrolls sideways: {m}"
    assert m["table"] <= m["page"][1], f"the board ends beyond the window: {m}"


def test_checks_catch_faults(driver: Any, tmp_path: Path) -> None:
    """The checks above see what they look for: a broken image, a console error, external
    loads and a link to a missing anchor on a page made to have them (and nothing on a
    clean one)."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!doctype html><html><head><link rel="stylesheet" href="https://example.invalid/s.css">'
        "<style>body { background: url('http://example.invalid/bg.png'); }</style></head>"
        '<body><img src="missing.png"><img src="https://example.invalid/x.png">'
        '<a href="https://example.org/">a plain link</a>'
        '<a id="here" href="#here">here</a><a name="old" href="#old">old</a>'
        '<a href="#nowhere">nowhere</a>'
        "<script>console.error('boom')</script></body></html>")
    driver.get(bad.as_uri())
    errors = browser.console_errors(driver)
    assert any("boom" in e for e in errors), errors
    assert len(browser.broken_images(driver)) == 2
    external = browser.external_resources(driver)
    assert "link href=https://example.invalid/s.css" in external, external
    assert "img src=https://example.invalid/x.png" in external, external
    assert "css http://example.invalid/bg.png" in external, external
    assert not any("example.org" in e for e in external), external
    assert browser.missing_anchors(driver) == ["#nowhere"]
    good = tmp_path / "good.html"
    good.write_text('<!doctype html><html><body><img src="data:image/gif;base64,'
                    'R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="></body></html>')
    driver.get(good.as_uri())
    assert browser.console_errors(driver) == []
    assert browser.broken_images(driver) == []
    assert browser.external_resources(driver) == []
    assert browser.missing_anchors(driver) == []
