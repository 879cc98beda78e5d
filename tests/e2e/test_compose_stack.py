"""The compose stack for real: `make up` with the real Compose v2 binary against podman (issue 21, part 3).

The stack runs from a scratch deployment of this working tree (tests/support/scratch.py): the app image built
from the Dockerfile, the monitoring services from stand-ins of Debian's packages tagged with the compose file's
image names. Grafana has no image obtainable here: a compose override puts it in a profile nobody enables.
The override also publishes every port on a free one, so the stack runs beside anything on the default ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hello.base.checkout import CHECKOUT
from hello.base.http_client import http_request
from hello.base.proc import TimedOut, free_port, terminate, wait_until
from hello.monitoring.webhook_sink import WebhookSink
from hello.update.release import MAKE_STAMPS
from tests.support import containers
from tests.support.scratch import Load, ScratchDeployment, git
from tests.support.tools import IN_CI

APP = "hello-world"
LEFT_OUT = "grafana"  # no image obtainable here
COMPOSE = yaml.safe_load((CHECKOUT / "docker-compose.yml").read_text())
SERVICES = sorted(set(COMPOSE["services"]) - {LEFT_OUT})
CONFIG_URLS = {"prometheus": "prometheus", "pushgateway": "pushgateway", "alertmanager": "alertmanager"}
CONFIG_URLS["node-exporter"] = "node_exporter"


@dataclass
class Stack:
    site: ScratchDeployment
    env: dict[str, str]  # what make and the update protocol run with
    ports: dict[str, int]  # service -> the host port it is published on
    project: str
    sink: WebhookSink

    def make(self, target: str, timeout: float = 600) -> subprocess.CompletedProcess:
        # COMPOSE: the standalone binary, as README says for a host without docker (podman's API socket).
        compose = f"COMPOSE={containers.compose_binary()}"
        return subprocess.run(
            ["make", "-C", str(self.site.deploy), target, compose],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def running(self) -> list[str]:
        """Names of this project's containers that run."""
        label = f"label=com.docker.compose.project={self.project}"
        out = containers.podman("ps", "--filter", label, "--format", "{{.Names}}")
        return sorted(out.split())

    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"


def share_venv(checkout: Path) -> None:
    """The checkout uses this suite's venv (make sees it as up to date): no install from the network."""
    venv = Path(sys.prefix)
    (checkout / ".venv").symlink_to(venv, target_is_directory=True)
    for name, stamp in MAKE_STAMPS.items():
        when = (venv / stamp).stat().st_mtime
        os.utime(checkout / name, (when, when))


def override_file(path: Path, ports: dict[str, int]) -> Path:
    """Every published port on a free one of 127.0.0.1 (`!override` replaces the list); Grafana left out."""
    lines = ["services:"]
    for service, port in ports.items():
        inner = COMPOSE["services"][service]["ports"][0].rsplit(":", 1)[1]
        lines += [f"  {service}:", f'    ports: !override ["127.0.0.1:{port}:{inner}"]']
    lines += [f"  {LEFT_OUT}:", f"    profiles: [{LEFT_OUT}]  # no image obtainable here: never started"]
    path.write_text("\n".join(lines) + "\n")
    return path


def stack_config(site: ScratchDeployment, ports: dict[str, int]) -> None:
    """The scratch deployment's config: compose deploys, run/ in the checkout (the compose file mounts ./run)."""
    config = yaml.safe_load(site.config_path.read_text())
    system = config["system"]
    system["run_dir"] = str(site.deploy / "run")
    system["update"]["deploy"] = "compose"
    for service, key in CONFIG_URLS.items():
        system["monitoring"][key]["url"] = f"http://127.0.0.1:{ports[service]}"
    system["monitoring"]["alertmanager"]["timing"]["critical_wait"] = "1s"
    site.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture
