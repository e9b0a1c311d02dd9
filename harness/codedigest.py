"""Digests of code: which code computed a cached checkpoint or score.

:func:`digest` hashes the source of functions and classes *and of everything they
name*, followed transitively: a function's global names (resolved in its module,
including ``module.attribute`` uses of an own module), the cells of its closure and
its defaults; a class's own bases and every function, property or static/class method
in its body. Plain constants it names (numbers, strings, tuples, lists and dicts of
them) enter by value. Only *own* code is followed: the project's packages, plugins
(:func:`track`), ``__main__`` and any module that does not live in the interpreter's
standard library or site-packages; libraries enter the caches' keys by version instead.
Modules that only print, write files or report (:data:`QUIET`) are not followed.

The source enters as code: docstrings, comments and layout are left out (the
documentation is generated from the docstrings; editing it retrains nothing).
Where no source is available (a function typed into an interactive session) the
compiled code (bytecode, constants and names) stands in for it.

Digests are memoised per object for the life of the process: a cache key labels the
code that was loaded, not a file edited on disk since (:mod:`linecache` would read the
edit).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import os
import sys
import sysconfig
import textwrap
import types
from collections.abc import Iterable, Iterator
from typing import Any

#: the project's own packages
PROJECT = ("harness", "methods", "metrics", "reports")
#: own modules whose code does not change a number (progress output, files, errors,
#: the store, the reports): not followed
QUIET = ("harness.progress", "harness.safeio", "harness.errors", "harness.store",
         "harness.cli", "harness.report", "harness.registry", "reports")

_tracked: set[str] = {*PROJECT, "__main__"}
_memo: dict[Any, tuple[str, tuple[Any, ...]]] = {}


def track(module: str) -> None:
    """Treat the package of ``module`` (its top-level name) as own code (a plugin
    installed into site-packages)."""
    _tracked.add(module.split(".")[0])


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")
            if k in paths}
    dirs |= {os.path.realpath(p) for p in sys.path if p.endswith(("site-packages",
                                                                   "dist-packages"))}
    return tuple(sorted(dirs))


@functools.lru_cache(maxsize=4096)
def _own_module(name: str) -> bool:
    if name in QUIET or name.split(".")[0] in QUIET or any(
            name.startswith(q + ".") for q in QUIET):
        return False
    if name.split(".")[0] in _tracked:
        return True
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if not path:  # built in, or a namespace package
        return False
    real = os.path.realpath(path)
    return not any(real.startswith(d + os.sep) for d in _library_dirs())


def is_own(obj: Any) -> bool:
    """Whether ``obj`` (a function or class) is own code, followed by :func:`digest`."""
    name = getattr(obj, "__module__", None)
    return isinstance(name, str) and _own_module(name)


def digest(*objs: Any) -> str:
    """16 hex digits over the source of ``objs`` and of the own code they name,
    transitively (see the module's doc); the same for the same code, whatever the
    order of ``objs``."""
    h = hashlib.sha256()
    for ident, text in sorted(closure(objs).items()):
        h.update(ident.encode())
        h.update(b"\0")
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def closure(objs: Iterable[Any]) -> dict[str, str]:
    """``module:qualname`` -> source text of every own function and class reached from
    ``objs``."""
    out: dict[str, str] = {}
    seen: set[int] = set()
    stack = list(objs)
    while stack:
        for obj in _unwrap(stack.pop()):
            if (not isinstance(obj, (types.FunctionType, type)) or not is_own(obj)
                    or id(obj) in seen):
                continue
            seen.add(id(obj))
            text, refs = _described(obj)
            # two lambdas of one module share a qualified name: their text tells them apart
            tag = hashlib.sha256(text.encode()).hexdigest()[:12]
            out[f"{obj.__module__}:{obj.__qualname__}#{tag}"] = text
            stack.extend(refs)
    return out


def _unwrap(obj: Any) -> Iterator[Any]:
    """The functions and classes behind ``obj`` (a partial, a bound method, a
    descriptor, an instance of an own class)."""
    if isinstance(obj, functools.partial):
        yield obj.func
        yield from obj.args
        yield from obj.keywords.values()
    elif isinstance(obj, types.MethodType):
        yield obj.__func__
    elif isinstance(obj, (staticmethod, classmethod)):
        yield obj.__func__
    elif isinstance(obj, property):
        yield from (f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
    elif not isinstance(obj, type) and hasattr(obj, "__wrapped__"):
        yield inspect.unwrap(obj)  # a decorator's wrapper: the decorated function
    elif isinstance(obj, (types.FunctionType, type)):
        yield obj
    elif callable(obj) and is_own(type(obj)):  # a callable instance: its class's code
        yield type(obj)


def _described(obj: types.FunctionType | type) -> tuple[str, tuple[Any, ...]]:
    if obj not in _memo:
        if isinstance(obj, type):
            _memo[obj] = (_source(obj), _class_refs(obj))
        else:
            text = _source(obj) + _constants(obj)
            if obj.__name__ == "<lambda>":  # its source is its whole line, maybe shared
                text += "\n# " + _compiled(obj)
            _memo[obj] = (text, _refs_of(obj))
    return _memo[obj]


def _source(obj: types.FunctionType | type) -> str:
    try:
        return _code_only(inspect.getsource(obj))
    except (OSError, TypeError):  # no file behind it: its compiled form stands in
        if isinstance(obj, type):
            return repr(sorted((k, _compiled(v)) for k, v in vars(obj).items()
                               if isinstance(v, types.FunctionType)))
        return _compiled(obj)


def _code_only(source: str) -> str:
    """The source as code, without docstrings, comments or layout: editing what a
    function says about itself (the documentation is generated from docstrings) keeps
    its digest. Source that does not parse alone (a lambda's line) stays as written."""
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def _compiled(fn: types.FunctionType) -> str:
    def walk(code: types.CodeType) -> str:
        consts = [walk(c) if isinstance(c, types.CodeType) else repr(c)
                  for c in code.co_consts]
        return f"{code.co_code.hex()}|{consts}|{code.co_names}"

    return walk(fn.__code__)


def _class_refs(cls: type) -> tuple[Any, ...]:
    refs: list[Any] = [b for b in cls.__mro__[1:] if is_own(b)]
    for value in vars(cls).values():
        if isinstance(value, (types.FunctionType, staticmethod, classmethod, property)):
            refs.append(value)
    return tuple(refs)


def _names(code: types.CodeType) -> set[str]:
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out


def _constants(fn: types.FunctionType) -> str:
    """The constants ``fn`` names and the plain values of its closure, by value (its
    source shows their names only)."""
    consts = [f"{name}={_repr(fn.__globals__[name])}" for name in sorted(_names(fn.__code__))
              if name in fn.__globals__ and _plain(fn.__globals__[name])]
    for i, cell in enumerate(fn.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _plain(value):
            consts.append(f"<cell {i}>={_repr(value)}")
    return ("\n# " + "; ".join(consts)) if consts else ""


def _repr(value: Any) -> str:
    """``repr`` with sets and dicts in sorted order (a set's own order changes with
    the interpreter's string hashing)."""
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(_repr(v) for v in value)) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(sorted(f"{_repr(k)}: {_repr(v)}" for k, v in value.items())) + "}"
    if isinstance(value, (list, tuple)):
        return type(value).__name__ + "(" + ", ".join(_repr(v) for v in value) + ")"
    return repr(value)


def _refs_of(fn: types.FunctionType) -> tuple[Any, ...]:
    names = _names(fn.__code__)
    g = fn.__globals__
    refs: list[Any] = []
    for name in names:
        value = g.get(name)
        if isinstance(value, types.ModuleType):
            if _own_module(value.__name__):  # module.attribute: the attributes named
                refs.extend(getattr(value, a) for a in names if hasattr(value, a))
        elif value is not None:
            refs.append(value)
    for cell in fn.__closure__ or ():
        try:
            refs.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    refs.extend(fn.__defaults__ or ())
    refs.extend((fn.__kwdefaults__ or {}).values())
    return tuple(refs)


def _plain(value: Any, depth: int = 0) -> bool:
    """A constant that enters a digest by value: numbers, strings, and small tuples,
    lists, sets and dicts of them."""
    if isinstance(value, (bool, int, float, complex, str, bytes, type(None))):
        return not isinstance(value, (str, bytes)) or len(value) <= 10_000
    if depth < 3 and isinstance(value, (tuple, list, frozenset, set)) and len(value) <= 256:
        return all(_plain(v, depth + 1) for v in value)
    if depth < 3 and isinstance(value, dict) and len(value) <= 256:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False
