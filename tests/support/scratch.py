"""A scratch deployment of this working tree, and a load on it: what tests/test_update*.py and
scripts/bench_update.py run the update protocol against. No pytest here (the benchmark imports it).

    site = ScratchDeployment(root)   # root/remote.git (bare, seeded from this working tree), root/deploy (the
                                     # checkout that serves, on a free port), root/dev (pushes commits), root/run
    site.server("start"); site.harmless_commit("x"); site.update("--json"); site.server("stop")
    with Load(site.port) as load: ...  # a keep-alive and a connection-per-request client on /; load.counts
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from hello.base.checkout import CHECKOUT
from hello.base.config import RunFiles
from hello.base.git import git_out
from hello.base.http_client import http_get
from hello.base.proc import free_port

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
GIT_IDENTITY = {  # the author of the commits tests and benchmarks make
    "GIT_AUTHOR_NAME": "scratch",
    "GIT_AUTHOR_EMAIL": "scratch@example.invalid",
    "GIT_COMMITTER_NAME": "scratch",
    "GIT_COMMITTER_EMAIL": "scratch@example.invalid",
}


def git(cwd: Path, *args: str) -> str:
    """hello.base.git's git_out with a scratch commit identity and no system git config; GitError when it fails."""
    return git_out(cwd, *args, timeout=60, env={**GIT_IDENTITY, "GIT_CONFIG_NOSYSTEM": "1"})


def deploy_files(source: Path) -> list[str]:
    """The tracked and untracked (not ignored) files of source, minus the test suite."""
    listed = git(source, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return sorted(name for name in listed if name and name.split("/")[0] not in SKIP_TOP and (source / name).is_file())


class ScratchDeployment:
    """remote.git (bare), deploy/ (the checkout that serves), dev/ (pushes commits), config.yaml, run/ and
    backups/ (state_inside: deploy/run and deploy/backups, git-ignored there, as the shipped config.yaml has them)."""

    def __init__(self, root: Path, python: str = sys.executable, workers: int = 1, state_inside: bool = False) -> None:
        self.root, self.python = root, python
        self.remote, self.deploy, self.dev = root / "remote.git", root / "deploy", root / "dev"
        state = self.deploy if state_inside else root
        self.run_dir, self.backups = state / "run", state / "backups"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # One process, no plugins the smoke test does not use: the repo's `-n 4` would start four workers
        # (about 8 s of CPU) for each of the suite's many updates.
        unused_plugins = "-n 0 -p no:anyio -p no:hypothesispytest"
        self.test_command = f"{python} -m pytest -q -p no:cacheprovider {unused_plugins} tests_smoke/test_smoke.py"
        self.config_path = self.write_config(root / "config.yaml", {})
        self.env = {**os.environ, "HELLO_CONFIG": str(self.config_path)}
        self.env.pop("SMOKE_HOLD", None)
        self.workers = workers
        self.seed()

    def write_config(self, path: Path, overrides: dict[str, Any]) -> Path:
        """A config for this deployment: this checkout's config.yaml, a free port, run/ here, no Pushgateway."""
        system = yaml.safe_load((CHECKOUT / "config.yaml").read_text())["system"]
        system["run_dir"] = str(self.run_dir)
        system["server"].update({"host": "127.0.0.1", "port": self.port, "workers": 1})
        system["monitoring"]["pushgateway"]["url"] = None
        system["update"].update({"test_command": self.test_command, "deploy": "local", "interval": None})
        system["update"]["watch"] = 0  # no watch after the deploy unless a test sets one (tests/test_update_watch.py)
        # The test command is this suite's python, which another user may not be able to run (pyenv under /root):
        # the tests run as root here; tests/test_update_trust.py runs them as nobody.
        system["update"]["test_user"] = None
        system["backup"].update({"source": str(self.deploy), "destination": str(self.backups)})
        for key, value in overrides.items():  # a section's keys are merged, a top-level key replaced
            if isinstance(value, dict):
                system[key].update(value)
            else:
                system[key] = value
        path.write_text(yaml.safe_dump({"system": system}, sort_keys=False))
        return path

    def seed(self) -> None:
        work = self.root / "seed"
        for name in deploy_files(CHECKOUT):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(CHECKOUT / name, work / name)
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
