"""Creating one archive in the destination, crash-safe: room check, hooks, partial file, sidecar, rename.

    copied = backup_run(config, show_progress=False, written=say)   # `backup_script.py create`: the whole run
    archive, size = create(config, progress=Progress(show))     # the caller holds <run_dir>/backup.lock

backup_run is one run of `create`: under the backup lock (naming.backup_lock) it writes the archive, records its
metrics, copies what the remote lacks (offsite.py) and prunes (retention.py). Every run that fails, whatever step
failed, is recorded as failed; a run is recorded as soon as its archive is written.

Archives are <destination>/hello-world-<UTC YYYYmmddTHHMMSSZ>.tar.gz (mode 0600, the destination 0700), each with
a sidecar <archive>.sha256 that `sha256sum -c` accepts. The archive is streamed to a dot-named
`.hello-world-....partial` file, fsynced, then its sidecar is written (temporary name, fsync, rename), and only then
the archive is renamed to its final name and the directory fsynced: a final name always means a complete archive
whose sidecar already exists. Leftovers of a killed run are removed first. Two creates within one second: the second
waits for the next second.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hello.backup.archive_writer import Progress, Terminated, walk_source, write_archive
from hello.backup.disk_guard import NoRoom, check_room
from hello.backup.hooks import HookFailed, staged, sweep_stale
from hello.backup.manifest import header
from hello.backup.naming import (
    JOB,
    METRIC_HELPS,
    PARTIAL,
    Archive,
    BackupError,
    UsageError,
    archive_name,
    backup_lock,
    find_archives,
    parse_archive,
    remove_leftovers,
    sidecar_path,
    unlink_quietly,
)
from hello.backup.offsite import copy_offsite, session
from hello.backup.retention import prune
from hello.base.files import fsync_dir
from hello.base.job_metrics import record_job
from hello.base.locks import LockHeld, job_lock


def backup_run(config: dict[str, Any], *, show_progress: bool, written: Callable[[Archive, int, float], None]) -> bool:
    """One backup under the lock, then its metrics, the off-host copy and prune; False: the off-host copy failed.

    written(archive, size, seconds) is called once the archive has its final name, before the copy. LockHeld
    when another run holds the lock (nothing recorded). Every other failure, whatever step failed (taking the
    lock, say on a full disk; the archive; its sidecar; the prune), is recorded as failed and raised: the textfile
    attempted, the Pushgateway pushed when configured. A prune failing after the archive was written fails the
    run and is recorded again: success 0, but the last success is that archive's (it exists and is good).
    """
    started = time.time()
    lock = backup_lock(config)
    extra: dict[str, float] = {}
    finished: float | None = None  # when the archive got its final name
    try:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(job_lock(lock))
            except OSError as exc:
                raise BackupError(f"cannot take the lock {lock}: {exc.strerror or exc}") from None
            # rclone (when a remote is configured) starts beside the archive's writing, ready when the copy begins.
            remote = stack.enter_context(session(config, show_progress))
            archive, size = create(config, progress=Progress(show_progress))
            finished = time.time()
            extra = {f"{JOB}_size_bytes": float(size), f"{JOB}_duration_seconds": finished - started}
            written(archive, size, finished - started)
            record_job(config, JOB, success=True, started=started, finished=finished, extra=extra, helps=METRIC_HELPS)
            copied = copy_offsite(config, remote, fresh=archive.path)
            try:
                prune(config, dry_run=False, known_good=archive.path)
            except Terminated:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever stopped the prune, the archive stands
                failed = f"backup {archive.path} was written, but pruning old archives failed"
                raise BackupError(f"{failed}: {exc}") from None
    except LockHeld:
        raise
    except BaseException:
        now = time.time()
        extra[f"{JOB}_duration_seconds"] = now - started
        record_job(
            config,
            JOB,
            success=False,
            started=started,
            finished=now,
            extra=extra,
            last_success=finished,
            helps=METRIC_HELPS,
        )
        raise
    return copied


def prepare_destination(destination: Path) -> None:
    try:
        destination.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(destination, 0o700)
    except OSError as exc:
        raise BackupError(f"cannot use the destination {destination}: {exc.strerror or exc}") from None


def _free_name(destination: Path) -> Path:
    """The final path for a new archive; waits for the next second if this second's name is taken."""
    while True:
        now = datetime.now(UTC)
        final = destination / archive_name(now)
        if not final.exists() and not sidecar_path(final).exists():
            return final
        time.sleep(1.02 - now.microsecond / 1e6)


