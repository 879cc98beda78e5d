"""The real processes a test starts, by PID: ProcessRegistry (the `processes` fixture) kills each one's whole
process group at teardown; nothing is ever stopped by name. start_ready starts a server and waits for its URL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from hello.base.http_client import http_request
from hello.base.proc import wait_until


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group led by pid (our children start their own session), or pid alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class ProcessRegistry:
    """Processes a test started, by PID: each is killed with its group at teardown."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.popens: list[subprocess.Popen] = []

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(args, **kwargs)
        self.popens.append(proc)
        self.pids.append(proc.pid)
        return proc

    def adopt(self, pid: int) -> None:
        """Register a process started indirectly (e.g. by `make start`, read from its pidfile)."""
        self.pids.append(pid)

    def cleanup(self) -> None:
        for pid in reversed(self.pids):
            kill_group(pid)
        for proc in self.popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def start_ready(
    registry: ProcessRegistry, args: list[str], url: str, log_path: Path, timeout: float = 30, path: str = "/-/ready"
) -> subprocess.Popen:
    """Start a program logging to log_path and wait until url+path answers 200; fail at once if it exits."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        proc = registry.start(args, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{args[0]} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        return http_request(url + path, timeout=1)[0] == 200

    wait_until(ready, timeout, url + path)
    return proc
