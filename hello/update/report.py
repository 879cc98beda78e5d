"""What an update run reports: its step lines as they go (Report, Note), and at the end its record (record): the
update metrics (textfile and Pushgateway, hello.base.job_metrics) and one JSON line in update.log.

    report = Report(out=sys.stdout)
    with report.step("fetch") as note:               # "fetch      ok         0.31s  <note.detail>"
        note.detail = "..."                           # a failure in the block: its FAILED line, then UpdateError
    record(config, updater, code, started)           # updater: .report, .serving (the rollback point), .target
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from hello.base.config import EXIT_FAILED, EXIT_LOCKED, EXIT_OK
from hello.base.job_metrics import metrics_textfile, record_job
from hello.update.deploy_records import DEPLOY_HELP, DEPLOY_METRIC, deploy_series
from hello.update.errors import FAILURES, Locked, Refused, UpdateError
from hello.update.history import current_user, update_log
from hello.update.watch import watch_metrics

JOB = "hello_world_update"  # the metric prefix and Pushgateway job of an update


@dataclass
class Note:
    """What a step reports besides its duration."""

    detail: str = ""
    outcome: str = "ok"


@dataclass
class Report:
    """The run as it goes: printed step lines, durations, and the final outcome."""

    out: TextIO
    steps: dict[str, float] = field(default_factory=dict)
    outcome: str = ""
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # more fields for the update.log entry

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Note]:
        """One step line; a failure in the block is its FAILED line and leaves as an UpdateError."""
        note = Note()
        started = time.monotonic()
        try:
            yield note
        except FAILURES as exc:
            self.line(name, "FAILED", time.monotonic() - started, str(exc))
            if isinstance(exc, UpdateError):
                raise
            raise UpdateError(str(exc)) from None
        finally:
            self.steps[name] = round(self.steps.get(name, 0.0) + time.monotonic() - started, 3)
        self.line(name, note.outcome, time.monotonic() - started, note.detail)

    def line(self, name: str, outcome: str, seconds: float, detail: str) -> None:
        print(f"{name:<10} {outcome:<8} {seconds:6.2f}s  {detail}".rstrip(), file=self.out, flush=True)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def exit_code(self, run: Callable[[], int]) -> int:
        """run()'s exit code; a failure's outcome and reason are noted here, and its code is returned."""
        try:
            return run()
        except Locked as exc:
            self.outcome, self.reason = "locked", str(exc)
            return EXIT_LOCKED
        except FAILURES as exc:
            self.outcome = self.outcome or ("refused" if isinstance(exc, Refused) else "failed")
            self.reason = self.reason or str(exc)
            return EXIT_FAILED


class Run(Protocol):
    """What record() reads of a run (an Updater): its report, the rollback point and the commit it went to."""

    report: Report
    serving: str
    target: str


def record(config: dict[str, Any], updater: Run, code: int, started: float) -> None:
    """The metrics and the update.log line; a failure to record is reported, not raised."""
    report = updater.report
    with report.step("record") as note:
        finished = time.time()
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
            "user": current_user(),
            "from": updater.serving or None,
            "to": updater.target or None,
            "outcome": report.outcome or "failed",
            "exit": code,
            "reason": report.reason,
            "steps": report.steps,
            "seconds": round(finished - started, 3),
        }
        entry.update(report.extra)
        good = {"updated": updater.target, "redeployed": updater.target, "rolled-back": updater.serving}
        good["rollback"] = updater.target
        if good.get(report.outcome):  # what this run left serving, tested and verified (history.good_release)
            entry["good"] = good[report.outcome]
        try:
            path = record_job(
                config,
                JOB,
                success=code == EXIT_OK,
                started=started,
                finished=finished,
                extra={"hello_world_update_duration_seconds": finished - started, **watch_metrics(entry.get("watch"))},
                series=deploy_series(entry, finished, metrics_textfile(config, JOB)),
                helps={DEPLOY_METRIC: DEPLOY_HELP},
            )
            logfile = update_log(Path(config["run_dir"]))
            with open(logfile, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        except OSError as exc:
            raise UpdateError(f"could not record the outcome: {exc}") from None
        note.detail = f"{logfile}, {path}"
