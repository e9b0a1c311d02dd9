"""User-facing errors: one line, naming the option or file and what was expected."""

from __future__ import annotations

#: characters of a user's value that an error message quotes
QUOTE_LIMIT = 80
#: characters of a path an error message shows (a real path fits: it is the file's name
#: the user needs; a longer one is not a path but a pasted value)
PATH_LIMIT = 240
#: the longest file name (one part of a path) POSIX file systems take
NAME_MAX = 255


class UserError(Exception):
    """An error caused by the user's input (an option, a file, a name) or by a file
    the run cannot use (a full disk, a read-only or damaged store).

    The CLI prints ``str(err)`` on one line and exits with status 2; it never shows a
    traceback for these.
    """


def shown(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to the first ``limit`` characters of
    the value (a long value ends in ``...`` and says how long it was), on one line."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else _one_line(repr(value))
    head = repr(text[:limit]) if isinstance(value, str) else _one_line(text[:limit])
    return f"{head}... ({len(text)} characters)"


def clip(text: object, limit: int = QUOTE_LIMIT) -> str:
    """``text`` as is, or its first ``limit`` characters and ``...`` (for a value shown
    unquoted, e.g. a ``--set`` item or a path)."""
    text = _one_line(str(text))
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown_path(path: object) -> str:
    """A path for an error message: up to :data:`PATH_LIMIT` characters when it could
    be one (no part longer than the 255 characters file systems allow), else cut like
    any long value."""
    text = str(path)
    real = all(len(part) <= NAME_MAX for part in text.split("/"))
    return clip(text, PATH_LIMIT if real else QUOTE_LIMIT)


def _one_line(text: str) -> str:
    return " ".join(text.split()) if "\n" in text else text


def message(err: UserError) -> str:
    """The one-line message of ``err``. A UserError raised in a DataLoader worker
    process arrives re-raised with the worker's traceback as its text; its message is
    that traceback's last line, after the exception's qualified name."""
    text = str(err)
    if "Traceback (most recent call last)" not in text:
        return text
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.split(".")[-1].endswith("Error") else last