def create(config: dict[str, Any], *, progress: Progress) -> tuple[Archive, int]:
    """Write one archive (the caller holds the lock); return it and its size."""
    backup = config["backup"]
    source, destination = Path(backup["source"]), Path(backup["destination"])
    if not source.is_dir():
        raise UsageError(f"system.backup.source: {source} is not a directory")
    if source.resolve() == destination.resolve():
        raise UsageError("system.backup.destination: must not be the source directory itself")
    hooks = backup["hooks"]["before"]
    prepare_destination(destination)
    remove_leftovers(destination)
    sweep_stale(Path(config["run_dir"]))  # a killed run's hook output
    try:
        patterns = excluded_names(backup)
        check_room(destination, expected_size(destination, source, patterns, None))  # at once
        with staged(hooks, cwd=Path(config["config_file"]).parent, parent=Path(config["run_dir"])) as staging:
            if staging is not None:  # and again with what the hooks staged
                check_room(destination, expected_size(destination, source, patterns, staging))
            return _write(config, source, destination, progress, staging, header(config, hooks))
    except (HookFailed, NoRoom) as exc:
        raise BackupError(str(exc)) from None


def excluded_names(backup: dict[str, Any]) -> list[str]:
    """The name patterns never archived: system.backup.exclude and .exclude_secrets."""
    return [*backup["exclude"], *backup["exclude_secrets"]]


def secret_files(config: dict[str, Any]) -> set[tuple[int, int]]:
    """(device, inode) of the secret files config.yaml names, whatever they are called; none when opted in."""
    if not config["backup"]["exclude_secrets"]:
        return set()
    named = (config["monitoring"]["alertmanager"]["secrets_file"], config["backup"]["offsite"]["rclone_config"])
    found = set()
    for path in filter(None, named):
        with contextlib.suppress(OSError):
            info = os.stat(path)
            found.add((info.st_dev, info.st_ino))
    return found


def expected_size(destination: Path, source: Path, patterns: list[str], staging: Path | None) -> int:
    """What the next archive may take: the last archive's size, else the source's (plus the hooks' output)."""
    found = find_archives(destination)
    trees = ([] if found else [source]) + ([staging] if staging else [])
    total = found[-1].path.stat().st_size if found else 0
    for tree in trees:
        for path, _arcname in walk_source(tree, patterns if tree == source else [], set()):
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def _write(config: dict[str, Any], source: Path, destination: Path, progress: Progress, staging, head):
    """Write the archive: partial file, sidecar, rename (see the module docstring)."""
    patterns = excluded_names(config["backup"])
    dest_stat = destination.stat()
    final = _free_name(destination)
    sidecar = sidecar_path(final)
    temp = final.with_name(f".{final.name}{PARTIAL}")
    temp_sidecar = final.with_name(f".{sidecar.name}{PARTIAL}")
    writing = temp
    try:
        skip = {(dest_stat.st_dev, dest_stat.st_ino)} | secret_files(config)
        digest, size = write_archive(source, temp, patterns, skip, progress, staging, head)
        # The sidecar gets its final name first: then every final-named archive has one.
        writing = temp_sidecar
        fd = os.open(temp_sidecar, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(f"{digest}  {final.name}\n")
            handle.flush()
            os.fsync(fd)
        os.rename(temp_sidecar, sidecar)
        fsync_dir(destination)
        writing = final
        os.rename(temp, final)
        fsync_dir(destination)
    except OSError as exc:
        raise BackupError(f"writing {writing}: {exc.strerror or exc}") from None
    finally:
        # Whatever stopped us (an error, SIGTERM, Ctrl-C), leave no partial file; a sidecar goes only
        # when its archive never got its final name.
        unlink_quietly(temp, temp_sidecar, *(() if final.exists() else (sidecar,)))
        progress.done()
    archive = parse_archive(final)
    assert archive is not None  # final was built by archive_name()
    return archive, size
