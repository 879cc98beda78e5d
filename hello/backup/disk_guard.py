"""The disk guard: refuse a backup at once when its destination cannot hold it.

    check_room(destination, expected_bytes)    # raises NoRoom naming the folder, free and needed bytes

The expected size is the last archive's size, or the source's size when there is none (see hello/backup/create.py);
the margin covers an archive that grew since the last run and the filesystem's own overhead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

MARGIN_RATIO = 0.10  # an archive 10% larger than the last one still fits
MARGIN_BYTES = 64 << 10  # and 64 KiB for the sidecar, the manifest and filesystem overhead


class NoRoom(Exception):
    """Too little free space; str() is the one-line reason."""


def needed(expected_bytes: int) -> int:
    return int(expected_bytes * (1 + MARGIN_RATIO)) + MARGIN_BYTES


def check_room(destination: Path, expected_bytes: int) -> None:
    free = shutil.disk_usage(destination).free
    need = needed(expected_bytes)
    if free < need:
        raise NoRoom(
            f"{destination}: not enough free space for the backup: {free} bytes free, {need} needed "
            f"(expected archive {expected_bytes} bytes + margin)"
        )
