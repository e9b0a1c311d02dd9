"""What every command line of attnbench shares: one-line argument errors and SIGTERM
handled as Ctrl-C.

This module imports only the standard library, so that the entry points can install
:func:`terminate_as_interrupt` before the libraries load (seconds).
"""

from __future__ import annotations

import argparse
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

from harness.errors import QUOTE_LIMIT, clip, shown

#: exit statuses: a signal's number plus 128, as shells report them
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class ArgumentError(Exception):
    """A bad command-line value: printed as one ``error:`` line (exit 2), never with the
    usage block."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers, ``timeout`` and container runtimes send): handled
    wherever Ctrl-C is (the run marked ``interrupted``, caches consistent), then exit
    143 instead of 130."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`ArgumentError` (one line, naming
    the option) instead of printing the usage block; ``--help`` is unchanged."""

    def error(self, message: str) -> NoReturn:
        # argparse quotes the user's whole value: keep its first QUOTE_LIMIT characters
        message = re.sub(f"'([^']{{{QUOTE_LIMIT + 1},}})'|\"([^\"]{{{QUOTE_LIMIT + 1},}})\"",
                         lambda m: shown(m.group(1) or m.group(2)), message)
        head, sep, rest = message.partition("unrecognized arguments: ")
        if sep:
            words = rest.split(" ")
            message = head + sep + " ".join(clip(w) for w in words[:3]) + (
                f" (and {len(words) - 3} more)" if len(words) > 3 else "")
        raise ArgumentError(message)


def install_sigterm() -> None:
    """SIGTERM raises :class:`Terminated` from now on (the entry points call it before
    the libraries load; :func:`terminate_as_interrupt` for a bounded block)."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # a second SIGTERM while the first one's clean-up runs is ignored: it would
    # interrupt the clean-up (the store's status, a checkpoint's rename)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` in the main thread; the
    previous handler is put back after it (a no-op outside the main thread: signal
    handlers belong to it)."""
    try:
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. a test calling main() from a thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def exit_status(err: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED


def interrupted_line(err: KeyboardInterrupt) -> str:
    """The word for what stopped the run: ``terminated (SIGTERM)`` or ``interrupted``."""
    return "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
