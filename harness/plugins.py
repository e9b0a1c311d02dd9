"""Plugins: code outside attnbench that registers methods, explainers, metrics,
datasets, backbones and presets, without editing the package.

Two ways, both before any name is resolved:

* ``--include PATH`` (repeatable; :func:`include`): a Python file, a folder of them
  (each ``*.py`` not starting with ``_``, in name order; a folder with an
  ``__init__.py`` is imported as one package), or an importable module name. An error
  in it is one line naming it and the line that raised.
* installed packages declaring the entry-point group ``attnbench.plugins``
  (:func:`load_entry_points`, at start-up). An entry point names a module (importing
  it registers) or a callable (called without arguments). One that fails to load is
  one warning line naming it and its error; the run goes on without it, and an unknown
  name's error names it (the name may have been its).

Whatever a plugin registers is recorded with its source (the ``--include`` path, or
``entry point NAME (DIST VERSION)``), shown by ``--list``; a name registered twice is
one error naming both sources. A plugin that fails half-way is undone: none of its
names stay. A file included again after an edit replaces what it registered (an
interactive session, a test calling the CLI twice). Plugins' code is part of the
caches' keys as the project's is (:mod:`harness.codedigest`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from harness import codedigest
from harness import config as config_mod
from harness.errors import UserError, clip, shown, shown_path
from harness.registry import ALL, FAILED, OWN, registering

#: the entry-point group installed plugins declare
GROUP = "attnbench.plugins"
#: the package ``--include`` files are imported under (``attnbench_include.<stem>``)
PACKAGE = "attnbench_include"

#: resolved path -> (module name, SHA-256 of its files) of every included file / folder
_included: dict[str, tuple[str, str]] = {}
_entry_points_loaded = False


def load(includes: Sequence[str] = (), *, say: Callable[[str], None] | None = None) -> None:
    """The installed plugins (once per process), then each ``--include`` in order."""
    load_entry_points(say=say)
    for spec in includes:
        include(spec)


@contextmanager
def _undone_on_error(source: str) -> Iterator[None]:
    """Register as ``source``; if the block raises, forget whatever it registered."""
    try:
        with registering(source):
            yield
    except BaseException:
        forget(source)
        raise


def forget(source: str) -> None:
    """Remove every entry and preset ``source`` registered."""
    for registry in ALL:
        registry.remove_source(source)
    config_mod.remove_presets(source)


def load_entry_points(*, say: Callable[[str], None] | None = None) -> list[str]:
    """Load every ``attnbench.plugins`` entry point (the first call only); returns the
    sources loaded. A failure is one warning line (``say``, default stderr) and an
    entry of :data:`harness.registry.FAILED`."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    warn = say or (lambda line: print(line, file=sys.stderr))
    loaded = []
    for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
        dist = f" ({ep.dist.name} {ep.dist.version})" if ep.dist is not None else ""
        source = f"entry point {ep.name}{dist}"
        codedigest.track(ep.module)
        try:
            with _undone_on_error(source):
                obj = ep.load()
                if callable(obj) and not isinstance(obj, types.ModuleType):
                    obj()
        except Exception as err:
            why = _one_line(err)
            FAILED[source] = why
            warn(f"warning: plugin {source} failed to load ({why}); going on without it")
            continue
        loaded.append(source)
    return loaded


def include(spec: str) -> str:
    """Import ``--include`` ``spec`` (a file, a folder or a module name); returns the
    source its entries are recorded with.

    Raises:
        UserError: no such file, folder or module; not Python; an error while importing
            it (one line, with the plugin's line that raised).
    """
    if not str(spec).strip():
        raise UserError("--include is empty: give a Python file, a folder or a module name")
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".py":
            raise UserError(f"--include {shown_path(path)}: not a Python file (.py)")
        return _include_files(spec, path, [path])
    if path.is_dir():
        if (path / "__init__.py").is_file():
            return _include_files(spec, path, sorted(path.rglob("*.py")), package=True)
        files = sorted(f for f in path.glob("*.py") if not f.name.startswith("_"))
        if not files:
            raise UserError(f"--include {shown_path(path)}: no Python file in this folder")
        return _include_files(spec, path, files)
    return _include_module(spec)


