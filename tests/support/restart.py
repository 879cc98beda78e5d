"""A server SIGKILLed under load and started again by cron's every-minute line: the round that
tests/test_restart.py checks against a deadline and scripts/bench_restart.py times.

scratch_config (the repo's config, a run dir and port of the test's own), every_minute_start (cron's start line as
`scripts/cron.py --json` prints it), run_cron_line (it, in cron's bare environment), Load (keep-alive clients on /)
and kill_and_restart (one round: SIGKILL, workers gone, cron's line, ready, answering the load).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from hello.base.checkout import CHECKOUT
from hello.base.config import DEFAULT_PATH, RunFiles
from hello.base.http_client import http_request
from hello.base.locks import pid_alive
from hello.base.proc import TimedOut, wait_until

CRON_ENV_PATH = "/usr/bin:/bin"
READY_TIMEOUT = 120.0  # generous: a busy 2-core machine
GONE_TIMEOUT = 60.0  # drain_timeout 10 s + margin


class RoundFailed(Exception):
    """A step did not happen within its deadline; str() says which."""


def scratch_config(directory: Path, port: int, workers: int) -> Path:
    """The repo's config.yaml with its run dir in directory and the server on 127.0.0.1:port."""
    data = yaml.safe_load(DEFAULT_PATH.read_text())
    data["system"]["run_dir"] = str(directory / "run")
    data["system"]["server"].update(host="127.0.0.1", port=port, workers=workers)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cron_env(config_path: Path) -> dict[str, str]:
    """What cron gives its jobs here: a bare PATH, no HOME, the HELLO_CONFIG line `make cron` prints."""
    return {"PATH": CRON_ENV_PATH, "HELLO_CONFIG": str(config_path)}


def every_minute_start(config_path: Path) -> str:
    """The command of cron's every-minute start line, as `make cron` prints it for this config."""
    done = subprocess.run(
        [sys.executable, str(CHECKOUT / "scripts" / "cron.py"), "--json"],
        env={**os.environ, "HELLO_CONFIG": str(config_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    entries = json.loads(done.stdout)["entries"]
    line = next(e for e in entries if e["target"] == "start" and e["schedule"] == "* * * * *")
    return line["command"].replace(r"\%", "%")  # cron's escape; the shell gets a plain %


def run_cron_line(command: str, config_path: Path, timeout: float = READY_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["/bin/sh", "-c", command], env=cron_env(config_path), capture_output=True, text=True, timeout=timeout
    )


def workers_of(pid: int) -> list[int]:
    """The child PIDs of pid (Linux /proc)."""
    with contextlib.suppress(OSError):
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def wait_for(predicate, timeout: float, what: str) -> float:
    """Seconds until predicate() is true; RoundFailed naming `what` at the deadline."""
    started = time.monotonic()
    try:
        wait_until(predicate, timeout, what, interval=0.01)
    except TimedOut as exc:
        raise RoundFailed(str(exc)) from None
    return time.monotonic() - started


def is_ready(url: str) -> bool:
    try:
        return http_request(url + "/readyz", timeout=1)[0] == 200
    except OSError:
        return False


class Load:
    """clients threads, each a keep-alive connection GETting / until stop(); counts answers and errors."""

    def __init__(self, port: int, clients: int) -> None:
        self.port, self.ok, self.errors = port, 0, 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def client(self) -> None:
        connection = None
        while not self.stopping.is_set():
            try:
                connection = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/")
                response = connection.getresponse()
                response.read()
                good = response.status == 200
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                good = False
                if connection:
                    connection.close()
                connection = None
                self.stopping.wait(0.01)  # the server is gone: do not spin
            with self.lock:
                self.ok += good
                self.errors += not good
        if connection:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=10)


@dataclass
class Round:
    workers_gone: float  # SIGKILL -> the supervisor and its workers have exited
    start_to_ready: float  # cron's line starts -> /readyz 200
    kill_to_ready: float
    ok_after: int  # requests answered 200 by the new server while the load ran on


def kill_and_restart(directory: Path, port: int, command: str, config_path: Path, load: Load) -> Round:
    """One round against a running server: SIGKILL, wait for its workers, cron's line, wait for /readyz."""
    files = RunFiles(directory / "run")
    url = f"http://127.0.0.1:{port}"
    pid = files.running_pid()
    if not pid:
        raise RoundFailed("the server does not run before the kill")
    workers = workers_of(pid)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    gone = wait_for(lambda: not any(pid_alive(p) for p in (pid, *workers)), GONE_TIMEOUT, "supervisor and workers gone")
    started = time.monotonic()
    done = run_cron_line(command, config_path)
    if done.returncode != 0:
        raise RoundFailed(f"cron's start line exited {done.returncode}: {done.stderr.strip()[-300:]}")
    wait_for(lambda: is_ready(url), READY_TIMEOUT, f"{url}/readyz 200 after the restart")
    ready = time.monotonic()
    before = load.ok
    wait_for(lambda: load.ok > before + 100, READY_TIMEOUT, "the load answered by the new server")
    return Round(gone, ready - started, ready - killed, load.ok - before)
