"""The project's archives off-host: the configured remote, the copy after each create, a checked download.

    with configured_remote(config) as remote: ...      # None when system.backup.offsite.remote is null
    copy_offsite(config, remote, fresh=archive.path)    # copy what the remote lacks, prune it; False: failed
    with fetched(config, remote, name) as path: ...     # downloaded with its sidecar, checksum checked
    doomed, said = prune_everywhere(config, dry_run)    # `prune`: the destination, then the remote, under the lock

hello/backup/rclone.py does the rclone part; the naming and the retention plan are hello/backup/naming.py's and
hello/backup/retention.py's.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hello.backup import offsite_versions, rclone
from hello.backup.naming import (
    NAMING,
    OFFSITE_JOB,
    BackupError,
    UsageError,
    backup_lock,
    check_checksum,
    find_archives,
    parse_archive,
)
from hello.backup.retention import keep_plan, prune
from hello.base.job_metrics import record_job
from hello.base.locks import job_lock


def configured_remote(
    config: dict[str, Any], *, show_progress: bool = False
) -> contextlib.AbstractContextManager[rclone.Remote] | None:
    """`with` it for the remote of system.backup.offsite (None when there is none)."""
    settings = config["backup"]["offsite"]
    if not settings["remote"]:
        return None
    scratch = Path(config["run_dir"])  # a remote file is read through a private folder there
    return rclone.connect(settings["remote"], settings["rclone_config"], progress=show_progress, scratch=scratch)


def immutable(config: dict[str, Any]) -> bool:
    """The remote is an object-locked bucket (system.backup.offsite.immutable): the host never deletes there.

    Its copies expire by the bucket's retention and a lifecycle rule or an admin-side job, never from the host,
    whose key may write and read but not delete versions (README "Copies a compromised host cannot destroy")."""
    return config["backup"]["offsite"]["immutable"] is not None


def require_remote(config: dict[str, Any]) -> contextlib.AbstractContextManager[rclone.Remote]:
    remote = configured_remote(config, show_progress=sys.stderr.isatty())
    if remote is None:
        raise UsageError("--offsite: system.backup.offsite.remote is null in the config (no off-host copies)")
    return remote


def session(config: dict[str, Any], show_progress: bool) -> contextlib.AbstractContextManager[rclone.Remote | None]:
    return configured_remote(config, show_progress=show_progress) or contextlib.nullcontext(None)


def copy_offsite(config: dict[str, Any], remote: rclone.Remote | None, *, fresh: Path | None = None) -> bool:
    """Copy the archives the remote lacks, then prune it; record the outcome; False when it failed.

    No remote configured (None): nothing to do (True, and no offsite metrics). A failure leaves every local
    archive; the next run retries what is missing."""
    if remote is None:
        return True
    started = time.time()
    spec = remote.spec
    try:
        local = [a.path for a in find_archives(Path(config["backup"]["destination"]))]
        uploaded = rclone.sync(remote, local, NAMING, keep_plan(config), fresh=fresh)
        files = remote.files()
        newest = list(rclone.archives_on(files, NAMING))[-1]
        if not immutable(config):
            rclone.prune(remote, NAMING, keep_plan(config), dry_run=False, files=files)
    except (rclone.OffsiteError, BackupError, IndexError) as exc:
        problem = "no archive reached the remote" if isinstance(exc, IndexError) else str(exc)
        record_job(config, OFFSITE_JOB, success=False, started=started, finished=time.time())
        print(f"backup_script.py: off-host copy to {spec} failed: {problem}", file=sys.stderr)
        print("  the local archives are kept; the next run copies what the remote lacks", file=sys.stderr)
        return False
    size = files[newest]
    extra = {f"{OFFSITE_JOB}_size_bytes": float(size)}
    record_job(config, OFFSITE_JOB, success=True, started=started, finished=time.time(), extra=extra)
    print(
        f"off-host: copied {len(uploaded)} archive(s) to {spec} in {time.time() - started:.2f} s; "
        f"newest there {newest} ({size} bytes)"
    )
    return True


def prune_everywhere(config: dict[str, Any], dry_run: bool) -> tuple[list[Path], str | None]:
    """`backup_script.py prune` under the backup lock (LockHeld when another run holds it): the archives it deleted
    (or would) in the destination, and the line saying what it did on the remote (None when there is none)."""
    with job_lock(backup_lock(config)):
        return prune(config, dry_run=dry_run), prune_remote(config, dry_run)


def prune_remote(config: dict[str, Any], dry_run: bool) -> str | None:
    """Apply system.backup.keep on the remote; the line saying what it deleted (None when there is no remote).

    An immutable remote (Object Lock) is never pruned from the host: the line says who expires its copies."""
    if immutable(config):  # (a remote is set: the config check makes sure)
        days = config["backup"]["offsite"]["immutable"]["retention_days"]
        return (
            f"prune: {config['backup']['offsite']['remote']} is immutable (Object Lock, {days} days): nothing deleted "
            "there; its lifecycle rule or an admin-side job expires old copies"
        )
    connection = configured_remote(config)
    if connection is None:
        return None
    with connection as remote:
        doomed = rclone.prune(remote, NAMING, keep_plan(config), dry_run=dry_run)
    return f"prune: {'would delete' if dry_run else 'deleted'} {len(doomed)} archive(s) on {remote.spec}"


@contextlib.contextmanager
def fetched(config: dict[str, Any], remote: rclone.Remote, name: str) -> Iterator[Path]:
    """An off-host archive downloaded with its sidecar into a private folder under run_dir, checked, then removed."""
    if parse_archive(Path(name)) is None or "/" in name:
        raise UsageError(f"--offsite {name}: not an archive name (hello-world-<UTC YYYYmmddTHHMMSSZ>.tar.gz)")
    run_dir = Path(config["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="offsite-download-", dir=run_dir))  # 0700: nobody else reads it
    try:
        if immutable(config):  # the newest good version, behind any delete marker or garbage version
            path = offsite_versions.fetch_newest_good(remote, name, folder, NAMING)
        else:
            path = rclone.fetch(remote, name, folder, NAMING)
        check_checksum(path)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)
