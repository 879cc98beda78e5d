"""Benchmark the update protocol on a scratch deployment; also the scratch deployment tests/test_update.py uses.

Run it (it is a benchmark, not a test):

    make bench-update                       # or: .venv/bin/python scripts/bench_update.py [--rounds 5] [--json]

What it builds, all in a temp dir, nothing touching this checkout or its server:
a bare git repository seeded from this working tree (the remote), a clone of it (the deployment) serving
with `scripts/service.py start` on a free port, and a second clone to push new commits from.

What it measures, over --rounds rounds, with a keep-alive and a connection-per-request client running
(--no-load: without them):
  no-op      `python update_protocol.py` with nothing new, process start to exit (goal: under 2 s)
  full       `python update_protocol.py` deploying a new commit, process start to exit
  serving    from the test step passing to the new version serving: checkout + build + deploy (the reload returns
             once the new code answers) (goal: under 5 s); "verified" adds the verify step
  load       requests answered, failed and with a wrong body during all updates (failed must be 0)
The deployment's test step is one tiny pytest file; it and the backup step (system.update.backup_first, a
backup of the deployment checkout) are timed apart and excluded from the goals.

Exit 0 when every request during the updates was answered with the right 200 (whatever the timings), 1 when
any failed or had a wrong body (a zero-downtime regression) or the bench could not run, 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hello_config import RunFiles  # noqa: E402
from hello_jobs import http_get  # noqa: E402

# What a deployment needs; tests and their helpers stay out (the deployment's tests are tests_smoke/).
SKIP_TOP = {"tests", "test_hello_world.py", "conftest.py"}
SMOKE_TEST = '''"""The deployment's own small test suite: passes while SMOKE says ok."""
import os
import pathlib
import time


