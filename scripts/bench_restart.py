"""Time the service's way back after its supervisor is SIGKILLed under load and cron's line starts it again.

    python -m scripts.bench_restart [--rounds N] [--workers N] [--clients N] [--json]    (make bench-restart)

Each round, with a scratch config and run dir in a temp folder and a free port on 127.0.0.1:
  1. `scripts/service.py start` (as `make start`), then load: N keep-alive clients GET / in a loop;
  2. SIGKILL the supervisor (the OOM killer's way); time until its workers are gone too (each
     notices the dead parent on its next 0.1 s tick, drains and exits);
  3. run cron's every-minute line (`make start QUIET=1`, taken from `scripts/cron.py --json`, through
     /bin/sh in cron's bare environment) and time until /readyz answers 200 again.
Prints per round: workers gone, start -> ready, kill -> ready; then the median and the max of each.
Not in the numbers: the wait for cron's next minute (0 to 60 s; systemd's Restart=on-failure waits
RestartSec=1s instead). Load and processes stay on 127.0.0.1 and stop by themselves.

Exit codes: 0 measured; 1 a round failed; 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
import yaml  # noqa: E402

from hello.base.config import EXIT_FAILED, EXIT_OK, RunFiles  # noqa: E402
from hello.base.http_client import http_get  # noqa: E402
from hello.base.locks import pid_alive  # noqa: E402
from hello.base.proc import TimedOut, free_port, wait_until  # noqa: E402

CRON_ENV_PATH = "/usr/bin:/bin"
READY_TIMEOUT = 120.0  # generous: a busy 2-core machine
GONE_TIMEOUT = 60.0  # drain_timeout 10 s + margin


class RoundFailed(Exception):
    """A step did not happen within its deadline; str() says which."""


def scratch_config(directory: Path, port: int, workers: int) -> Path:
    """The repo's config.yaml with its run dir in directory and the server on 127.0.0.1:port."""
    data = yaml.safe_load((REPO / "config.yaml").read_text())
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
        [sys.executable, str(REPO / "scripts" / "cron.py"), "--json"],
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
        return http_get(url + "/readyz", timeout=1)[0] == 200
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


def stop_server(config_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "service.py"), "stop"],
        env={**os.environ, "HELLO_CONFIG": str(config_path)},
        capture_output=True,
        timeout=120,
    )


def bench(rounds: int, workers: int, clients: int) -> list[Round]:
    with tempfile.TemporaryDirectory(prefix="hello-bench-restart-") as scratch:
        directory = Path(scratch)
        port = free_port()
        config_path = scratch_config(directory, port, workers)
        command = every_minute_start(config_path)
        if run_cron_line(command, config_path).returncode != 0:
            raise RoundFailed(f"the first start failed: see {directory / 'run' / 'hello_world.log'}")
        load = Load(port, clients)
        try:
            results = []
            for number in range(1, rounds + 1):
                result = kill_and_restart(directory, port, command, config_path, load)
                print(
                    f"round {number}: workers gone {result.workers_gone:.2f} s, start -> ready "
                    f"{result.start_to_ready:.2f} s, kill -> ready {result.kill_to_ready:.2f} s",
                    file=sys.stderr,
                )
                results.append(result)
            return results
        finally:
            load.stop()
            stop_server(config_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.workers < 1 or args.clients < 1:
        parser.error("--rounds, --workers and --clients must be at least 1")
    try:
        results = bench(args.rounds, args.workers, args.clients)
    except (RoundFailed, subprocess.SubprocessError) as exc:
        print(f"bench_restart failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    summary = {
        name: {
            "median": statistics.median(getattr(r, name) for r in results),
            "max": max(getattr(r, name) for r in results),
        }
        for name in ("workers_gone", "start_to_ready", "kill_to_ready")
    }
    if args.json:
        print(json.dumps({"rounds": [r.__dict__ for r in results], "summary": summary}, indent=2))
    else:
        print(f"{args.rounds} rounds, {args.workers} workers, {args.clients} load clients on /:")
        for name, values in summary.items():
            print(f"  {name.replace('_', ' '):16} median {values['median']:.2f} s, max {values['max']:.2f} s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
