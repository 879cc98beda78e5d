"""What archives there are and whether they read back: `backup_script.py list` and `verify`, here and off-host.

    rows = local_rows(config)                    # [{"name", "path", "time", "size", "checksum_ok", "problem"}]
    rows = offsite_rows(config, remote)          # [{"name", "path", "time", "size", "has_checksum"}]
    for ok, text in verify_local(paths): ...     # checksum, then a full read of every member
    for ok, text in verify_offsite(config, remote, names): ...   # every byte downloaded, checked against its sidecar

The rows are what `list --json` prints; a verify yields (passed, what) per archive as it goes (a full read of a
big archive takes a while), and the command prints each line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hello.backup import offsite_versions, rclone
from hello.backup.archive import verify_archive
from hello.backup.naming import NAMING, BackupError, archive_argument, check_checksum, find_archives
from hello.backup.offsite import immutable


def local_rows(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The archives in the destination, oldest first, each with whether its checksum matches (and why not)."""
    rows = []
    for archive in find_archives(Path(config["backup"]["destination"])):
        try:
            check_checksum(archive.path)
            verified, problem = True, None
        except BackupError as exc:
            verified, problem = False, str(exc)
        rows.append(
            {
                "name": archive.path.name,
                "path": str(archive.path),
                "time": archive.created.isoformat(),
                "size": archive.path.stat().st_size,
                "checksum_ok": verified,
                "problem": problem,
            }
        )
    return rows


def offsite_rows(config: dict[str, Any], remote: rclone.Remote) -> list[dict[str, Any]]:
    """The archives on the remote, oldest first, each with whether its sidecar is there (every version's files
    when the remote is immutable: a hidden archive is still listed)."""
    files = offsite_versions.every_file(remote) if immutable(config) else remote.files()
    return [
        {
            "name": name,
            "path": remote.path(name),
            "time": created.isoformat(),
            "size": files[name],
            "has_checksum": NAMING.sidecar(name) in files,
        }
        for name, created in rclone.archives_on(files, NAMING).items()
    ]


def local_to_verify(config: dict[str, Any], archive: str | None) -> list[Path]:
    """The archive a command named (a path or the name `list` prints), else every archive in the destination."""
    if archive:
        return [archive_argument(config, archive)]
    return [a.path for a in find_archives(Path(config["backup"]["destination"]))]


def verify_local(paths: list[Path]) -> Iterator[tuple[bool, str]]:
    """Each archive's checksum, then a full read: (True, "<path> (<n> members, <s> s)") or (False, the problem)."""
    for path in paths:
        started = time.monotonic()
        try:
            members = verify_archive(path)
        except BackupError as exc:
            yield False, str(exc)
        else:
            yield True, f"{path} ({members} members, {time.monotonic() - started:.2f} s)"


def offsite_to_verify(config: dict[str, Any], remote: rclone.Remote, name: str | None) -> list[str]:
    """The archive name asked for, else every archive on the remote (in any version when it is immutable)."""
    if name:
        return [name]
    files = offsite_versions.every_file(remote) if immutable(config) else remote.files()
    return list(rclone.archives_on(files, NAMING))


def verify_offsite(config: dict[str, Any], remote: rclone.Remote, names: list[str]) -> Iterator[tuple[bool, str]]:
    """Each archive downloaded and checked against the remote sidecar: (passed, what) as verify_local.

    On an immutable remote the newest version matching a version of its sidecar passes: a delete marker or a garbage
    version an attacker put over it is passed over, and said."""
    for name in names:
        started = time.monotonic()
        try:
            if immutable(config):
                version, newer = offsite_versions.verify_newest_good(remote, name, NAMING)
                found = f"version {version}, past {newer} newer bad one(s); " if version != name or newer else ""
            else:
                rclone.verify(remote, name, NAMING)
                found = ""
        except rclone.OffsiteError as exc:
            yield False, str(exc)
        else:
            seconds = time.monotonic() - started
            yield True, f"{remote.path(name)} ({found}every byte matches its sidecar, {seconds:.2f} s)"
