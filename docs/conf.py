"""Sphinx configuration of attnbench's documentation (``tox -e docs``).

The reference pages (command line, registries, presets and their fields) are written
into ``_generated/`` by :mod:`gen` before every build, from the argument parsers, the
registries and the preset files themselves: they cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import gen  # noqa: E402

project = "attnbench"
author = "the attnbench authors"
copyright = "2026, the attnbench authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
myst_enable_extensions = ["deflist", "colon_fence"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated", "tools", "README.md", "benchmarks.md"]
html_theme = "furo"
html_title = "attnbench"
html_static_path = ["_static"]
html_css_files = ["wide.css"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
nitpicky = False


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("builder-inited", lambda app: gen.write_all(HERE / "_generated"))