def stack(podman_host: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("compose")
    images = {service: COMPOSE["services"][service]["image"] for service in containers.MONITORING}
    with containers.cache_lock():
        containers.python_standin()
        containers.monitoring_standins(images)
    (root / "site").mkdir()
    site = ScratchDeployment(root / "site")
    share_venv(site.deploy)
    ports = {service: free_port() for service in SERVICES if service != APP} | {APP: site.port}
    stack_config(site, ports)
    override = override_file(root / "e2e.override.yml", ports)
    sink = WebhookSink(host="0.0.0.0")  # containers reach the host as host.containers.internal
    project = f"hello-e2e-{site.port}"
    with containers.api_service(root / "engine") as engine:
        env = {
            **engine,
            "HELLO_CONFIG": str(site.config_path),
            "COMPOSE_FILE": f"{site.deploy / 'docker-compose.yml'}:{override}",
            "COMPOSE_PROJECT_NAME": project,
            "GF_ADMIN_PASSWORD": "unused: grafana is left out",
            "HELLO_ALERT_WEBHOOK_URL": f"http://host.containers.internal:{sink.server.server_address[1]}/alerts",
        }
        stack = Stack(site, env, ports, project, sink)
        site.env = {**site.env, **env}
        # make validate wants a backup scheduler: the checkout's own loop (cron is not installed here).
        scheduler = subprocess.Popen(
            [sys.executable, "backup_script.py", "schedule"],
            cwd=site.deploy,
            env=site.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            yield stack
        finally:
            stack.make("down", timeout=120)
            label = f"label=com.docker.compose.project={project}"
            for kind in ("container", "volume", "network"):
                ids = containers.podman(kind, "ls", "--quiet", "--filter", label, check=False).split()
                if ids:
                    containers.podman(kind, "rm", "--force", *ids, check=False, timeout=120)
            terminate(scheduler.pid, 10)
            scheduler.wait(timeout=10)
            # The app images of the scratch commits (the layers below them stay cached with the base images).
            commits = git(site.remote, "rev-list", "main").split()
            containers.podman("rmi", *(f"hello-world:{commit}" for commit in commits), check=False, timeout=120)
            sink.close()


def make_up(stack: Stack) -> None:
    result = stack.make("up")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    wait_until(lambda: answers(stack.url(APP) + "/readyz"), 60, "the app's /readyz after make up")
    wait_until(lambda: answers(stack.url("prometheus") + "/-/ready"), 60, "Prometheus ready after make up")


def answers(url: str) -> bool:
    try:
        return http_request(url, timeout=2)[0] == 200
    except OSError:
        return False


def prometheus(stack: Stack, path: str) -> dict:
    status, _, body = http_request(stack.url("prometheus") + path)
    assert status == 200, (path, status, body[:200])
    return json.loads(body)["data"]


def targets_up(stack: Stack) -> dict[str, str]:
    return {t["labels"]["job"]: t["health"] for t in prometheus(stack, "/api/v1/targets")["activeTargets"]}


def check_prometheus_scrapes_the_app(stack: Stack) -> None:
    assert stack.running() == sorted(stack.container(service) for service in SERVICES)
    status, _, body = http_request(stack.url(APP) + "/version")
    assert status == 200 and json.loads(body)["commit"] == stack.site.head(), body
    wait_until(lambda: set(targets_up(stack).values()) == {"up"}, 90, "every target of the stack's Prometheus up")
    assert targets_up(stack)[APP] == "up"
    rules = {rule["name"] for group in prometheus(stack, "/api/v1/rules")["groups"] for rule in group["rules"]}
    assert {"HelloWorldDown", "HelloWorldBackupStale", "Watchdog"} <= rules, rules


def check_make_validate_passes(stack: Stack) -> None:
    backup = stack.make("backup", timeout=120)
    assert backup.returncode == 0, backup.stdout[-1500:] + backup.stderr[-1500:]
    last: list[subprocess.CompletedProcess] = []

    def validate_passes() -> bool:
        for _ in range(20):  # traffic for the dashboard's request-rate panels
            http_request(stack.url(APP) + "/")
        last[:] = [stack.make("validate", timeout=120)]
        return last[0].returncode == 0

    # The dashboard's rates need two scrapes (15 s apart) of the traffic and of the pushed backup metrics.
    try:
        wait_until(validate_passes, 120, "make validate passing against the stack", interval=5)
    except (AssertionError, TimedOut):
        pytest.fail(f"make validate failed for 120 s; its last run:\n{last[0].stdout[-4000:]}{last[0].stderr[-1000:]}")


def check_an_alert_reaches_the_webhook(stack: Stack) -> None:
    """The app's container stopped: the stack's Prometheus fires HelloWorldDown, Alertmanager posts it."""
    containers.podman("stop", "--time", "15", stack.container(APP), timeout=60)
    try:
        wait_until(
            lambda: stack.sink.alerts("/alerts", "HelloWorldDown", "firing"),
            180,
            "HelloWorldDown at the webhook (1 m `for:`, 15 s scrapes)",
            interval=1,
        )
    finally:
        containers.podman("start", stack.container(APP), timeout=60)
        wait_until(lambda: answers(stack.url(APP) + "/readyz"), 30, "the app back")


def check_compose_deploys_and_rolls_back(stack: Stack) -> None:
    """`deploy: compose` of the update protocol against the real engine, under load on the published port."""
    site = stack.site
    good = site.harmless_commit("e2e")
    with Load(site.port) as load:
        result = site.update()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert site.served() == good
    print(f"compose deploy under load: {load.counts}")  # the figure README states (-s shows it)
    # No systemd here, so podman never runs the health check: the deploy saw /version and /readyz instead.
    assert "serving, /readyz 200" in result.stdout + result.stderr or "healthy" in result.stdout, result.stdout
    assert load.counts["ok"] > 0 and load.counts["wrong_body"] == 0, load.counts
    # The recreate's gap: new connections refused (nothing listens), or reset (accepted by the kernel into the old
    # listener's backlog as it closed); never a request answered wrongly or cut on a keep-alive connection.
    gap = ("ConnectionRefusedError", "per-request: ConnectionResetError")
    assert all(any(kind in error for kind in gap) for error in load.errors), load.errors

    text = (site.deploy / "hello_world.py").read_text()
    bad = site.commit("cannot start", {"hello_world.py": 'raise SystemExit("broken on purpose")\n' + text})
    result = site.update()
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert "rolled back" in (result.stdout + result.stderr).lower(), result.stdout[-3000:]
    assert site.served() == good != bad
    assert stack.running() == sorted(stack.container(service) for service in SERVICES)


def test_the_compose_stack_for_real(stack: Stack) -> None:
    """One stack, its steps in order (separate tests would each get a stack on their own xdist worker)."""
    make_up(stack)
    check_prometheus_scrapes_the_app(stack)
    check_make_validate_passes(stack)
    check_an_alert_reaches_the_webhook(stack)
    if shutil.which("docker"):  # the update protocol runs `docker compose`, `docker tag` (its plugin: ours)
        check_compose_deploys_and_rolls_back(stack)
    elif IN_CI:
        pytest.fail("CI must have the docker CLI: the update protocol's compose mode runs `docker compose`")
    down = stack.make("down", timeout=120)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    assert stack.running() == []
    if not shutil.which("docker"):
        pytest.skip("no docker CLI: the update protocol's compose mode (`docker compose`) was not run")
