"""A run's results for people (one line per check, cut to a terminal's width), for machines (a JSON list), and as
metrics (hello_world_validation_*: the textfile and the Pushgateway, which alert when validation fails or stops)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hello.base.job_metrics import record_job
from hello.validation.core import FAIL, PASS, SKIP, Result

VALIDATION_JOB = "hello_world_validation"  # metric prefix and Pushgateway job of each run's results


CHECK_SUCCESS_HELP = "1 if the check passed in the last validation run, 0 if it failed."


def record_results(config: dict[str, Any], results: list[Result], started: float) -> Path:
    """This run as metrics (textfile and Pushgateway, via job_metrics.record_job); SKIPped checks are left out."""
    checks = {(r.group, r.check): 1.0 if r.status == PASS else 0.0 for r in results if r.status != SKIP}
    return record_job(
        config,
        VALIDATION_JOB,
        success=not any(r.status == FAIL for r in results),
        started=started,
        finished=time.time(),
        series={f"{VALIDATION_JOB}_check_success": (("group", "check"), checks)},
        helps={f"{VALIDATION_JOB}_check_success": CHECK_SUCCESS_HELP},
    )


def _shown_duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


LINE_WIDTH = 120  # a terminal's width: longer details are cut here (-v or --json gives them whole)


def _fit(text: str, width: int = LINE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def render_table(results: list[Result], verbose: bool = False) -> str:
    """One line per check (`STATUS  group  check: detail`); a FAIL line says what to do and its reason follows.

    Lines are cut at LINE_WIDTH unless verbose, which adds each check's duration.
    """
    group_width = max((len(r.group) for r in results), default=0)
    fit = (lambda text: text) if verbose else _fit
    lines = []
    for r in results:
        took = f" ({_shown_duration(r.duration)})" if verbose else ""
        head = f"{r.status}  {r.group.ljust(group_width)}  {r.check}{took}"
        if r.status == FAIL:
            lines.append(f"{head}; fix: {r.fix}")  # whole, never cut: the fixes are short
            lines.append(fit(" " * (len(r.status) + 2) + r.detail))
        else:
            lines.append(fit(f"{head}: {r.detail}"))
    counts = {status: sum(r.status == status for r in results) for status in (PASS, FAIL, SKIP)}
    total = sum(r.duration for r in results)
    lines.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped in {_shown_duration(total)}")
    return "\n".join(lines)


def render_json(results: list[Result]) -> str:
    """The results as a JSON list of objects (group, check, status, detail, duration in seconds, fix)."""
    return json.dumps([asdict(r) | {"duration": round(r.duration, 4)} for r in results], indent=2)
