"""Shared test helpers: free ports, deadlines, configs, and real processes cleaned up by PID.

Tests start real programs (the server, Prometheus, git). Every process a test
starts is registered with the `processes` fixture, which kills its whole
process group by PID at teardown. Nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "scripts"))  # tests import the scripts' functions too (e.g. `import service`)
PYTHON = sys.executable
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll predicate until it returns something truthy; fail naming `what` at the deadline.

    Exceptions from predicate count as "not yet", except AssertionError, which fails at once.
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
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def require_tool(name: str, package: str | None = None) -> str:
    """The path of a program the test needs: skip loudly without it, but fail in CI, which must install it."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (Debian package {package or name}); .ci/run installs it"
    if IN_CI:
        pytest.fail(f"CI must have {reason}")
    pytest.skip(reason)


def http_get(url: str, timeout: float = 5.0, method: str = "GET", headers: dict[str, str] | None = None):
    """(status, headers, body) of one request; HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = (
            deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def write_config(directory: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A config.yaml in directory: the repo's, with run_dir inside directory, then the overrides (under `system`)."""
    directory.mkdir(parents=True, exist_ok=True)
    system = yaml.safe_load((REPO / "config.yaml").read_text())["system"]
    system = deep_merge(system, {"run_dir": str(directory / "run")})
    system = deep_merge(system, overrides or {})
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump({"system": system}, sort_keys=False))
    return path


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


@pytest.fixture
def processes() -> Iterator[ProcessRegistry]:
    registry = ProcessRegistry()
    try:
        yield registry
    finally:
        registry.cleanup()


class HelloServer:
    """A real `python hello_world.py` in the foreground, on a free port, with its own config and run dir."""

    def __init__(self, registry: ProcessRegistry, directory: Path, workers: int = 1, overrides: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server = {"host": "127.0.0.1", "port": self.port, "workers": workers}
        self.config_path = write_config(directory, deep_merge({"server": server}, overrides or {}))
        self.env = {**os.environ, "HELLO_CONFIG": str(self.config_path)}
        self.log_path = directory / "server.log"
        with open(self.log_path, "ab") as log:
            self.proc = registry.start(
                [PYTHON, str(REPO / "hello_world.py")], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log()}")
            return http_get(self.url + "/readyz", timeout=1)[0] == 200

        wait_until(ready, timeout, f"{self.url}/readyz")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def hello_server(processes: ProcessRegistry, tmp_path: Path) -> Callable[..., HelloServer]:
    """Factory: hello_server(workers=1, overrides={...}) starts a server and waits until it is ready."""
    count = 0

    def start(workers: int = 1, overrides: dict | None = None) -> HelloServer:
        nonlocal count
        count += 1
        return HelloServer(processes, tmp_path / f"server{count}", workers, overrides)

    return start
