"""The restore drill: proof that an archive restores to exactly what it recorded.

    result = drill_newest(config)    # `backup_script.py drill`: the newest archive, under the backup lock, recorded
    result = drill(archive, scratch_parent, steps)    # DrillResult(archive, entries, commit, seconds)

drill_newest drills the newest archive (off-host when system.backup.offsite.remote is set) in <run_dir>/drill and
records hello_world_backup_drill_*. Steps, each the project's own (restore_steps: the drill runs the code a real
restore runs; vault_pull.py drills with them too):
verify the archive (its checksum; the restore then reads every byte, gzip CRC included), restore it into a
fresh private folder under scratch_parent (the archive's own .hello-backup/ folder goes apart, as in any
restore), check the manifest's entries like archive members (no absolute name, no '..', a known type, the
fields of that type), compare every restored path with them (hello/backup/manifest.py: type, mode, size, sha256, link
target, and nothing extra), then remove the scratch and kept folders whatever happened. Raises DrillFailed
naming the paths that differ, or what is wrong with the manifest.
"""

from __future__ import annotations

import contextlib
import logging
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hello.backup import offsite_versions, rclone
from hello.backup.manifest import MANIFEST_DIR, ManifestError, compare_tree, normal_name, read_manifest
from hello.backup.naming import DRILL_JOB, NAMING, BackupError, backup_lock, check_checksum, find_archives
from hello.backup.offsite import configured_remote, fetched, immutable
from hello.backup.restore import remove_tree, restore_archive
from hello.base.job_metrics import record_job
from hello.base.locks import job_lock

log = logging.getLogger("backup")


class DrillFailed(Exception):
    """The archive did not restore to what its manifest says; str() names the first differences."""


@dataclass(frozen=True)
class Steps:
    verify: Callable[[Path], object]  # raise on a bad archive
    restore: Callable[[Path, Path], Path | None]  # (archive, new target): the usual safe restore; its kept folder
    remove_tree: Callable[[Path], None]  # delete a restored tree, read-only folders included


@dataclass(frozen=True)
class DrillResult:
    archive: Path
    entries: int  # in the manifest: every member but the manifest itself
    kept: int  # of them in the archive's own folder (.hello-backup/), restored apart from the tree
    commit: str
    seconds: float


def drill(archive: Path, scratch_parent: Path, steps: Steps) -> DrillResult:
    started = time.monotonic()
    steps.verify(archive)
    scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="drill-", dir=scratch_parent))
    kept: Path | None = None
    try:
        target = scratch / "restored"
        kept = steps.restore(archive, target)
        try:
            manifest = read_manifest(kept if kept is not None else target)
        except ManifestError as exc:
            raise DrillFailed(f"{archive.name}: {exc}") from None
        problems = compare_tree(target, manifest, kept)
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise DrillFailed(f"{archive.name}: {len(problems)} restored path(s) differ from the manifest: {shown}")
    finally:
        for folder in (scratch, kept):
            if folder is not None:
                with contextlib.suppress(OSError):
                    steps.remove_tree(folder)
    entries = manifest["entries"]
    apart = sum(1 for record in entries if normal_name(record["name"]).split("/")[0] == MANIFEST_DIR)
    return DrillResult(archive, len(entries), apart, manifest.get("commit", "unknown"), time.monotonic() - started)


def restore_steps(config: dict[str, Any]) -> Steps:
    """The drill's steps: the checksum (the restore then reads every byte: a full `verify` would read them twice),
    the usual checked restore, and its tree removal."""

    def restored(archive: Path, target: Path) -> Path | None:
        return restore_archive(config, archive, str(target), force=False, keep_setid=False).kept

    return Steps(verify=check_checksum, restore=restored, remove_tree=remove_tree)


def drill_newest(config: dict[str, Any]) -> DrillResult:
    """Drill the newest archive under the backup lock (no prune deletes it meanwhile) and record the outcome.

    hello.base.locks.LockHeld when another backup run holds the lock; BackupError("drill failed: ...")."""
    with job_lock(backup_lock(config)):
        started = time.time()
        try:
            result = _drill_newest(config, Path(config["run_dir"]) / "drill")
        except (BackupError, rclone.OffsiteError, DrillFailed, OSError, tarfile.TarError) as exc:
            record_job(config, DRILL_JOB, success=False, started=started, finished=time.time())
            raise BackupError(f"drill failed: {exc}") from None
        record_job(config, DRILL_JOB, success=True, started=started, finished=time.time())
    return result


def _drill_newest(config: dict[str, Any], scratch: Path) -> DrillResult:
    connection = configured_remote(config)
    steps = restore_steps(config)
    if connection is None:
        found = find_archives(Path(config["backup"]["destination"]))
        if not found:
            raise BackupError(f"no archives in {config['backup']['destination']} to drill")
        return drill(found[-1].path, scratch, steps)
    with connection as remote:
        files = offsite_versions.every_file(remote) if immutable(config) else remote.files()
        names = list(rclone.archives_on(files, NAMING))
        if not names:
            raise BackupError(f"no archives on {remote.spec} to drill")
        with fetched(config, remote, names[-1]) as path:
            return drill(path, scratch, steps)
