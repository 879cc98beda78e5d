"""The restore drill: proof that an archive restores to exactly what it recorded.

    result = drill(archive, scratch_parent, steps)    # DrillResult(archive, entries, commit, seconds)

Steps, each the project's own (handed in by backup_script.py, so the drill runs the code a real restore runs):
verify the archive (its checksum; the restore then reads every byte, gzip CRC included), restore it into a
fresh private folder under scratch_parent, compare every restored path with the archive's manifest
(hello/manifest.py: type, mode, size, sha256, link target, and nothing extra), then remove the scratch folder
whatever happened. Raises DrillFailed naming the paths that differ.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hello.manifest import ManifestError, compare_tree, read_manifest

log = logging.getLogger("backup")


class DrillFailed(Exception):
    """The archive did not restore to what its manifest says; str() names the first differences."""


@dataclass(frozen=True)
class Steps:
    verify: Callable[[Path], object]  # raise on a bad archive
    restore: Callable[[Path, Path], object]  # (archive, new target folder): the usual safe restore
    remove_tree: Callable[[Path], None]  # delete a restored tree, read-only folders included


@dataclass(frozen=True)
class DrillResult:
    archive: Path
    entries: int
    commit: str
    seconds: float


def drill(archive: Path, scratch_parent: Path, steps: Steps) -> DrillResult:
    started = time.monotonic()
    steps.verify(archive)
    scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="drill-", dir=scratch_parent))
    try:
        target = scratch / "restored"
        steps.restore(archive, target)
        try:
            manifest = read_manifest(target)
        except ManifestError as exc:
            raise DrillFailed(f"{archive.name}: {exc}") from None
        problems = compare_tree(target, manifest)
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise DrillFailed(f"{archive.name}: {len(problems)} restored path(s) differ from the manifest: {shown}")
    finally:
        with contextlib.suppress(OSError):
            steps.remove_tree(scratch)
    return DrillResult(archive, len(manifest["entries"]), manifest.get("commit", "unknown"), time.monotonic() - started)
