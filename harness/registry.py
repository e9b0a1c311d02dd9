"""Typed name registries: the only place where names are resolved.

One :class:`Registry` exists per kind (methods, metrics, datasets, backbones). A
duplicate name raises at import time; an unknown name raises a one-line
:class:`~harness.errors.UserError` that lists close matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from harness.errors import UserError, shown

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with its metadata (read by the harness and the reports)."""

    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A mapping from names to objects of one kind, with metadata.

    Args:
        kind: what the registry holds, used in error messages ("method", "metric", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` with metadata ``meta``."""

        def deco(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, **meta: Any) -> None:
        """Register ``obj`` under ``name``; a name may be registered only once."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, obj, dict(meta))

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
            raise UserError(f"unknown {self.kind} {shown(name)}{hint} (known: {known})") from None

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
