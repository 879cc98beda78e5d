"""The archive naming: what a backup is called on disk and off-host, its sidecar, the checksum check, the
metric jobs of the backup runs, the lock they share, and which archive a command's argument names.

    hello-world-<UTC YYYYmmddTHHMMSSZ>.tar.gz            an archive (ARCHIVE_RE, parse_archive, archive_name)
    hello-world-<...>.tar.gz.sha256                      its sidecar, a line `sha256sum -c` accepts (sidecar_path)
    .hello-world-<...>.tar.gz[.sha256].partial           a file still being written (PARTIAL_RE)
    <run_dir>/backup.lock                                one create, prune or drill at a time (backup_lock)
    archive_argument(config, "hello-world-....tar.gz")   a path, or the bare name `list` prints

backup_script.py, hello/validation/ and hello/backup/rclone.py (through NAMING) all read these facts from here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("backup")

JOB = "hello_world_backup"  # the metric prefix and Pushgateway job of a create
OFFSITE_JOB = "hello_world_backup_offsite"  # its own Pushgateway group: a push replaces the whole group
DRILL_JOB = "hello_world_backup_drill"
METRIC_HELPS = {  # the help text of a create's own gauges (record_job(..., helps=METRIC_HELPS))
    f"{JOB}_size_bytes": "Size of the archive written by the last backup run, in bytes.",
    f"{JOB}_duration_seconds": "Duration of the last backup run, in seconds.",
}
PREFIX, SUFFIX, SIDECAR, PARTIAL = "hello-world-", ".tar.gz", ".sha256", ".partial"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
ARCHIVE_RE = re.compile(r"^hello-world-(\d{8}T\d{6}Z)\.tar\.gz$")
SIDECAR_RE = re.compile(r"^hello-world-\d{8}T\d{6}Z\.tar\.gz\.sha256$")
PARTIAL_RE = re.compile(r"^\.hello-world-\d{8}T\d{6}Z\.tar\.gz(\.sha256)?\.partial$")
CHECKSUM_LINE_RE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
CHUNK = 1 << 20


class BackupError(Exception):
    """The job failed (exit 1); str() says what and where."""


class UsageError(Exception):
    """Bad arguments or settings (exit 2)."""


@dataclass(frozen=True)
class Archive:
    path: Path
    created: datetime  # UTC, from the name


def archive_name(when: datetime) -> str:
    return f"{PREFIX}{when.astimezone(UTC).strftime(STAMP_FORMAT)}{SUFFIX}"


def sidecar_path(archive: Path) -> Path:
    """The checksum file beside an archive: <archive>.sha256."""
    return archive.with_name(archive.name + SIDECAR)


def parse_archive(path: Path) -> Archive | None:
    """The Archive for a path following the naming, else None (other files are never touched)."""
    match = ARCHIVE_RE.match(path.name)
    if not match:
        return None
    try:
        created = datetime.strptime(match.group(1), STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return Archive(path, created)


def find_archives(destination: Path) -> list[Archive]:
    """Archives in destination, oldest first."""
    if not destination.is_dir():
        return []
    found = [parse_archive(destination / name) for name in os.listdir(destination)]
    return sorted((a for a in found if a is not None and a.path.is_file()), key=lambda a: a.created)


def backup_lock(config: dict[str, Any]) -> Path:
    """<run_dir>/backup.lock: held by a create, a prune and a drill (no prune deletes what another run reads)."""
    return Path(config["run_dir"]) / "backup.lock"


def archive_argument(config: dict[str, Any], value: str) -> Path:
    """The archive a command was given: a path, or a bare name as `list` prints it (looked for in the destination)."""
    destination = Path(config["backup"]["destination"])
    path = Path(value)
    if not path.is_file() and "/" not in value and (destination / value).is_file():
        path = destination / value
    if path.name.endswith(SIDECAR):
        archive = path.name.removesuffix(SIDECAR)
        raise UsageError(f"{value}: that is the checksum sidecar of {archive}; give the archive itself")
    if not path.is_file():
        raise UsageError(f"{value}: no such archive (neither a file nor an archive name in {destination})")
    return path


def unlink_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_leftovers(destination: Path) -> None:
    """Delete what a killed create left: dot-named partial files and sidecars without their archive."""
    for name in os.listdir(destination):
        path = destination / name
        orphan = SIDECAR_RE.match(name) and not path.with_name(name.removesuffix(SIDECAR)).exists()
        if PARTIAL_RE.match(name) or orphan:
            log.warning("removing %s, left by an interrupted backup", path)
            unlink_quietly(path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sidecar_digest(text: str, name: str) -> str:
    """The sha256 a sidecar's text gives for the archive name; ValueError when it is not such a line."""
    match = CHECKSUM_LINE_RE.match(text.strip())
    if not match or match.group(2) != name:
        raise ValueError(f"expected '<sha256>  {name}', got {text.strip()[:100]!r}")
    return match.group(1).lower()


def check_checksum(path: Path) -> str:
    """Raise BackupError unless path's sidecar exists, names it, and matches its bytes; return the digest."""
    sidecar = sidecar_path(path)
    try:
        expected = sidecar_digest(sidecar.read_text(encoding="utf-8"), path.name)
    except FileNotFoundError:
        raise BackupError(f"{path}: no checksum file {sidecar.name}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"{sidecar}: cannot read: {exc}") from None
    except ValueError as exc:
        raise BackupError(f"{sidecar}: {exc}") from None
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise BackupError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if actual != expected:
        raise BackupError(f"{path}: checksum mismatch (sidecar {expected[:12]}..., file {actual[:12]}...)")
    return actual


@dataclass(frozen=True)
class Naming:
    """The archive naming as the off-host copies (hello/backup/rclone.py) use it: NAMING below, handed in."""

    created: Callable[[str], datetime | None]  # an archive's time from its name; None: not an archive name
    sidecar: Callable[[str], str]  # archive name -> its checksum file's name
    temp: Callable[[str], str]  # final name -> the dot-named name it has while unchecked
    is_temp: Callable[[str], bool]
    sidecar_digest: Callable[[str, str], str]  # (sidecar text, archive name) -> sha256; ValueError if malformed


NAMING = Naming(
    created=lambda name: archive.created if (archive := parse_archive(Path(name))) else None,
    sidecar=lambda name: name + SIDECAR,
    temp=lambda name: f".{name}{PARTIAL}",
    is_temp=lambda name: bool(PARTIAL_RE.match(name)),
    sidecar_digest=sidecar_digest,
)
