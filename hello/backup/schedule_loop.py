"""The schedule loop: run a job once a day at a time of day (or every N seconds) until SIGTERM or SIGINT.

    run_schedule(job, at="02:30", every=None, zone_name="Europe/Berlin")   # returns when signalled
    schedule_backups(config, create, at=None, every=None)   # `backup_script.py schedule`: create() daily, logged

The job runs in the loop's thread; a signal stops the loop after the current run. Times are those of the
`schedule` package (zone_name None: the host's local time; a zone needs pytz).
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import threading
from collections.abc import Callable
from typing import Any

from hello.backup.naming import BackupError, UsageError
from hello.base.config import EXIT_FAILED, EXIT_LOCKED

log = logging.getLogger("backup")

TIME_OF_DAY_RE = re.compile(r"([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?")


class ScheduleError(ValueError):
    """A bad --at or --every, or a time zone that cannot be used (exit 2)."""


def run_schedule(job: Callable[[], None], *, at: str, every: float | None, zone_name: str | None) -> None:
    """Run job daily at `at` (HH:MM[:SS] in zone_name), or every `every` seconds, until SIGTERM or SIGINT."""
    import schedule  # only the loop needs it

    scheduler = schedule.Scheduler()
    if every is not None:
        if every <= 0:
            raise ScheduleError(f"--every {every:g}: expected a number of seconds above 0")
        task = scheduler.every(every).seconds.do(job)
        what = f"every {every:g} s"
    else:
        if not TIME_OF_DAY_RE.fullmatch(at):
            raise ScheduleError(f"--at {at}: expected HH:MM or HH:MM:SS")
        try:
            task = scheduler.every().day.at(at, zone_name).do(job)
        except ImportError:
            raise ScheduleError(
                "system.backup.timezone needs the pytz package: pip install -r requirements.txt"
            ) from None
        what = f"daily at {at} {zone_name or 'local time'}"
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received: stopping after the current run", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("backup schedule: %s; next run at %s (host local time)", what, task.next_run)
    last_run = task.last_run
    while not stop.is_set():
        scheduler.run_pending()
        if task.last_run != last_run:
            last_run = task.last_run
            log.info("next run at %s (host local time)", task.next_run)
        idle = scheduler.idle_seconds or 1.0
        stop.wait(min(max(idle, 0.05), 1.0))
    log.info("backup schedule stopped")


def schedule_backups(config: dict[str, Any], create: Callable[[], int], *, at: str | None, every: float | None) -> None:
    """`backup_script.py schedule`: create() (one backup, its exit code) daily at `at` (default system.backup.time,
    in system.backup.timezone) or every `every` seconds, until signalled; ScheduleError for a bad time or zone."""
    backup = config["backup"]
    job = functools.partial(_scheduled_backup, create)
    run_schedule(job, at=at or backup["time"], every=every, zone_name=backup["timezone"])


def _scheduled_backup(create: Callable[[], int]) -> None:
    """One scheduled backup: failures are logged (and recorded as metrics), never raised into the loop."""
    log.info("scheduled backup starting")
    try:
        code = create()
    except (BackupError, UsageError) as exc:
        log.error("scheduled backup failed: %s", exc)
    except Exception:
        log.exception("scheduled backup failed unexpectedly")
    else:
        if code == EXIT_LOCKED:
            log.warning("scheduled backup skipped: another run holds the lock")
        elif code == EXIT_FAILED:
            log.warning("scheduled backup done, but its off-host copy failed (the next run retries it)")
        else:
            log.info("scheduled backup done")
