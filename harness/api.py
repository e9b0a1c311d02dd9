"""The Python API; the command line (``python -m harness.run``) is a thin layer over it.

    import harness

    plan = harness.plan(methods=["baseline", "gradcam", "abn"], preset="smoke", seeds=[0, 1])
    result = harness.execute(plan)
    result.frame        # the leaderboard (pandas), as leaderboard.csv
    result.run_id       # the run in the results store

:func:`plan` takes the command line's options as keyword arguments (:class:`Request`'s
fields: ``dataset``, ``backbone``, ``explainers``, ``seeds``, ``sets``, ``out``, ``db``,
``sanity``, ``roar``, ``progress``, ...) and ``include`` (plugins); everything is
checked before anything is trained. :func:`execute` trains, evaluates, records and
writes the reports with progress and the store as on the command line.

Without ``out`` a plan gets a new folder of its own as the command line does,
``runs/<date>-<preset>-<dataset>`` (created when the plan is made, so no other run
takes it; ``plan.out``), and :func:`execute` points ``runs/latest`` at it once the
reports are written; a given ``out`` is used as it is and leaves ``runs/latest`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import metrics  # noqa: F401  (registers the metrics)
from harness import evalcache, plugins
from harness.execution import Result, execute
from harness.planning import Plan, Request, check_data, dry_run, make_plan
from methods import METHODS  # noqa: F401  (registers the methods and explainers)


def plan(methods: str | Sequence[str] = "all", *, include: Sequence[str] = (),
         dry_run: bool = False, **options: Any) -> Plan:
    """A checked plan for ``methods`` (``all``, or ids) with ``options`` (the fields of
    :class:`Request`), after loading the installed plugins and ``include``.

    Raises:
        UserError: the first thing wrong (an unknown name or option, a bad value or
            file), in one line naming it.
        TypeError: an option that is not a field of :class:`Request`.
    """
    plugins.load(include)
    evalcache.warm()  # the code of every registered name, hashed before it runs
    return make_plan(Request(methods=methods, **options), dry_run=dry_run)


__all__ = ["Plan", "Request", "Result", "check_data", "dry_run", "execute", "plan"]
