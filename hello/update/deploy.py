"""How an update puts a tested commit into service: one class per system.update.deploy, chosen once.

Every deploy mode has the same methods, so the step machine (hello/update/updater.py) never asks which one runs:

    serving_commit()                the commit that serves now: the rollback point
    plan(old, new)                  (build, deploy): what those steps would run, for --dry-run
    build(old, new)                 (outcome, detail) of the build step
    deploy(commit)                  put commit into service; the step's detail
    verify(commit, validate)        /version is commit, /readyz 200, then validate(a config file naming the service)
    restore_dependencies(new, old)  after the checkout went back from new to old: undo what the build installed
    rollback(commit, validate)      after the checkout went back to commit: what serves is commit again, verified

local (LocalDeploy) and compose (ComposeDeploy) are here, kubernetes in hello/update/deploy_kubernetes.py. Probe is the
HTTP probe of /version and /readyz all of them verify with, and run_tool runs their docker or kubectl. A failure
raises DeployError with one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from hello.base.config import served_url
from hello.base.git import short
from hello.base.http_client import http_get
from hello.update.child_scripts import ScriptFailed, run_script
from hello.update.release import ReleaseError, changed_requirements, live_venv, pip_install

SERVICE = "hello-world"  # the compose service
# When the image's HEALTHCHECK has had its first verdict: 30 s interval + 5 s timeout (Dockerfile), with margin.
HEALTH_VERDICT = 45.0
VERSION_WAIT = 10.0  # after a deploy, how long /version may take to show the new commit
COMMIT_RE = re.compile(r"[0-9a-f]{40}")

Validate = Callable[[Path], None]  # validation_test.py --only service against a config file


class DeployError(Exception):
    """A deploy step failed; str() is the reason, one line."""


class Deployment(Protocol):
    mode: str  # its system.update.deploy value
    watched: bool  # the watch after a deploy can read its new code's /metrics (hello/update/watch.py)

    def serving_commit(self) -> str: ...
    def plan(self, old: str, new: str) -> tuple[str, str]: ...
    def build(self, old: str, new: str) -> tuple[str, str]: ...
    def deploy(self, commit: str) -> str: ...
    def verify(self, commit: str, validate: Validate) -> str: ...
    def restore_dependencies(self, new: str, old: str) -> str: ...
    def rollback(self, commit: str, validate: Validate) -> str: ...


def run_tool(argv: list[str], cwd: Path, timeout: float, mode: str, env: Mapping[str, str] | None = None) -> str:
    """A deploy tool's stdout; DeployError when it is missing (system.update.deploy is mode), hangs or fails."""
    try:
        result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise DeployError(f"{argv[0]} is not installed (system.update.deploy is {mode})") from None
    except subprocess.TimeoutExpired:
        raise DeployError(f"`{' '.join(argv)}` did not finish within {timeout:g}s") from None
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise DeployError(f"`{' '.join(argv)}` failed: {lines[-1] if lines else f'exit {result.returncode}'}")
    return result.stdout


