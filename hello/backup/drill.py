"""The restore drill: proof that an archive restores to exactly what it recorded.

    result = drill(archive, scratch_parent, steps)    # DrillResult(archive, entries, commit, seconds)

Steps, each the project's own (handed in by backup_script.py, so the drill runs the code a real restore runs):
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
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hello.backup.manifest import MANIFEST_DIR, ManifestError, compare_tree, normal_name, read_manifest

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
