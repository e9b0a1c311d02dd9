"""Headless Chromium for the page tests, and the checks every page must pass.

The driver comes from ``docs/tools/browser.py`` (shared with the README screenshot
script). Where no browser can be started the tests are skipped, saying why in one line;
with ``ATTNBENCH_REQUIRE_BROWSER=1`` (CI) they fail instead, so they cannot pass unrun.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
#: set by CI, which installs the browser: a browser that cannot start fails the tests
REQUIRED = os.environ.get("ATTNBENCH_REQUIRE_BROWSER", "") not in ("", "0")


def unavailable(why: str) -> NoReturn:
    """Skip the test (or, with ``ATTNBENCH_REQUIRE_BROWSER``, fail it)."""
    if REQUIRED:
        pytest.fail(f"ATTNBENCH_REQUIRE_BROWSER is set, but {why}")
    pytest.skip(why)


def _factory() -> ModuleType:
    path = REPO / "docs" / "tools" / "browser.py"
    spec = importlib.util.spec_from_file_location("attnbench_docs_browser", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        unavailable(f"{e.name} not installed: pip install -e '.[test]'")
    return module


def chromium(width: int = 1440, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium for a fixture to yield; quit afterwards."""
    factory = _factory()
    try:
        driver = factory.chromium(width, height)
    except factory.BrowserUnavailable as e:
        unavailable(str(e))
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    """The page's console errors (SEVERE entries) since the last call: reading the log
    empties it."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def broken_images(driver: Any) -> list[str]:
    """The <img> elements that did not load (no decoded width), by src (shortened)."""
    return driver.execute_script(
        "return Array.from(document.images)"
        ".filter(function (i) { return !i.complete || i.naturalWidth === 0; })"
        ".map(function (i) { return (i.getAttribute('src') || '(no src)').slice(0, 80); });")


LOCAL = ("file:", "data:", "about:", "blob:")


def external_resources(driver: Any) -> list[str]:
    """What the page loaded, or would load, from anywhere but the local disk or itself:
    every resource the browser fetched (Resource Timing), every src/srcset/poster/data
    attribute and <link> href in the DOM, and every url(...) / @import in its style
    sheets. Plain <a> links are not loads and are left out."""
    found: list[str] = driver.execute_script(
        """
        var local = arguments[0];
        function remote(u) {
          if (!u) return false;
          var abs = new URL(u, document.baseURI).href;
          return !local.some(function (p) { return abs.startsWith(p); });
        }
        var out = [];
        performance.getEntriesByType('resource').forEach(function (e) {
          if (remote(e.name)) out.push('fetched ' + e.name);
        });
        document.querySelectorAll('[src],[srcset],[poster],object[data],link[href]')
          .forEach(function (el) {
            ['src', 'poster', 'data', 'href'].forEach(function (a) {
              if (a === 'href' && el.tagName !== 'LINK') return;
              var v = el.getAttribute(a);
              if (v && remote(v)) out.push(el.tagName.toLowerCase() + ' ' + a + '=' + v);
            });
            var set = el.getAttribute('srcset');
            if (set) set.split(',').forEach(function (part) {
              var u = part.trim().split(/\\s+/)[0];
              if (remote(u)) out.push(el.tagName.toLowerCase() + ' srcset ' + u);
            });
          });
        var css = Array.from(document.querySelectorAll('style'))
          .map(function (s) { return s.textContent; }).join('\\n');
        document.querySelectorAll('[style]').forEach(function (el) {
          css += '\\n' + el.getAttribute('style');
        });
        var re = /url\\(\\s*['"]?([^'")\\s]+)|@import\\s+['"]([^'"]+)/g, m;
        while ((m = re.exec(css)) !== null) {
          var u = m[1] || m[2];
          if (remote(u)) out.push('css ' + u);
        }
        return out;
        """,
        list(LOCAL))
    return found


def missing_anchors(driver: Any) -> list[str]:
    """The page's links to a place on the page itself (``#name``) where no element has
    that id (nor an <a> that name)."""
    return driver.execute_script("""
      var here = location.href.split('#')[0];
      return Array.from(document.querySelectorAll('a[href]')).filter(function (a) {
        if (a.href.split('#')[0] !== here || a.hash.length < 2) return false;
        var name = decodeURIComponent(a.hash.slice(1));
        return !document.getElementById(name)
          && !Array.from(document.getElementsByName(name)).some(function (e) {
            return e.tagName === 'A';
          });
      }).map(function (a) { return a.getAttribute('href'); });""")
