"""The workers' prometheus_client multiprocess files: requests counted into them, dead workers' merged.

The only module that relies on prometheus_client's internals (TESTED_WITH names the version it was
written against; tests/test_metrics_files.py fails loudly when the installed or pinned version differs
or the internals below change):

- RequestMetrics writes the request counter and latency histogram straight into the shared files: a
  multiprocess value's `_file` (`MmapedDict`: `_m`, the mmap, and `_positions`, key -> byte offset of
  its 8-byte double) and `_key`; a histogram child's `_sum` and `_buckets`, a counter child's `_value`.
- merge_dead merges a dead worker's files (below).

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

Written against prometheus_client 0.26.0 (TESTED_WITH): the file names `{type}_{pid}.db`
(`gauge_{mode}_{pid}.db` for gauges), MmapedDict and its read_all_values_from_file, and
MultiProcessCollector's glob of `*.db`. tests/test_metrics_files.py fails loudly if those change.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

TESTED_WITH = {"prometheus-client": "0.26.0"}

log = logging.getLogger(__name__)

SUMMED_TYPES = ("counter", "histogram", "summary")  # every value of these adds up across files
MERGED = "merged"  # stands in for the PID in the merged files' names: counter_merged.db, ...
LOCK_NAME = ".merge.lock"  # a dot name: the collector's glob of *.db never sees it
PAGE_LOCK_NAME = ".page.lock"  # held while a worker renders the shared page (SharedPage)


def worker_file(directory: Path, kind: str, pid: int | str) -> Path:
    """The file prometheus_client writes for one process and type (the merged one for pid=MERGED)."""
    return directory / f"{kind}_{pid}.db"


@contextlib.contextmanager
def locked(directory: Path, exclusive: bool, name: str = LOCK_NAME) -> Iterator[None]:
    """flock on the directory's lock file: shared while reading the files, exclusive while swapping them."""
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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


class SharedPage:
    """The rendered /metrics page, kept in the multiprocess directory and shared by the workers.

    A worker renders a new page while it has renders left in that page's bucket (`burst`, refilled at one a
    second); past that it answers the newest page any worker rendered. Scrapes now and then always get a
    fresh page; a flood of them costs about one render a second per worker.

    One page for all workers, not one per worker: a scraper sent to one worker, then another, must never
    see a counter go down (it would take it for a reset). Renders take turns under a lock and each reads
    every file, so each page's counts are at least its predecessor's; every worker answers the newest.
    """

    def __init__(self, directory: Path, burst: int = 5, per_second: float = 1.0) -> None:
        self.directory, self.burst, self.per_second = directory, burst, per_second
        # A bucket per page: Prometheus scraping OpenMetrics every second must not starve the text page of renders.
        self.buckets: dict[str, tuple[float, float]] = {}  # name -> (renders left, when counted)
        self.memory: dict[str, tuple[tuple[int, int], bytes]] = {}  # name -> ((inode, mtime), page)

    def take_token(self, name: str) -> bool:
        now = time.monotonic()
        tokens, filled_at = self.buckets.get(name, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - filled_at) * self.per_second)
        taken = tokens >= 1
        self.buckets[name] = (tokens - taken, now)
        return taken

    def render_or_newest(self, name: str, render: Callable[[], bytes]) -> bytes:
        """The page called name (one per format): a new render, written for every worker to read, while this worker
        has renders left; else the newest page any worker wrote."""
        path = self.directory / f".page-{name}"
        if not self.take_token(name):
            page = self.newest(path, name)
            if page is not None:
                return page
        with locked(self.directory, exclusive=True, name=PAGE_LOCK_NAME):
            page = render()
            scratch = path.with_name(path.name + f".{os.getpid()}.tmp")
            scratch.write_bytes(page)
            os.replace(scratch, path)
        return page

    def newest(self, path: Path, name: str) -> bytes | None:
        try:
            stat = os.stat(path)  # one system call when the page is the one this worker read last
        except FileNotFoundError:
            return None
        known = self.memory.get(name)
        if known is not None and known[0] == (stat.st_ino, stat.st_mtime_ns):
            return known[1]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            stat = os.fstat(fd)  # the file read, which a new render may have replaced since the stat
            page = b""
            while chunk := os.read(fd, max(stat.st_size, 65536)):
                page += chunk
        finally:
            os.close(fd)
        self.memory[name] = ((stat.st_ino, stat.st_mtime_ns), page)
        return page


# --- request metrics --------------------------------------------------------------------------------


def shared_double(value: Any) -> tuple[memoryview, int]:
    """The 8-byte double behind a prometheus_client multiprocess value: (its mmap as doubles, index).

    MmapedDict keeps each value at an 8-aligned offset of a MAP_SHARED file. When it grows the file it maps
    it anew and leaves the old map open, so a view taken now stays valid for the offsets it covers.
    """
    mmaped = value._file
    return memoryview(mmaped._m).cast("d"), mmaped._positions[value._key] // 8


class RequestMetrics:
    """The request counter and latency histogram, written straight into prometheus_client's shared files.

    prometheus_client's own update costs about 9 us a request here (a lock and a struct write per value).
    Adding to the mmapped doubles costs well under 1 us, and a request is in the shared file the moment
    it is counted: a worker that is killed (SIGKILL, OOM) loses nothing it counted. The HTTP layer counts
    an answer as it writes it. Nothing may call inc() or observe() on these metrics' children: their
    cached values would overwrite the shared ones.
    """

    def __init__(self, routes: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        from prometheus_client import Counter, Histogram

        self.requests_total = Counter(
            "hello_world_requests",
            "Requests answered, by method, route and status code; each is counted as its answer is written.",
            ["method", "path", "code"],
        )
        duration = Histogram(
            "hello_world_request_duration_seconds",
            "Time from a request's headers to its answer being ready to write.",
            ["path"],
            buckets=buckets,
        )
        self.bounds = (*buckets, float("inf"))
        children = {route: duration.labels(route) for route in routes}
        view = None
        for child in children.values():  # every child exists before the view: it covers all their offsets
            view, _ = shared_double(child._sum)
        self.latency = {
            route: (view, shared_double(child._sum)[1], tuple(shared_double(b)[1] for b in child._buckets))
            for route, child in children.items()
        }
        self.counts: dict[tuple[str, str, int], tuple[memoryview, int]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        slot = self.counts.get((method, route, status))
        if slot is None:
            slot = self.counts[(method, route, status)] = shared_double(
                self.requests_total.labels(method, route, str(status))._value
            )
        view, index = slot
        view[index] += 1.0
        view, sum_index, bucket_indexes = self.latency[route]
        view[sum_index] += seconds
        view[bucket_indexes[bisect.bisect_left(self.bounds, seconds)]] += 1.0