class Probe:
    """/version and /readyz of the service at url, over HTTP; DeployError says what is wrong."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout

    def version(self) -> str:
        """The commit /version reports; DeployError when the service does not answer or cannot tell."""
        try:
            status, body = http_get(f"{self.url}/version", self.timeout)
            commit = json.loads(body).get("commit", "") if status == 200 else ""
        except (OSError, ValueError, AttributeError) as exc:
            raise DeployError(self.unanswered(exc)) from None
        if status != 200 or not (isinstance(commit, str) and COMMIT_RE.fullmatch(commit)):
            raise DeployError(self.not_a_commit(status, commit))
        return commit

    def wait_for(self, commit: str, wait: float, interval: float) -> None:
        """Until /version reports commit (wait seconds at most), then /readyz must be 200."""
        deadline = time.monotonic() + wait
        while True:
            try:
                now, why = self.version(), ""
            except DeployError as exc:
                now, why = "", str(exc)
            if now == commit:
                break
            if time.monotonic() > deadline:
                raise DeployError(why or self.other_commit(now, commit))
            time.sleep(interval)
        try:
            status, _ = http_get(f"{self.url}/readyz", self.timeout)
        except OSError as exc:
            raise DeployError(f"{self.where()}/readyz does not answer: {exc}") from None
        if status != 200:
            raise DeployError(f"{self.where()}/readyz answered {status}")

    # what the messages call it

    def where(self) -> str:
        return self.url

    def unanswered(self, exc: Exception) -> str:
        return f"the server at {self.url} does not answer /version ({exc})"

    def not_a_commit(self, status: int, commit: object) -> str:
        if status != 200:
            return f"{self.url}/version answered {status}"
        return f"{self.url}/version reports commit {commit!r}, not a git commit: no rollback point"

    def other_commit(self, now: str, commit: str) -> str:
        return f"{self.url}/version reports {short(now)}, expected {short(commit)}"


class ServedHere:
    """What local and compose share: the service answers at system.server, the checkout's config names it."""

    mode = ""
    # One server at system.server (the local workers, or compose's one container: it publishes the port), whose
    # supervisor sums its workers' counts: its /metrics are the new code's whole traffic.
    watched = True

    def __init__(self, config: dict[str, Any], repo: Path) -> None:
        self.config, self.repo = config, repo
        self.probe = Probe(served_url(config), config["validation"]["timeout"])
        self.start_limit = config["server"]["reload_timeout"] + 60  # how long new code may take to serve

    def serving_commit(self) -> str:
        return self.probe.version()

    def verify(self, commit: str, validate: Validate) -> str:
        self.probe.wait_for(commit, VERSION_WAIT, 0.1)
        validate(Path(self.config["config_file"]))
        return f"serving {short(commit)}, /readyz 200, validation_test.py --only service passed"

    def restore_dependencies(self, new: str, old: str) -> str:
        return ""


class LocalDeploy(ServedHere):
    """`system.update.deploy: local`: the live venv and `python -m scripts.service reload` of the checkout."""

    mode = "local"

    def plan(self, old: str, new: str) -> tuple[str, str]:
        changed = changed_requirements(self.repo, old, new)
        build = f"pip install -r {', '.join(changed)} (live venv)" if changed else "nothing: requirements unchanged"
        return build, "python -m scripts.service reload"

    def build(self, old: str, new: str) -> tuple[str, str]:
        changed = changed_requirements(self.repo, old, new)
        if not changed:
            return "skipped", "requirements unchanged"
        self.pip_install(changed)
        return "ok", f"installed {', '.join(changed)} into the live venv (tested in the release)"

    def pip_install(self, names: list[str]) -> None:
        venv = live_venv()
        if venv is None:
            raise DeployError(
                f"{sys.executable} is not a virtualenv: refusing to pip install into it (use make update)"
            )
        try:
            pip_install(venv, self.repo, names)
        except ReleaseError as exc:
            raise DeployError(str(exc)) from None

    def deploy(self, commit: str) -> str:
        # scripts.service, not the new hello_world.py: it reports why new code that cannot start was refused.
        config_file = self.config["config_file"]
        try:
            said = run_script(self.repo, config_file, "scripts/service.py", "reload", timeout=self.start_limit)
        except ScriptFailed as exc:
            raise DeployError(str(exc)) from None
        return said or "reloaded"

    def restore_dependencies(self, new: str, old: str) -> str:
        changed = changed_requirements(self.repo, new, old)
        if not changed:
            return ""
        self.pip_install(changed)  # the build may have installed the new pins
        return f"reinstalled {', '.join(changed)}"

    def rollback(self, commit: str, validate: Validate) -> str:
        try:
            still = self.serving_commit() == commit
        except DeployError:
            still = False
        if still:
            done = "the old code never stopped serving"
        else:
            self.deploy(commit)
            done = "redeployed"
        self.verify(commit, validate)
        return f"{done}; verified"


