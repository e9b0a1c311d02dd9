"""Typed name registries: the only place where names are resolved.

One :class:`Registry` exists per kind (methods, metrics, datasets, backbones,
explainers). Every entry records its *source*: ``attnbench`` for the project's own,
else the plugin that registered it (:mod:`harness.plugins` sets it with
:func:`registering`). A name registered twice is a one-line
:class:`~harness.errors.UserError` naming both sources; an unknown name is one that
lists close matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from harness.errors import UserError, shown

T = TypeVar("T")

#: the source of the project's own entries
OWN = "attnbench"
_SOURCE: ContextVar[str] = ContextVar("attnbench_registry_source", default=OWN)
#: every registry, in creation order (a plugin that fails to load is undone in each)
ALL: list[Registry[Any]] = []
#: plugins that failed to load: source -> the error's one line (an unknown name's error
#: names them: the name may have been theirs)
FAILED: dict[str, str] = {}


@contextmanager
def registering(source: str) -> Iterator[None]:
    """Entries added within the block are recorded as ``source``'s (a plugin's path or
    entry point)."""
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


def current_source() -> str:
    """Who registers now: :data:`OWN` or a plugin."""
    return _SOURCE.get()


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with its metadata (read by the harness and the reports)."""

    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)
    #: :data:`OWN`, or the plugin that registered it
    source: str = OWN


class Registry(Generic[T]):
    """A mapping from names to objects of one kind, with metadata.

    Args:
        kind: what the registry holds, used in error messages ("method", "metric", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        ALL.append(self)

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` with metadata ``meta``."""

        def deco(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, **meta: Any) -> None:
        """Register ``obj`` under ``name``; a name may be registered only once.

        Raises:
            UserError: ``name`` is registered already (naming both sources)."""
        source = current_source()
        if name in self._entries:
            raise UserError(f"{self.kind} {shown(name)} is registered twice: by "
                            f"{self._entries[name].source} and by {source}")
        self._entries[name] = Entry(name, obj, dict(meta), source)

    def remove_source(self, source: str) -> list[str]:
        """Forget every entry ``source`` registered (a plugin that failed half-way, or
        one loaded again after an edit); returns their names."""
        gone = [n for n, e in self._entries.items() if e.source == source]
        for n in gone:
            del self._entries[n]
        return gone

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name``; unknown names raise a one-line UserError."""
        try:
            return self._entries[name]
        except KeyError:
            if not isinstance(name, str):
                raise UserError(f"a {self.kind} name must be a string, got {shown(name)}"
                                ) from None
            lower = {n.lower(): n for n in self._entries}
            close = ([lower[name.lower()]] if name.lower() in lower else [])
            close += [lower[c] for c in difflib.get_close_matches(
                name.lower()[:200], list(lower), n=3, cutoff=0.5) if lower[c] not in close]
            hint = f"; did you mean {', '.join(close[:3])}?" if close else ""
            known = ", ".join(sorted(self._entries))
            failed = "".join(f"; plugin {src} failed to load ({why})"
                             for src, why in FAILED.items())
            raise UserError(f"unknown {self.kind} {shown(name)}{hint} (known: {known})"
                            f"{failed}") from None

    def get(self, name: str) -> T:
        """The object registered under ``name``."""
        return self.entry(name).obj

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