def test_smoke():
    hold = os.environ.get("SMOKE_HOLD")  # lets a test keep an update inside its test step
    if hold:
        pathlib.Path(hold + ".started").write_text(str(os.getppid()))
        deadline = time.monotonic() + 60
        while not pathlib.Path(hold + ".release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert pathlib.Path("SMOKE").read_text().strip() == "ok"
'''
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_IDENTITY, "GIT_CONFIG_NOSYSTEM": "1"}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()


def deploy_files(source: Path) -> list[str]:
    """The tracked and untracked (not ignored) files of source, minus the test suite."""
    listed = git(source, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return sorted(name for name in listed if name and name.split("/")[0] not in SKIP_TOP and (source / name).is_file())


class ScratchDeployment:
    """remote.git (bare), deploy/ (the checkout that serves), dev/ (pushes commits), config.yaml, run/."""

    def __init__(self, root: Path, python: str = sys.executable, workers: int = 1) -> None:
        self.root, self.python = root, python
        self.remote, self.deploy, self.dev = root / "remote.git", root / "deploy", root / "dev"
        self.run_dir = root / "run"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.test_command = f"{python} -m pytest -q -p no:cacheprovider tests_smoke/test_smoke.py"
        self.config_path = self.write_config(root / "config.yaml", {})
        self.env = {**os.environ, "HELLO_CONFIG": str(self.config_path)}
        self.env.pop("SMOKE_HOLD", None)
        self.workers = workers
        self.seed()

    def write_config(self, path: Path, overrides: dict[str, Any]) -> Path:
        """A config for this deployment: this checkout's config.yaml, a free port, run/ here, no Pushgateway."""
        system = yaml.safe_load((REPO / "config.yaml").read_text())["system"]
        system["run_dir"] = str(self.run_dir)
        system["server"].update({"host": "127.0.0.1", "port": self.port, "workers": 1})
        system["monitoring"]["pushgateway"]["url"] = None
        system["update"].update({"test_command": self.test_command, "deploy": "local", "interval": None})
        system["update"]["watch"] = 0  # no watch after the deploy unless a test sets one (tests/test_update_watch.py)
        system["backup"].update({"source": str(self.deploy), "destination": str(self.root / "backups")})
        for key, value in overrides.items():  # a section's keys are merged, a top-level key replaced
            if isinstance(value, dict):
                system[key].update(value)
            else:
                system[key] = value
        path.write_text(yaml.safe_dump({"system": system}, sort_keys=False))
        return path

    def seed(self) -> None:
        work = self.root / "seed"
        for name in deploy_files(REPO):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
        (work / "tests_smoke").mkdir()
        (work / "tests_smoke" / "test_smoke.py").write_text(SMOKE_TEST)
        (work / "SMOKE").write_text("ok\n")
        git(work, "init", "-q", "-b", "main")
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", "seed from the working tree")
        git(self.root, "init", "-q", "--bare", "-b", "main", str(self.remote))
        git(work, "push", "-q", str(self.remote), "main")
        shutil.rmtree(work)
        git(self.root, "clone", "-q", str(self.remote), str(self.deploy))
        git(self.root, "clone", "-q", str(self.remote), str(self.dev))

    # the server

    def server(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.python, "scripts/service.py", command, "--workers", str(self.workers)]
            if command == "start"
            else [self.python, "scripts/service.py", command],
            cwd=self.deploy,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"service.py {command}: {result.stdout}{result.stderr}")
        return result

    def running_pid(self) -> int | None:
        """The server's PID (its pidfile), if it runs."""
        return RunFiles(self.run_dir).running_pid()

    def pid(self) -> int:
        pid = self.running_pid()
        if pid is None:
            raise RuntimeError(f"no server runs for {RunFiles(self.run_dir).pidfile}")
        return pid

    def served(self) -> str:
        status, body = http_get(f"{self.url}/version", timeout=5)
        if status != 200:
            raise RuntimeError(f"GET {self.url}/version answered {status}")
        return json.loads(body)["commit"]

    # git

    def head(self) -> str:
        return git(self.deploy, "rev-parse", "HEAD")

    def remote_tip(self) -> str:
        return git(self.remote, "rev-parse", "main")

    def commit(self, message: str, files: dict[str, str]) -> str:
        """Commit files (path -> text) on top of the remote's tip, push, return the commit."""
        git(self.dev, "fetch", "-q", "origin")
        git(self.dev, "reset", "-q", "--hard", "origin/main")
        for name, text in files.items():
            (self.dev / name).write_text(text)
        git(self.dev, "add", "-A")
        git(self.dev, "commit", "-q", "-m", message)
        git(self.dev, "push", "-q", "--force", "origin", "HEAD:main")
        return git(self.dev, "rev-parse", "HEAD")

    def harmless_commit(self, label: str) -> str:
        return self.commit(f"harmless change {label}", {"CHANGES": f"{label}\n"})  # a file nothing reads

    # the protocol

    def update(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.python, "update_protocol.py", *args],
            cwd=self.deploy,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )


class Load:
    """Two clients hitting / until stopped: one keep-alive connection, one connection per request.

    A keep-alive connection the server closes between requests is reopened and the request retried, as
    HTTP clients do for idempotent requests (counted in `reconnects`); any other error, a status other
    than 200 or a wrong body is a failure.
    """

    PAUSE = 0.002  # seconds between one client's requests

    def __init__(self, port: int, limit: int = 20000) -> None:
        self.port, self.limit = port, limit
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "failed": 0, "wrong_body": 0, "reconnects": 0}
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self.keep_alive, daemon=True),
            threading.Thread(target=self.per_request, daemon=True),
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def count(self, key: str, error: str = "") -> None:
        with self.lock:
            self.counts[key] += 1
            if error and len(self.errors) < 20:
                self.errors.append(error)

    def check(self, status: int, body: bytes) -> None:
        if status != 200:
            self.count("failed", f"status {status}")
        elif body != b"Hello, World!\n":
            self.count("wrong_body", f"body {body[:40]!r}")
        else:
            self.count("ok")

    def running(self, sent: int) -> bool:
        return not self.stop_event.is_set() and sent < self.limit

    def keep_alive(self) -> None:
        connection: http.client.HTTPConnection | None = None
        used, sent = 0, 0
        while self.running(sent):
            sent += 1
            for attempt in (1, 2):
                if connection is None:
                    connection, used = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10), 0
                try:
                    connection.request("GET", "/")
                    response = connection.getresponse()
                    body = response.read()
                    used += 1
                    if response.will_close:
                        connection.close()
                        connection = None
                    self.check(response.status, body)
                    break
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                    connection.close()
                    connection = None
                    if used and attempt == 1:  # closed between requests: reopen and retry once
                        self.count("reconnects")
                        continue
                    self.count("failed", f"keep-alive: {exc!r}")
                    break
                except OSError as exc:
                    connection.close()
                    connection = None
                    self.count("failed", f"keep-alive: {exc!r}")
                    break
            time.sleep(self.PAUSE)
        if connection is not None:
            connection.close()

    def per_request(self) -> None:
        sent = 0
        while self.running(sent):
            sent += 1
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                connection.request("GET", "/", headers={"Connection": "close"})
                response = connection.getresponse()
                self.check(response.status, response.read())
            except OSError as exc:
                self.count("failed", f"per-request: {exc!r}")
            finally:
                connection.close()
            time.sleep(self.PAUSE)


# --- the benchmark --------------------------------------------------------------------------------


def step_seconds(output: str) -> dict[str, float]:
    """The JSON summary's step durations (update_protocol.py --json prints it last on stdout)."""
    return json.loads(output.strip().splitlines()[-1])["steps"]


def bench(rounds: int, workers: int, load_on: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-update-") as temp:
        site = ScratchDeployment(Path(temp), workers=workers)
        pid: int | None = None
        noop: list[float] = []
        full: list[float] = []
        after_tests: list[float] = []
        verified: list[float] = []
        tests: list[float] = []
        backups: list[float] = []
        try:
            site.server("start")
            pid = site.pid()
            with Load(site.port, limit=100000 if load_on else 0) as load:
                for index in range(rounds):
                    started = time.monotonic()
                    result = site.update("--json")
                    noop.append(time.monotonic() - started)
                    if result.returncode != 0:
                        raise RuntimeError(f"no-op update failed: {result.stdout}{result.stderr}")
                    commit = site.harmless_commit(f"round {index}")
                    started = time.monotonic()
                    result = site.update("--json")
                    full.append(time.monotonic() - started)
                    if result.returncode != 0 or site.served() != commit:
                        raise RuntimeError(f"update failed: {result.stdout}{result.stderr}")
                    steps = step_seconds(result.stdout)
                    tests.append(steps["test"])
                    backups.append(steps.get("backup", 0.0))
                    after_tests.append(steps["checkout"] + steps["build"] + steps["deploy"])
                    verified.append(after_tests[-1] + steps["verify"])
            counts = dict(load.counts)
        finally:
            if pid is None:
                pid = site.running_pid()  # a start that failed after the server came up
            site.server("stop", check=False)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
    return {
        "rounds": rounds,
        "workers": workers,
        "noop_seconds": summary(noop),
        "full_update_seconds": summary(full),
        "test_step_seconds": summary(tests),
        "backup_step_seconds": summary(backups),
        "tests_passed_to_serving_seconds": summary(after_tests),
        "tests_passed_to_verified_seconds": summary(verified),
        "load": counts,
        "goals": {"noop_under_2s": max(noop) < 2.0, "serving_within_5s_of_tests": max(after_tests) < 5.0},
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time a no-op and a full update on a scratch deployment.")
    parser.add_argument("--rounds", type=int, default=5, help="updates of each kind (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="server workers (default: %(default)s)")
    parser.add_argument("--no-load", action="store_true", help="no clients on / during the updates")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        print("--rounds: expected at least 1", file=sys.stderr)
        return 2
    try:
        figures = bench(args.rounds, args.workers, load_on=not args.no_load)
    except (RuntimeError, OSError) as exc:
        print(f"bench-update failed: {exc}", file=sys.stderr)
        return 1
    load = figures["load"]
    status = 1 if load["failed"] or load["wrong_body"] else 0  # a request lost during an update: a regression
    if args.json:
        print(json.dumps(figures, indent=2))
        return status
    load_text = "no load" if args.no_load else "a keep-alive and a connection-per-request client on / throughout"
    print(f"update benchmark: {args.rounds} rounds, {args.workers} worker(s), {load_text}")
    for key, goal in (
        ("noop_seconds", "goal < 2 s"),
        ("full_update_seconds", ""),
        ("test_step_seconds", ""),
        ("backup_step_seconds", "(system.update.backup_first)"),
        ("tests_passed_to_serving_seconds", "goal < 5 s"),
        ("tests_passed_to_verified_seconds", "(+ verify)"),
    ):
        values = figures[key]
        print(f"  {key:<32} median {values['median']:6.3f}  min {values['min']:6.3f}  max {values['max']:6.3f}  {goal}")
    print(
        f"  requests during the run: {load['ok']} ok, {load['failed']} failed, {load['wrong_body']} wrong body, "
        f"{load['reconnects']} keep-alive reconnects"
    )
    met = all(figures["goals"].values()) and load["failed"] == 0 and load["wrong_body"] == 0
    print("  goals met" if met else f"  goals NOT met: {figures['goals']}")
    return status


if __name__ == "__main__":
    sys.exit(main())
