"""One run at a time: job_lock, an flock(2) on a lock file that also carries the holder's PID.

    try:
        with job_lock(Path(config["run_dir"]) / "backup.lock"):
            ...                                   # the job
    except LockHeld as exc:
        print(f"another run holds the lock (PID {exc.pid})")   # exit 75

The kernel drops an flock when its holder dies, so a lock left by a killed run is taken over (with a warning naming
the dead PID). A file naming a live PID that holds no flock (another tool, or an old run) still counts as held,
unless that PID started after the file was written (the PID was reused).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class LockHeld(Exception):
    """Another live process holds the job lock; .pid is its PID (0 when unknown)."""

    def __init__(self, path: Path, pid: int) -> None:
        super().__init__(f"{path} is held by PID {pid}" if pid else f"{path} is held by another process")
        self.path = path
        self.pid = pid


def _read_pid(fd: int) -> int:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else 0


def _process_start_time(pid: int) -> float | None:
    """Epoch seconds at which pid started (Linux /proc), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after "pid (comm)"
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int) -> bool:
    """True while pid runs; a zombie (exited, not yet reaped by its parent) has stopped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _live_holder(fd: int) -> int:
    """The PID recorded in the lock file if that process still runs and wrote it, else 0."""
    pid = _read_pid(fd)
    if not pid or pid == os.getpid() or not pid_alive(pid):
        return 0
    started = _process_start_time(pid)
    written = os.fstat(fd).st_mtime
    if started is not None and started > written + 1:  # + 1: /proc start times are coarse
        return 0  # a newer process reused the PID of the dead writer
    return pid


def _open_locked(path: Path) -> int:
    """An fd of path with our exclusive flock, retrying if the file was replaced meanwhile."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)  # never through a link
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                os.close(fd)
                raise
            pid = _read_pid(fd)
            os.close(fd)
            raise LockHeld(path, pid) from None
        # The holder we waited behind may have unlinked the file before we locked it:
        # then our lock is on an orphan inode and we must lock the current file instead.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def job_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive job lock at path for the block; raise LockHeld if a live process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(path)
    try:
        holder = _live_holder(fd)
        if holder:
            raise LockHeld(path, holder)
        stale = _read_pid(fd)
        if stale and stale != os.getpid():
            log.warning("taking over the stale lock %s of PID %d, which is no longer running", path, stale)
    except BaseException:
        os.close(fd)
        raise
    try:
        # Ours from here: a signal while the PID is written (an fsync on a busy disk) still removes the file.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        yield
    finally:
        # Unlink while still holding the flock, so a waiter never locks a file we are about to remove.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                path.unlink()
        os.close(fd)
