"""The built documentation in a real browser (headless Chromium): every page loads
without console errors, every link between the pages reaches an existing page and
anchor, every image loads and nothing comes from the network.

The docs are built once for the module with ``python -m sphinx -W -b html docs TMP``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests import browser

DOCS = browser.REPO / "docs"
#: folders of a Sphinx build that hold assets, not pages
ASSETS = {"_static", "_sources"}


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for k, v in attrs:
            if v is not None and (k == "id" or (k == "name" and tag == "a")):
                self.names.add(v)


def anchors(page: Path, cache: dict[Path, set[str]]) -> set[str]:
    """The ids (and <a name>s) a page defines, each page parsed once."""
    if page not in cache:
        parser = _Anchors()
        parser.feed(page.read_text(encoding="utf-8"))
        cache[page] = parser.names
    return cache[page]


def broken_links(page: Path, hrefs: list[str], cache: dict[Path, set[str]]) -> list[str]:
    """The links of ``page`` (absolute URLs, as the browser resolved them) to a local file
    that does not exist, or to an anchor its .html page does not define. Links off the
    machine (http, mailto, ...) are not followed."""
    bad = []
    for href in hrefs:
        url = urlsplit(href)
        if url.scheme != "file":
            continue
        target = Path(unquote(url.path))
        shown = os.path.relpath(target, page.parent) + (f"#{url.fragment}" if url.fragment else "")
        if not target.is_file():
            bad.append(f"{page.name}: {shown} (no such file)")
            continue
        anchor = unquote(url.fragment)
        if anchor and target.suffix == ".html" and anchor not in anchors(target, cache):
            bad.append(f"{page.name}: {shown} (no #{anchor} on {target.name})")
    return bad


def test_broken_links_finds_missing_pages_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text('<h1 id="top">a</h1><a name="old">x</a>')
    (tmp_path / "b.png").write_bytes(b"")
    base = (tmp_path / "a.html").as_uri()
    hrefs = [base, base + "#top", base + "#old", base + "#", (tmp_path / "b.png").as_uri(),
             base + "#nope", (tmp_path / "c.html").as_uri() + "#top",
             "https://example.org/missing.html", "mailto:someone@example.org"]
    bad = broken_links(tmp_path / "a.html", hrefs, {})
    assert bad == ["a.html: a.html#nope (no #nope on a.html)",
                   "a.html: c.html#top (no such file)"]


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    yield from browser.chromium(1440, 1000)


@pytest.fixture(scope="module")
def site(driver: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs built as HTML, warnings as errors."""
    out = tmp_path_factory.mktemp("docs-html")
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html",
                           str(DOCS), str(out)], cwd=browser.REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"the docs do not build with -W:\n{proc.stderr[-3000:]}"
    assert (out / "index.html").is_file(), "the docs build has no index.html"
    return out


@pytest.fixture(scope="module")
def visited(driver: Any, site: Path) -> dict[str, list[str]]:
    """Every page opened once: what each check found, all pages together."""
    found: dict[str, list[str]] = {"console": [], "links": [], "images": [], "external": []}
    pages = sorted(p for p in site.rglob("*.html")
                   if not ASSETS & set(p.relative_to(site).parts[:-1]))
    cache: dict[Path, set[str]] = {}
    for page in pages:
        name = str(page.relative_to(site))
        driver.get_log("browser")
        driver.get(page.as_uri())
        found["console"] += [f"{name}: {e}" for e in browser.console_errors(driver)]
        hrefs = driver.execute_script(
            "return Array.from(document.querySelectorAll('a[href]'))"
            ".map(function (a) { return a.href; });")
        found["links"] += broken_links(page, hrefs, cache)
        found["images"] += [f"{name}: {src}" for src in browser.broken_images(driver)]
        found["external"] += [f"{name}: {r}" for r in browser.external_resources(driver)]
    found["pages"] = [str(p.relative_to(site)) for p in pages]
    return found



@pytest.mark.slow
@pytest.mark.browser
def test_every_page_loads_without_console_errors(visited: dict[str, list[str]]) -> None:
    assert len(visited["pages"]) > 1, visited["pages"]
    assert not visited["console"], "\n".join(visited["console"])


@pytest.mark.slow
@pytest.mark.browser
def test_links_between_pages_resolve(visited: dict[str, list[str]]) -> None:
    assert not visited["links"], "\n".join(visited["links"])


@pytest.mark.slow
@pytest.mark.browser
def test_every_image_loads(visited: dict[str, list[str]]) -> None:
    assert not visited["images"], "\n".join(visited["images"])


@pytest.mark.slow
@pytest.mark.browser
def test_pages_load_nothing_from_the_network(visited: dict[str, list[str]]) -> None:
    assert not visited["external"], "\n".join(visited["external"])
