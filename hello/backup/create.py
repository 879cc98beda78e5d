"""Creating one archive in the destination, crash-safe: room check, hooks, partial file, sidecar, rename.

    archive, size = create(config, progress=Progress(show))     # the caller holds <run_dir>/backup.lock

The archive is streamed to a dot-named `.hello-world-....partial` file, fsynced, then its sidecar is written
(temporary name, fsync, rename), and only then the archive is renamed to its final name and the directory
fsynced: a final name always means a complete archive whose sidecar already exists. Leftovers of a killed
run are removed first. Two creates within one second: the second waits for the next second.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hello.backup.archive_writer import Progress, walk_source, write_archive
from hello.backup.disk_guard import NoRoom, check_room
from hello.backup.hooks import HookFailed, staged, sweep_stale
from hello.backup.manifest import header
from hello.backup.naming import (
    PARTIAL,
    Archive,
    BackupError,
    UsageError,
    archive_name,
    find_archives,
    parse_archive,
    remove_leftovers,
    sidecar_path,
    unlink_quietly,
)
from hello.base.files import fsync_dir


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
