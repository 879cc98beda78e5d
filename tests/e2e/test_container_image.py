"""The project's Dockerfile built and run for real under podman (issue 21, part 2).

The base image its FROM names is a local stand-in from Debian's Python 3.11.2 (tests/e2e/images/python).
The container runs as the Kubernetes Deployment runs it: read-only root filesystem with a writable run/ and /tmp.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hello.base.checkout import CHECKOUT
from hello.base.git import head_commit
from hello.base.http_client import http_request
from hello.base.proc import TimedOut, free_port, wait_until
from tests.support import containers
from tests.support.load import LoadClient, count_progress

NON_ROOT_UID = "10001"  # the Dockerfile's `hello` user


@pytest.fixture(scope="session")  # one build per xdist worker (cached layers after the first)
def image(podman_host: None) -> str:
    with containers.cache_lock():
        return containers.app_image(head_commit(CHECKOUT) or "unknown")


@pytest.fixture
def container(image: str) -> Iterator[tuple[str, int]]:
    """The image running read-only, port 80 on a free port.

    As the Deployment: run/ and /tmp on emptyDirs of the pod's fsGroup 10001 (here tmpfs chowned to the user: `U`;
    podman 4.3 ignores a tmpfs `mode`).
    """
    port = free_port()
    container_id = containers.podman(
        "run", "--detach", "--read-only",
        "--tmpfs", "/app/run:rw,size=64m,U",
        "--tmpfs", "/tmp:rw,size=16m,U",
        "--sysctl", "net.ipv4.ip_unprivileged_port_start=0",  # as docker-compose.yml sets it
        "--publish", f"127.0.0.1:{port}:80",
        image,
    ).strip()  # fmt: skip
    try:
        try:
            wait_until(lambda: answers(port, "/readyz"), 30, "the container's /readyz answering 200")
        except (AssertionError, TimedOut) as exc:
            raise AssertionError(f"{exc}; its log: {containers.logs(container_id)}") from None
        yield container_id, port
    finally:
        containers.remove_container(container_id)


def answers(port: int, path: str) -> bool:
    try:
        return http_request(f"http://127.0.0.1:{port}{path}", timeout=2)[0] == 200
    except OSError:
        return False


def process_uids(pid: str) -> set[str]:
    status = Path(f"/proc/{pid}/status").read_text()
    return set(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:])


def inspect(container_id: str) -> dict:
    return json.loads(containers.podman("inspect", container_id))[0]


def test_the_image_serves_its_commit_as_a_non_root_user_read_only(image: str, container: tuple[str, int]) -> None:
    container_id, port = container
    status, _, body = http_request(f"http://127.0.0.1:{port}/")
    assert (status, body) == (200, b"Hello, World!\n")
    status, _, body = http_request(f"http://127.0.0.1:{port}/version")
    assert status == 200 and (head_commit(CHECKOUT) or "unknown") in body.decode(), body
    # Every process of the container (supervisor and workers), read on the host: real, effective, saved, fs uid.
    pids = [line.split()[0] for line in containers.podman("top", container_id, "hpid").splitlines()[1:]]
    uids = {pid: process_uids(pid) for pid in pids}
    assert len(pids) >= 2 and all(found == {NON_ROOT_UID} for found in uids.values()), uids
    assert inspect(container_id)["HostConfig"]["ReadonlyRootfs"] is True
    probe = subprocess.run(
        ["podman", "exec", container_id, "touch", "/app/written"], env=containers.env(), capture_output=True, text=True
    )
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe


def test_healthcheck_reports_healthy(container: tuple[str, int]) -> None:
    container_id, _ = container
    # podman cannot schedule health checks without systemd on the host: run the image's HEALTHCHECK by hand.
    assert inspect(container_id)["Config"]["Healthcheck"]["Test"][0] == "CMD"  # kept: built --format docker
    result = subprocess.run(
        ["podman", "healthcheck", "run", container_id], env=containers.env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result
    state = inspect(container_id)["State"]
    assert (state.get("Health") or state.get("Healthcheck"))["Status"] == "healthy", state


def test_stop_drains_under_load_and_exits_0(container: tuple[str, int]) -> None:
    container_id, port = container
    clients = [LoadClient(port, keep_alive=True), LoadClient(port, keep_alive=False)]
    for client in clients:
        client.start()
    try:
        count_progress(clients, 200)
        for client in clients:
            client.stopping_allowed = True  # new connections refused once it stops: not failed requests
        containers.podman("stop", "--time", "15", container_id, timeout=60)  # SIGTERM, SIGKILL after 15 s
    finally:
        for client in clients:
            client.stop()
    state = inspect(container_id)["State"]
    assert state["ExitCode"] == 0, state  # 137 would mean it ignored SIGTERM
    assert sum(client.ok for client in clients) >= 200
    assert [failure for client in clients for failure in client.failures] == []


def test_a_build_of_another_commit_reports_that_commit(image: str) -> None:
    """Layers are cached, but never the commit: podman reused an ENV layer built with another COMMIT."""
    built = []
    try:
        for commit in (secrets.token_hex(20), secrets.token_hex(20)):
            with containers.cache_lock():
                built.append(containers.app_image(commit))
            env = containers.podman("image", "inspect", "--format", "{{json .Config.Env}}", built[-1])
            assert f"HELLO_COMMIT={commit}" in json.loads(env), (commit, env)
    finally:
        if built:
            containers.podman("rmi", *built, check=False)