class ComposeDeploy(ServedHere):
    """`system.update.deploy: compose`: the hello-world service of docker-compose.yml, an image per commit.

    Every compose command runs with HELLO_COMMIT=<commit> in its environment, which docker-compose.yml
    interpolates into the image tag (hello-world:${HELLO_COMMIT:-latest}) and the COMMIT build argument;
    --build-arg COMMIT=<commit> says it again for a file that does not.
    """

    mode = "compose"

    def docker(self, *args: str, commit: str = "", timeout: float = 600.0) -> str:
        env = {**os.environ, "HELLO_COMMIT": commit} if commit else None
        return run_tool(["docker", *args], self.repo, timeout, self.mode, env)

    def plan(self, old: str, new: str) -> tuple[str, str]:
        build = f"HELLO_COMMIT={short(new)} docker compose build --build-arg COMMIT=... {SERVICE}"
        deploy = f"HELLO_COMMIT={short(new)} docker compose up -d --no-deps {SERVICE}; wait until healthy"
        return build, deploy

    def build(self, old: str, new: str) -> tuple[str, str]:
        return "ok", f"{self.build_image(new)} built from {short(new)}"

    def image(self, commit: str) -> tuple[str, str]:
        """The image compose runs for commit, and the commit's own tag of it (the same when the file tags so)."""
        lines = self.docker("compose", "config", "--images", SERVICE, commit=commit, timeout=60).split()
        if not lines:
            raise DeployError(f"docker compose config names no image for {SERVICE}")
        image = lines[0]
        name, _, tag = image.rpartition(":")
        repository = name if name and "/" not in tag else image
        return image, f"{repository}:{commit}"

    def build_image(self, commit: str) -> str:
        image, tagged = self.image(commit)
        self.docker("compose", "build", "--build-arg", f"COMMIT={commit}", SERVICE, commit=commit)
        if tagged != image:
            self.docker("tag", image, tagged)  # kept for a fast rollback
        return image

    def restore_image(self, commit: str) -> str:
        """Make the image compose runs for commit that commit's build again: retag it, or rebuild it."""
        image, tagged = self.image(commit)
        try:
            self.docker("image", "inspect", tagged, timeout=60)
        except DeployError:
            self.build_image(commit)
            return f"{image} rebuilt from {short(commit)}"
        if tagged != image:
            self.docker("tag", tagged, image)
            return f"{image} retagged from {tagged}"
        return f"{image} still there"

    def deploy(self, commit: str) -> str:
        try:
            self.docker("compose", "up", "-d", "--no-deps", SERVICE, commit=commit)
        except DeployError:
            # A release that cannot start leaves its container in a restart loop, "running" for an instant at a
            # time, and the engine then refuses to remove it for the recreate: stop it, and recreate once more.
            self.docker("compose", "stop", SERVICE, commit=commit, timeout=60)
            self.docker("compose", "up", "-d", "--no-deps", SERVICE, commit=commit)
        # The image's HEALTHCHECK runs its first check one interval (30 s) after the start.
        started = time.monotonic()
        deadline = started + self.start_limit
        state = "unknown"
        while time.monotonic() < deadline:
            state = self.health(commit)
            if state in ("healthy", "running"):
                return f"HELLO_COMMIT={short(commit)} docker compose up -d --no-deps {SERVICE}: healthy"
            if state == "starting" and time.monotonic() - started > HEALTH_VERDICT and self.serves(commit):
                # No verdict when one was due: the engine runs no health checks (podman schedules them with
                # systemd timers; on a host without systemd none ever runs). /version and /readyz say it is up.
                return f"HELLO_COMMIT={short(commit)} docker compose up -d --no-deps {SERVICE}: serving, /readyz 200"
            if state in ("unhealthy", "exited", "dead"):
                break
            time.sleep(0.5)
        raise DeployError(f"{SERVICE} is {state} after docker compose up (waited up to {self.start_limit:g}s)")

    def serves(self, commit: str) -> bool:
        """/version is commit and /readyz is 200 now."""
        try:
            self.probe.wait_for(commit, 0, 0)
        except DeployError:
            return False
        return True

    def health(self, commit: str) -> str:
        """healthy/unhealthy/starting from the container's health check; its state when it has none."""
        text = self.docker("compose", "ps", "--all", "--format", "json", SERVICE, commit=commit, timeout=60).strip()
        try:
            data = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]
        except ValueError:
            raise DeployError(f"docker compose ps printed no JSON: {text[:100]!r}") from None
        if not data:
            return "missing"
        entry = data[0]
        return str(entry.get("Health") or entry.get("State") or "unknown").lower()

    def rollback(self, commit: str, validate: Validate) -> str:
        restored = self.restore_image(commit)
        self.deploy(commit)
        self.verify(commit, validate)
        return f"{restored}; redeployed; verified"
