"""What the scripts share beyond config: one run at a time, job outcomes as metrics, small helpers.

    from hello.base.jobs import LockHeld, job_lock, record_job

    try:
        with job_lock(Path(config["run_dir"]) / "backup.lock"):
            started = time.time()
            ...                                   # the job
            record_job(config, "hello_world_backup", success=True, started=started, finished=time.time(),
                       extra={"hello_world_backup_size_bytes": 1234})
    except LockHeld as exc:
        print(f"another run holds the lock (PID {exc.pid})")   # exit 75

job_lock holds an flock(2) on the lock file, which also carries the holder's PID.
The kernel drops an flock when its holder dies, so a lock left by a killed run
is taken over (with a warning naming the dead PID). A file naming a live PID
that holds no flock (another tool, or an old run) still counts as held, unless
that PID started after the file was written (the PID was reused).

record_job writes <run_dir>/metrics/<job>.prom atomically (for node_exporter's
textfile collector or a human) and pushes the same gauges to the Pushgateway
when system.monitoring.pushgateway.url is set (with the login of hello/base/monitor_login.py
when `make monitor` made one). Each is attempted whatever the
other did (a full disk still pushes); a failure is one warning line, never raised.

pid_alive, http_get, fsync_dir, write_atomically and private_dir (a folder only we can change) are the small
helpers every script needs the same way. This module is a library; it has no command line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

from hello.base import promtext
from hello.base.monitor_login import read_credentials
from hello.update.deploy_records import DEPLOY_HELP, DEPLOY_METRIC

log = logging.getLogger("hello_jobs")

PUSH_TIMEOUT = 5.0  # seconds: a slow Pushgateway must not hold up a backup
EXTRA_HELP = {
    "hello_world_backup_size_bytes": "Size of the archive written by the last backup run, in bytes.",
    "hello_world_backup_duration_seconds": "Duration of the last backup run, in seconds.",
    "hello_world_validation_check_success": "1 if the check passed in the last validation run, 0 if it failed.",
    DEPLOY_METRIC: DEPLOY_HELP,
}
# A labelled gauge of a job: metric name -> (label names, {label values: value}).
LabelledSeries = dict[str, tuple[tuple[str, ...], dict[tuple[str, ...], float]]]


class JobGauges(NamedTuple):
    """The names of the gauges every job records (SPEC): <job>_success and its two timestamps."""

    success: str
    last_run: str
    last_success: str


def job_gauges(job: str) -> JobGauges:
    return JobGauges(f"{job}_success", f"{job}_last_run_timestamp_seconds", f"{job}_last_success_timestamp_seconds")


class LockHeld(Exception):
    """Another live process holds the job lock; .pid is its PID (0 when unknown)."""

    def __init__(self, path: Path, pid: int) -> None:
        super().__init__(f"{path} is held by PID {pid}" if pid else f"{path} is held by another process")
        self.path = path
        self.pid = pid


# --- the lock ---


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


def http_get(url: str, timeout: float, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP error statuses are returned, network errors raise OSError."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


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


# --- the metrics ---


def _previous_value(path: Path, name: str) -> float | None:
    """The value of gauge `name` in an earlier textfile, or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        for sample in promtext.samples(text):
            if sample.name == name:
                return float(sample.value)
    except ValueError:
        log.warning("ignoring unreadable metrics textfile %s", path)
    return None


def fsync_dir(directory: Path) -> None:
    """Make the names in directory (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NotPrivate(OSError):
    """A folder meant for the kit's private state is not a folder owned by this user; str() says what to fix."""


