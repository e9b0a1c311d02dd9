"""Code digests: what a cache key knows of the code behind a name."""

from __future__ import annotations

import functools
import importlib.util
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from harness import codedigest

BASE = """
import functools
import torch

SCALE = 2.0
TABLE = {"b": 2, "a": 1}


def helper(x):
    return x * SCALE


def unrelated(x):
    return x - 1


class Base:
    def score(self, x):
        return helper(x)


class Child(Base):
    kind = "child"

    def run(self, x):
        return self.score(x) + torch.relu(x)


def uses_table(x):
    return TABLE["a"] + x


@functools.lru_cache(maxsize=None)
def cached(x):
    return helper(x)


def make_lambdas():
    return (lambda cfg: helper(cfg)), (lambda cfg: unrelated(cfg))
"""


@pytest.fixture
def load(tmp_path: Path) -> Iterator[object]:
    """``load(text)`` imports ``text`` as a fresh module (a new name each call)."""
    names: list[str] = []

    def _load(text: str) -> types.ModuleType:
        name = f"digest_probe_{len(names)}"
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(text))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        names.append(name)
        return mod

    yield _load
    for n in names:
        sys.modules.pop(n, None)


def _same_name(mod: types.ModuleType, obj_name: str) -> str:
    """The digest of ``mod.obj_name`` as if the module had the first probe's name (the
    module's name is part of the digest: compare like with like)."""
    items = codedigest.closure([getattr(mod, obj_name)])
    return str(sorted((k.split(":", 1)[1], v) for k, v in items.items()))


def test_the_digest_follows_what_a_class_names(load) -> None:  # type: ignore[no-untyped-def]
    a = load(BASE)
    closure = {k.split("#")[0] for k in codedigest.closure([a.Child])}
    # its own base, its methods, the helper they call and nothing else of the module
    name = a.__name__
    assert {f"{name}:Child", f"{name}:Base", f"{name}:Base.score", f"{name}:Child.run",
            f"{name}:helper"} == closure
    # torch is a library: followed by version, never by source
    assert not any(k.startswith("torch") for k in closure)


def test_an_edit_changes_exactly_the_digests_that_name_it(load) -> None:  # type: ignore[no-untyped-def]
    a = load(BASE)
    b = load(BASE.replace("return x * SCALE", "return x * SCALE + 0"))
    c = load(BASE.replace("return x - 1", "return x - 2"))
    d = load(BASE.replace("SCALE = 2.0", "SCALE = 3.0"))
    e = load(BASE.replace('"a": 1', '"a": 5'))
    # the helper's edit reaches the class that calls it
    assert _same_name(a, "Child") != _same_name(b, "Child")
    # an edit elsewhere in the module does not
    assert _same_name(a, "Child") == _same_name(c, "Child")
    assert _same_name(a, "unrelated") != _same_name(c, "unrelated")
    # a constant enters by value; a dict's order does not matter
    assert _same_name(a, "helper") != _same_name(d, "helper")
    assert _same_name(a, "uses_table") != _same_name(e, "uses_table")
    assert _same_name(a, "uses_table") == _same_name(c, "uses_table")


def test_wrappers_lambdas_and_partials(load) -> None:  # type: ignore[no-untyped-def]
    a = load(BASE)
    b = load(BASE.replace("return x * SCALE", "return x * SCALE + 0"))
    # a decorated function is digested through its wrapper
    assert _same_name(a, "cached") != _same_name(b, "cached")
    # two lambdas of one module (one qualified name) are told apart by their code
    first, second = a.make_lambdas()
    assert codedigest.digest(first) != codedigest.digest(second)
    assert len(codedigest.closure([first, second])) == 4  # two lambdas, two helpers
    # a partial is digested as its function (and arguments that are code)
    assert codedigest.digest(functools.partial(a.helper, 1)) == codedigest.digest(a.helper)
    # the order of the objects does not matter
    assert codedigest.digest(a.helper, a.Child) == codedigest.digest(a.Child, a.helper)


def test_code_without_a_file_is_digested_by_its_bytecode() -> None:
    ns: dict[str, object] = {"__name__": "__main__"}
    exec("def f(x):\n    return x + 1\n", ns)
    ns2: dict[str, object] = {"__name__": "__main__"}
    exec("def f(x):\n    return x + 2\n", ns2)
    assert codedigest.digest(ns["f"]) != codedigest.digest(ns2["f"])
    ns3: dict[str, object] = {"__name__": "__main__"}
    exec("def f(x):\n    return x + 1\n", ns3)
    assert codedigest.digest(ns["f"]) == codedigest.digest(ns3["f"])


def test_libraries_are_not_followed() -> None:
    assert not codedigest.is_own(torch.nn.Linear)
    assert not codedigest.is_own(functools.partial)
    assert codedigest.digest(torch.nn.functional.relu) == codedigest.digest()
    from methods.posthoc import CAM

    assert codedigest.is_own(CAM)
    assert codedigest.digest(CAM) != codedigest.digest()


def test_docstrings_comments_and_layout_do_not_change_a_digest(load) -> None:  # type: ignore[no-untyped-def]
    """The documentation is generated from docstrings: editing one, a comment or the
    layout keeps every checkpoint and score; editing the code does not."""
    a = load(BASE)
    b = load(BASE.replace("class Base:\n", 'class Base:\n    """Scores x (Eq. 3)."""\n\n')
              .replace("def helper(x):\n", 'def helper(x):\n    """Doubles."""  \n'
                       "    # a comment\n"))
    c = load(BASE.replace("return x * SCALE", "return (x\n            * SCALE)"))
    d = load(BASE.replace("return x * SCALE", "return x * SCALE * 1"))
    assert _same_name(a, "Child") == _same_name(b, "Child") == _same_name(c, "Child")
    assert _same_name(a, "Child") != _same_name(d, "Child")
    # a string that is not the first statement is code, not a docstring
    e = load(BASE.replace("    return x - 1", '    y = x - 1\n    "a string"\n    return y'))
    f = load(BASE.replace("    return x - 1", '    y = x - 1\n    "another"\n    return y'))
    assert _same_name(e, "unrelated") != _same_name(f, "unrelated")
    assert codedigest._code_only('def f():\n    """only a docstring"""\n') == "def f():\n    pass"
