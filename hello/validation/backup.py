"""Group `backup`, the archives: the newest is fresh, matches its checksum, reads back in full, agrees with the backup
metric, and the off-host copies refuse a delete when they are object-locked. (The scheduler check, the group's last,
is hello/validation/scheduler.py.)"""

from __future__ import annotations

import subprocess
import sys
import time

from hello.backup import offsite_versions, rclone
from hello.backup.naming import BackupError, check_checksum
from hello.base.job_metrics import job_gauges
from hello.validation.components import Context
from hello.validation.core import CHECKOUT, FIX_BACKUP, FIX_OBJECT_LOCK, CheckFailed, CheckSkipped
from hello.validation.last_runs import JOB_BACKUP, archive_time, job_metrics, newest_archive, utc_time
from hello.validation.registry import check

SCHEDULE_MAX_AGE = {"daily": 26 * 3600.0}  # a daily backup may be this old (one day plus slack)
BACKUP_METRIC_TOLERANCE = 15 * 60.0  # seconds between an archive's name (start) and the metric (end)
VERIFY_TIMEOUT = 600.0  # a full read of a large archive is disk work, not a network wait


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


@check("backup", "the newest archive is fresh", fix=FIX_BACKUP)
def check_archive_age(ctx: Context) -> str:
    archive = newest_archive(ctx)
    schedule = ctx.config["backup"]["schedule"]
    limit = SCHEDULE_MAX_AGE[schedule]
    age = time.time() - archive_time(archive)
    if age > limit:
        raise CheckFailed(f"newest archive {archive.name} is {_hours(age)} old, more than {_hours(limit)} ({schedule})")
    if age < -300:
        raise CheckFailed(f"newest archive {archive.name} is dated {_hours(-age)} in the future (clock?)")
    return f"{archive.name}, {_hours(max(age, 0))} old (limit {_hours(limit)})"


@check("backup", "its checksum matches the sidecar", fix=FIX_BACKUP)
def check_archive_checksum(ctx: Context) -> str:
    try:
        digest = check_checksum(newest_archive(ctx))
    except BackupError as exc:
        raise CheckFailed(str(exc)) from None
    return f"sha256 {digest[:12]}... ok"


@check("backup", "it reads back in full (backup_script.py verify)", fix=FIX_BACKUP)
def check_archive_verify(ctx: Context) -> str:
    archive = newest_archive(ctx)
    script = CHECKOUT / "backup_script.py"
    if not script.is_file():
        raise CheckFailed(f"{script} is missing")
    try:
        done = subprocess.run(
            [sys.executable, str(script), "verify", str(archive)],
            capture_output=True,
            text=True,
            timeout=VERIFY_TIMEOUT,
            cwd=CHECKOUT,
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"backup_script.py verify {archive.name} took more than {VERIFY_TIMEOUT:g}s") from None
    lines = [line for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0:
        raise CheckFailed(
            f"backup_script.py verify {archive.name} exit {done.returncode}: " + (lines[-1] if lines else "no output")
        )
    return lines[-1] if lines else f"{archive.name} verified"


@check("backup", "off-host copies refuse a delete (canary)", fix=FIX_OBJECT_LOCK)
def check_offsite_locked(ctx: Context) -> str:
    settings = ctx.config["backup"]["offsite"]
    if settings["immutable"] is None:
        raise CheckSkipped("system.backup.offsite.immutable is null (no object-locked remote)")
    scratch = ctx.run_dir if ctx.run_dir.is_dir() else None
    try:
        with rclone.connect(settings["remote"], settings["rclone_config"], scratch=scratch) as remote:
            offsite_versions.check_canary_locked(remote, scratch)
    except rclone.OffsiteError as exc:
        raise CheckFailed(str(exc)) from None
    days = settings["immutable"]["retention_days"]
    try:
        archive = newest_archive(ctx)
    except CheckFailed:
        return f"a version delete with this host's key was refused (retention {days} days)"
    left = days - (time.time() - archive_time(archive)) / 86400
    return f"a version delete with this host's key was refused; {archive.name} stays locked {left:.1f} more days"


@check("backup", "the backup metric agrees with it", fix=FIX_BACKUP)
def check_backup_metric(ctx: Context) -> str:
    archive = newest_archive(ctx)
    values, source = job_metrics(ctx, JOB_BACKUP)
    gauges = job_gauges(JOB_BACKUP)
    name = gauges.last_success
    if not values:
        raise CheckFailed(f"no backup metric anywhere: {source}")
    if values.get(gauges.success) == 0:
        run = values.get(gauges.last_run)
        raise CheckFailed(f"the last backup run{f' at {utc_time(run)}' if run else ''} failed ({source})")
    if name not in values:
        raise CheckFailed(f"{name} missing ({source})")
    gap = values[name] - archive_time(archive)
    if not -120 <= gap <= BACKUP_METRIC_TOLERANCE:
        raise CheckFailed(
            f"{name} says {utc_time(values[name])} but the newest archive {archive.name} is "
            f"{_hours(abs(gap))} {'older' if gap > 0 else 'newer'} ({source})"
        )
    return f"{name} {utc_time(values[name])}, {gap:.0f}s after the archive's name ({source})"
