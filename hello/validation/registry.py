"""The check registry and the runner: each group's module registers its checks with @check (hello/validation/__init__.py
imports them in the order they run); run_checks runs the chosen groups, one Result each."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from hello.validation.components import Context
from hello.validation.core import FAIL, PASS, SKIP, CheckFailed, CheckSkipped, Result

log = logging.getLogger("validation")

Check = Callable[[Context], str]
CHECKS: list[tuple[str, str, Check]] = []
FIXES: dict[tuple[str, str], str] = {}  # (group, check) -> what to do when it fails and its CheckFailed names nothing


def check(group: str, name: str, fix: str = "") -> Callable[[Check], Check]:
    """Register a check: it returns the PASS detail or raises CheckFailed / CheckSkipped; fix: its usual remedy."""

    def register(func: Check) -> Check:
        CHECKS.append((group, name, func))
        FIXES[(group, name)] = fix
        return func

    return register


def run_checks(ctx: Context, groups: list[str]) -> list[Result]:
    """The checks of these groups in their order, one Result each; a check that crashes is a FAIL, not the end."""
    results = []
    for group, name, func in CHECKS:
        if group not in groups:
            continue
        started = time.monotonic()
        fix = ""
        try:
            status, detail = PASS, func(ctx)
        except CheckSkipped as exc:
            status, detail = SKIP, str(exc)
        except CheckFailed as exc:
            status, detail = FAIL, str(exc)
            fix = exc.fix or FIXES.get((group, name)) or f"see validation_steps.md, group {group}"
        except Exception as exc:  # noqa: BLE001 - a bug in one check must not hide the others
            log.debug("check %s/%s crashed", group, name, exc_info=True)
            status, detail = FAIL, f"internal error: {type(exc).__name__}: {exc}"
            fix = "a bug: `validation_test.py -v` logs it"
        results.append(Result(group, name, status, detail, time.monotonic() - started, fix))
    return results
