"""The workers' prometheus_client multiprocess files: dead workers' merged into one file per type.

prometheus_client's multiprocess mode keeps one file per process and metric type in
PROMETHEUS_MULTIPROC_DIR, and /metrics reads every one of them. A worker's files outlive it (its
counts must stay), so each reload adds its workers' files and /metrics grows slower with every
reload. As prometheus_client's docs suggest for long-running multiprocess servers, the supervisor
merges a dead worker's files into one file per type (merge_dead), so the directory holds the live
workers' files plus at most one merged file per type, however many reloads came before.

Counts stay exact: a counter, a histogram bucket or a summary is the sum of its value over the
files (that is how the collector adds them up), so the merged file holds, for every key, the sum
of the old merged value and the dead worker's value. The merged file is written beside, under a
name the collector never reads, and swapped in (rename, then the dead files removed) while holding
an exclusive lock; the workers' collector (LockedCollector) holds a shared one while it reads, so a
scrape sees each count exactly once: before the swap or after it, never both, never neither.
Only the supervisor writes merged files and a dead worker writes nothing, so the read-and-add needs
no lock. Gauges are left alone: the live modes' files go with mark_process_dead, and the other
modes are not summed (this service has only a livemax gauge).

Written against prometheus_client 0.26.0 (requirements.txt): the file names `{type}_{pid}.db`
(`gauge_{mode}_{pid}.db` for gauges), MmapedDict and its read_all_values_from_file, and
MultiProcessCollector's glob of `*.db`. tests/test_metrics_files.py fails loudly if those change.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

SUMMED_TYPES = ("counter", "histogram", "summary")  # every value of these adds up across files
MERGED = "merged"  # stands in for the PID in the merged files' names: counter_merged.db, ...
LOCK_NAME = ".merge.lock"  # a dot name: the collector's glob of *.db never sees it


def worker_file(directory: Path, kind: str, pid: int | str) -> Path:
    """The file prometheus_client writes for one process and type (the merged one for pid=MERGED)."""
    return directory / f"{kind}_{pid}.db"


@contextlib.contextmanager
def locked(directory: Path, exclusive: bool) -> Iterator[None]:
    """flock on the directory's lock file: shared while reading the files, exclusive while swapping them."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def read_values(path: Path) -> dict[str, tuple[float, float]]:
    """key -> (value, timestamp) of one multiprocess file; {} when there is none."""
    try:
        return {key: (value, stamp) for key, value, stamp, _ in MmapedDict.read_all_values_from_file(str(path))}
    except FileNotFoundError:
        return {}


def write_values(path: Path, values: dict[str, tuple[float, float]]) -> None:
    path.unlink(missing_ok=True)
    mmap = MmapedDict(str(path))
    try:
        for key, (value, stamp) in values.items():
            mmap.write_value(key, value, stamp)
    finally:
        mmap.close()


def merge_dead(directory: Path, pid: int) -> int:
    """Add the dead process pid's counter, histogram and summary files into the merged files; how many.

    Call it only once pid has exited (it writes no more) and from one process at a time (the supervisor).
    """
    merged = 0
    for kind in SUMMED_TYPES:
        dead = worker_file(directory, kind, pid)
        if not dead.exists():
            continue
        target = worker_file(directory, kind, MERGED)
        values = read_values(target)
        for key, (value, stamp) in read_values(dead).items():
            old, old_stamp = values.get(key, (0.0, 0.0))
            values[key] = (old + value, max(old_stamp, stamp))
        scratch = directory / f".{target.name}.tmp"  # not *.db: the collector never reads it
        write_values(scratch, values)
        with locked(directory, exclusive=True):
            os.replace(scratch, target)
            dead.unlink()
        merged += 1
    return merged


def merge_dead_quietly(directory: Path, pid: int) -> None:
    """merge_dead, logging instead of raising: left unmerged, the files still count, only /metrics is slower."""
    try:
        merge_dead(directory, pid)
    except (OSError, RuntimeError, ValueError, struct.error) as exc:  # what prometheus_client raises on a bad file
        log.warning("could not merge the metric files of worker %d: %s", pid, exc)


class LockedCollector(MultiProcessCollector):
    """prometheus_client's MultiProcessCollector, reading the files under the shared lock of merge_dead."""

    def collect(self):
        with locked(Path(self._path), exclusive=False):
            return list(super().collect())