def private_dir(path: Path, *, readable: bool = False) -> Path:
    """path (and missing parents) as a folder owned by this user that no one else can change: mode 0700, or with
    readable only without group and other write. Never through a symbolic link at its end; NotPrivate if it is
    anything else (another user's folder, a link): the kit's private state is never kept there."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotPrivate(f"{path} is not a folder (a symbolic link?): move it away") from None
        raise
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise NotPrivate(f"{path} belongs to uid {info.st_uid}, not to this user: run as its owner, or move it")
        unwanted = 0o022 if readable else 0o077
        if info.st_mode & unwanted:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~unwanted)
    finally:
        os.close(fd)
    return path


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace path with data in one step: readers see the old file or the new one, never a part.

    mode (less the umask) is the new file's from its creation on: 0o600 keeps a secret unreadable throughout.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()  # a leftover of a killed run would keep its old mode
        with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def _push_handler(config: dict[str, Any]) -> Callable[..., Callable[[], None]]:
    """prometheus_client's push handler, with the Pushgateway's login when `make monitor` made one."""
    credentials = read_credentials(config)
    if credentials is None:
        return default_handler

    def handler(url: str, method: str, timeout: float | None, headers: list, data: bytes) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, credentials.user, credentials.password)

    return handler


def _registry(
    job: str,
    success: bool,
    finished: float,
    last_success: float | None,
    extra: dict[str, float],
    series: LabelledSeries,
):
    registry = CollectorRegistry()
    what = job.removeprefix("hello_world_")
    names = job_gauges(job)
    values: dict[str, tuple[str, float | None]] = {
        names.last_run: (f"End of the last {what} run (Unix time).", finished),
        names.success: (f"1 if the last {what} run succeeded, else 0.", 1.0 if success else 0.0),
        names.last_success: (f"End of the last successful {what} run (Unix time).", last_success),
    }
    for name, value in extra.items():
        values[name] = (
            EXTRA_HELP.get(name, f"{name.removeprefix(job + '_').replace('_', ' ')} of the last {what} run."),
            value,
        )
    for name, (help_text, value) in values.items():
        if value is not None:
            Gauge(name, help_text, registry=registry).set(value)
    for name, (labelnames, samples) in series.items():
        gauge = Gauge(name, EXTRA_HELP.get(name, name), labelnames, registry=registry)
        for labelvalues, value in samples.items():
            gauge.labels(*labelvalues).set(value)
    return registry


def metrics_textfile(config: dict[str, Any], job: str) -> Path:
    """<run_dir>/metrics/<job>.prom: where record_job writes the job's metrics (node_exporter's textfile)."""
    return Path(config["run_dir"]) / "metrics" / f"{job}.prom"


def record_job(
    config: dict[str, Any],
    job: str,
    *,
    success: bool,
    started: float,
    finished: float,
    extra: dict[str, float] | None = None,
    series: LabelledSeries | None = None,
    last_success: float | None = None,
) -> Path:
    """Write the job's outcome to <run_dir>/metrics/<job>.prom and push it; return the textfile path.

    extra: more unlabelled gauges; series: labelled ones (e.g. one per validation check).
    Both are attempted, whatever the other did: a full disk must not keep a failure from the Pushgateway.
    A failure of either is one warning line (on stderr), never an exception. last_success: the end of the last
    success when the caller knows it (a run that failed after its main work succeeded); else taken from the
    earlier textfile.
    """
    path = metrics_textfile(config, job)
    directory = path.parent
    if success:
        last_success = finished
    elif last_success is None:
        last_success = _previous_value(path, job_gauges(job).last_success)
    registry = _registry(job, success, finished, last_success, dict(extra or {}), dict(series or {}))
    unwritten = unpushed = ""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(path, generate_latest(registry))
    except OSError as exc:
        unwritten = f"{path} ({exc.strerror or exc})"
    log.debug("%s finished in %.3fs; metrics in %s", job, finished - started, path)
    url = config.get("monitoring", {}).get("pushgateway", {}).get("url")
    if url:
        push_started = time.monotonic()
        try:
            push_to_gateway(url, job=job, registry=registry, timeout=PUSH_TIMEOUT, handler=_push_handler(config))
        except Exception as exc:  # noqa: BLE001 - any push failure is only a warning
            unpushed = f"the Pushgateway at {url} ({exc})"
        else:
            log.debug("pushed %s metrics to %s in %.3fs", job, url, time.monotonic() - push_started)
    if unwritten and unpushed:
        log.warning("could not record %s metrics: not written to %s, not pushed to %s", job, unwritten, unpushed)
    elif unpushed:
        log.warning("could not push %s metrics to %s; they are in %s", job, unpushed, path)
    elif unwritten:
        pushed = f"pushed to {url}" if url else "no Pushgateway is configured"
        log.warning("could not write %s metrics to %s; %s", job, unwritten, pushed)
    return path
