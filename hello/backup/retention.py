"""Retention: which archives system.backup.keep keeps, and the prune that deletes the rest.

    kept = plan_retention(archives, {"last": 3, "daily": 7, "weekly": 4, "monthly": 6}, zone)   # path -> why
    prune(config, dry_run=False, known_good=fresh)       # local archives; keep_plan(config) for a remote's

The newest archive that verifies is always kept too, whatever the rules say.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hello.backup.archive import verify_archive
from hello.backup.naming import Archive, BackupError, find_archives, sidecar_path, unlink_quietly
from hello.base.files import fsync_dir

log = logging.getLogger("backup")

Keep = Callable[[dict[str, datetime]], set[str]]  # archives (name -> time) -> the names retention keeps


def config_zone(config: dict[str, Any]) -> tzinfo | None:
    name = config["backup"]["timezone"]
    return ZoneInfo(name) if name else None  # None: the host's local time


def plan_retention(archives: list[Archive], keep: dict[str, int], zone: tzinfo | None) -> dict[Path, list[str]]:
    """Archives to keep -> why: the newest `last` archives, and the newest archive of each of the last N days,
    ISO weeks and months.

    Like restic's --keep-last and --keep-daily/weekly/monthly: `last` keeps the newest archives whatever their
    bucket (a backup taken by hand before a risky change survives the next one that day); each other rule walks
    from the newest archive back and keeps the newest archive of each calendar bucket (in the configured time
    zone) until it has N buckets.
    """
    buckets = {
        "daily": lambda t: t.date(),
        "weekly": lambda t: t.isocalendar()[:2],
        "monthly": lambda t: (t.year, t.month),
    }
    kept: dict[Path, list[str]] = {}
    newest_first = sorted(archives, key=lambda a: a.created, reverse=True)
    for archive in newest_first[: keep.get("last", 0)]:
        kept[archive.path] = ["last"]
    for rule, bucket_of in buckets.items():
        seen: set[Any] = set()
        for archive in newest_first:
            if len(seen) >= keep[rule]:
                break
            bucket = bucket_of(archive.created.astimezone(zone))
            if bucket not in seen:
                seen.add(bucket)
                kept.setdefault(archive.path, []).append(rule)
    return kept


def newest_good(archives: list[Archive], known_good: Path | None) -> Path | None:
    """The newest archive that verifies (checksum and full read), newest first; known_good is trusted."""
    for archive in sorted(archives, key=lambda a: a.created, reverse=True):
        if known_good is not None and archive.path == known_good:
            return archive.path
        try:
            verify_archive(archive.path)
        except BackupError as exc:
            log.warning("not a good archive: %s", exc)
            continue
        return archive.path
    return None


def prune(config: dict[str, Any], *, dry_run: bool, known_good: Path | None = None) -> list[Path]:
    """Delete the archives system.backup.keep does not keep; return what was (or would be) deleted."""
    archives = find_archives(Path(config["backup"]["destination"]))
    kept = plan_retention(archives, config["backup"]["keep"], config_zone(config))
    good = newest_good(archives, known_good)
    if good is not None:
        kept.setdefault(good, []).append("newest good")
    doomed = [a.path for a in archives if a.path not in kept]
    for archive in archives:
        if archive.path in kept:
            log.debug("keeping %s (%s)", archive.path.name, ", ".join(kept[archive.path]))
    for path in doomed:
        if dry_run:
            print(f"would delete {path}")
            continue
        # The archive goes first, its sidecar after: a final-named archive never lacks its sidecar.
        unlink_quietly(path)
        unlink_quietly(sidecar_path(path))
        log.info("pruned %s", path)
    if doomed and not dry_run:
        fsync_dir(Path(config["backup"]["destination"]))
    return doomed


def keep_plan(config: dict[str, Any]) -> Keep:
    """The retention plan of system.backup.keep over archive names (the same plan as for local archives)."""

    def keep(archives: dict[str, datetime]) -> set[str]:
        found = [Archive(Path(name), created) for name, created in archives.items()]
        return {path.name for path in plan_retention(found, config["backup"]["keep"], config_zone(config))}

    return keep
