"""attnbench's harness: configuration, data, training, evaluation, the store, reports.

The Python API (:mod:`harness.api`) is reachable from here, imported on first use so
that the light modules (``harness.cli``) stay light::

    import harness
    result = harness.execute(harness.plan(methods=["baseline", "abn"], preset="smoke"))
"""

from __future__ import annotations

from typing import Any

_API = ("Plan", "Request", "Result", "check_data", "dry_run", "execute", "plan")


def __getattr__(name: str) -> Any:
    if name in _API:
        from harness import api

        return getattr(api, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