def _include_files(spec: str, path: Path, files: list[Path], *, package: bool = False) -> str:
    resolved = str(path.resolve())
    source = f"--include {spec}"
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        h.update(f.read_bytes())
    sha = h.hexdigest()
    if resolved in _included:
        name, old = _included[resolved]
        if old == sha:  # already loaded, unchanged
            return source
        forget(source)  # edited since: what it registered is replaced
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[mod]
    name = _module_name(path, resolved)
    _package()
    codedigest.track(PACKAGE)
    with _undone_on_error(source):
        if package:
            _import(spec, name, path / "__init__.py", search=[str(path)])
        else:
            if len(files) > 1 or path.is_dir():  # a folder: one package, a module each
                _import_namespace(name, path)
                for f in files:
                    _import(spec, f"{name}.{f.stem}", f)
            else:
                _import(spec, name, files[0])
    _included[resolved] = (name, sha)
    return source


def _module_name(path: Path, resolved: str) -> str:
    """``attnbench_include.<stem>``; another file of the same stem gets its path's
    digest appended (the module name is part of the code digests)."""
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in path.stem) or "plugin"
    if stem[0].isdigit():
        stem = "_" + stem
    name = f"{PACKAGE}.{stem}"
    taken = {n for r, (n, _s) in _included.items() if r != resolved}
    if name in taken:
        name += "_" + hashlib.sha256(resolved.encode()).hexdigest()[:8]
    return name


def _package() -> None:
    if PACKAGE not in sys.modules:
        pkg = types.ModuleType(PACKAGE, "modules imported by --include")
        pkg.__path__ = []
        sys.modules[PACKAGE] = pkg


def _import_namespace(name: str, path: Path) -> None:
    mod = types.ModuleType(name, f"the files of --include {path}")
    mod.__path__ = [str(path)]
    sys.modules[name] = mod


def _import(spec: str, name: str, file: Path, *, search: list[str] | None = None) -> None:
    module_spec = importlib.util.spec_from_file_location(
        name, file, submodule_search_locations=search)
    if module_spec is None or module_spec.loader is None:  # pragma: no cover - .py files load
        raise UserError(f"--include {shown_path(file)}: cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except UserError as err:  # a name taken twice, a bad preset: already one line
        del sys.modules[name]
        raise UserError(f"--include {clip(spec)}: {err}") from None
    except Exception as err:
        del sys.modules[name]
        raise UserError(f"--include {clip(spec)}: {_one_line(err)}{_where(err)}") from None


def _include_module(spec: str) -> str:
    source = f"--include {spec}"
    if spec in sys.modules and any(e.source == source for r in ALL for e in r):
        return source  # imported and registered already
    codedigest.track(spec)
    with _undone_on_error(source):
        try:
            importlib.import_module(spec)
        except ModuleNotFoundError as err:
            if err.name and (spec == err.name or spec.startswith(err.name + ".")):
                raise UserError(f"--include {shown(spec)}: no such file, folder or "
                                "importable module") from None
            raise UserError(f"--include {clip(spec)}: {_one_line(err)}{_where(err)}"
                            ) from None
        except UserError as err:
            raise UserError(f"--include {clip(spec)}: {err}") from None
        except Exception as err:
            raise UserError(f"--include {clip(spec)}: {_one_line(err)}{_where(err)}"
                            ) from None
    return source


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return clip(f"{type(err).__name__}: {text[0]}" if text else type(err).__name__, 200)


def _where(err: BaseException) -> str:
    """`` (at FILE:LINE)``: the last frame of the traceback outside attnbench and the
    import machinery (the plugin's line that raised)."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "importlib" not in f.filename and "/harness/" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {Path(f.filename).name}:{f.lineno})"


def reset() -> None:
    """Forget every plugin: its entries, presets, modules and failure (a test, or an
    interactive session starting over); installed ones load again on the next
    :func:`load`."""
    global _entry_points_loaded
    for source in {e.source for r in ALL for e in r} | set(config_mod.PRESET_SOURCES.values()):
        if source != OWN:
            forget(source)
    for mod in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[mod]
    _included.clear()
    FAILED.clear()
    _entry_points_loaded = False


def sources() -> dict[str, list[str]]:
    """Plugin source -> the names it registered (``kind name``), for ``--list``."""
    out: dict[str, list[str]] = {}
    for registry in ALL:
        for e in registry:
            if e.source != OWN:
                out.setdefault(e.source, []).append(f"{registry.kind} {e.name}")
    for name, src in config_mod.PRESET_SOURCES.items():
        out.setdefault(src, []).append(f"preset {name}")
    return out
