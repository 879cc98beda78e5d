"""Processes and ports for the scripts and the tests: a free port, a log's tail, a stop by PID, a deadline loop.

    port = free_port()                                   # 127.0.0.1, nothing listens there now
    wait_until(lambda: ready(url), 30, "the server")     # the result; TimedOut naming what at the deadline
    terminate(pid, timeout=10)                           # SIGTERM, then SIGKILL at the deadline
    tail(log_path)                                       # "last | five | lines" of a log, for an error message
    Popen(argv, preexec_fn=die_with_parent())            # the child gets SIGKILL when we die, even by kill -9
    code = run_shell_group("./dump.sh", timeout=60, cwd=folder)   # a hook: it and all it started end with it

Processes are only ever stopped by the PID we started them with, never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hello.base.locks import pid_alive

log = logging.getLogger("hello.base.proc")

T = TypeVar("T")


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class TimedOut(TimeoutError):
    """wait_until's deadline passed; str() names what was waited for (and the predicate's last error)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A preexec_fn: the child gets sig when this process dies, however it dies (PR_SET_PDEATHSIG).

    Strictly, when the thread that started it ends: start such children from a thread that outlives them. libc is
    loaded here, before the fork, so the child runs nothing but prctl and getppid. A parent gone before prctl took
    effect would never signal: the child then signals itself."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


# The leader of a shell line's process group: it runs the line in the background and waits for it, and on SIGTERM
# (its PDEATHSIG: our death, even by kill -9) kills its whole group, itself included. PDEATHSIG alone reaches only
# the direct child; what the line started would live on (PPID 1) with no one to stop it.
_GROUP_LEADER = 'trap "kill -KILL 0" TERM; /bin/sh -c "$1" & wait $!'


def run_shell_group(command: str, *, timeout: float | None, **popen_args: Any) -> int:
    """Run a shell line in its own process group; its exit status. Nothing it started outlives it.

    The whole group is killed (SIGKILL) when the line ends (what it left running in the background), at the
    timeout (then subprocess.TimeoutExpired), on any exception here (a Ctrl-C), and when this process dies.
    popen_args: cwd, env, stdin, stdout, stderr (files, not pipes: a leftover holding a pipe would block a read).
    """
    proc = subprocess.Popen(
        ["/bin/sh", "-c", _GROUP_LEADER, "sh", command],
        process_group=0,
        preexec_fn=die_with_parent(signal.SIGTERM),  # noqa: PLW1509 - only prctl runs between fork and exec
        **popen_args,
    )
    try:
        if not _exited(proc.pid, timeout):
            raise subprocess.TimeoutExpired(command, timeout or 0)
    finally:
        # The leader is a zombie until reaped (or still running): its PID, hence the group's id, cannot be reused yet.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode


def _exited(pid: int, timeout: float | None) -> bool:
    """Wait up to timeout for our child pid to exit, without reaping it (a pidfd: no polling); whether it did."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else int(timeout * 1000)))
    finally:
        os.close(pidfd)


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll predicate until it returns something truthy; TimedOut naming `what` at the deadline.

    Exceptions from predicate count as "not yet", except AssertionError, which is raised at once.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except AssertionError:
            raise  # the predicate saw something that will not get better (e.g. the process died)
        except Exception as exc:  # noqa: BLE001 - remembered for the failure message
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimedOut(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM pid, then SIGKILL if it still lives after timeout seconds; reap it when it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            log.warning("PID %d did not stop within %.0fs: killing it", pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child (monitor.py start --foreground)
        time.sleep(0.05)


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log joined by " | ", for a one-line error message; says when there is none."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return " | ".join(text.splitlines()[-lines:]) or "(empty log)"
