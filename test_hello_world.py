"""Tests of hello_world.py against real server processes over real sockets.

Each test starts its own server on a free port (conftest's hello_server, or
`make start` in a scratch checkout) and the `processes` fixture kills it by PID.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hello.base.checkout import CHECKOUT
from hello.base.git import git_out
from hello.base.http_client import http_request
from hello.base.locks import pid_alive
from hello.base.proc import free_port, wait_until
from tests.support.configs import write_config
from tests.support.load import LoadClient, count_progress, metric_value
from tests.support.tools import PYTHON

PROJECT_FILES = (
    "hello_world.py",
    "config.yaml",
    "Makefile",
    "requirements.txt",
    "requirements-dev.txt",
    "scripts/__init__.py",
    "scripts/_as_module.py",  # scripts/service.py run by path starts again as `-m scripts.service`
    "scripts/service.py",
)


# --- the interface of SPEC ------------------------------------------------------------------------


def test_endpoints_answer_as_spec_says(hello_server):
    server = hello_server()
    status, headers, body = http_request(server.url + "/")
    assert (status, body) == (200, b"Hello, World!\n")
    assert headers["content-type"].startswith("text/plain")

    status, headers, body = http_request(server.url + "/", method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "14")

    assert http_request(server.url + "/healthz")[0] == 200
    assert http_request(server.url + "/readyz")[0] == 200

    status, headers, body = http_request(server.url + "/version")
    version = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert version["commit"] == git_out(CHECKOUT, "rev-parse", "HEAD") and version["version"]

    status, headers, body = http_request(server.url + "/nope?x=1")
    assert status == 404
    status, headers, body = http_request(server.url + "/", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert http_request(server.url + "/metrics", method="DELETE")[0] == 405

    status, headers, body = http_request(server.url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert f'hello_world_build_info{{commit="{version["commit"]}",version="{version["version"]}"}} 1.0' in text
    assert "_created" not in text
    assert 'path="/nope' not in text and 'path="other"' in text  # the route, never the raw URL

    status, headers, body = http_request(server.url + "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert headers["content-type"].startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


# What Prometheus 3.x sends when it scrapes (its default scrape_protocols); 2.x sent an older list. 3.x fails a
# scrape whose answer lacks a Content-Type it knows (unless fallback_scrape_protocol is set).
PROMETHEUS3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.mark.parametrize("accept", [PROMETHEUS3_ACCEPT, "text/plain;version=0.0.4", "*/*", None])
def test_metrics_always_names_a_content_type_prometheus_3_parses(hello_server, accept):
    server = hello_server()
    status, headers, body = http_request(server.url + "/metrics", headers={"Accept": accept} if accept else None)
    media_type = (headers["content-type"] or "").split(";")[0].strip()
    assert status == 200 and media_type in ("text/plain", "application/openmetrics-text"), headers["content-type"]
    if media_type == "text/plain":
        assert "version=0.0.4" in headers["content-type"] and b"# EOF" not in body
    else:
        assert body.endswith(b"# EOF\n")
    assert b"hello_world_requests_total" in body


@pytest.mark.parametrize("workers", [1, 2])
def test_every_request_is_counted_exactly_once(hello_server, workers):
    server = hello_server(workers=workers)
    labels = {"method": "GET", "path": "/", "code": "200"}
    before = metric_value(server.url, "hello_world_requests_total", labels)
    requests = 300
    # Several connections, so that with 2 workers both answer some.
    for _ in range(6):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        for _ in range(requests // 6):
            connection.request("GET", "/")
            assert connection.getresponse().read() == b"Hello, World!\n"
        connection.close()
    wait_until(
        lambda: metric_value(server.url, "hello_world_requests_total", labels) >= before + requests,
        5,
        f"the counter to grow by {requests}",
    )
    # Past two flush ticks of every worker (0.1 s each): nothing was counted twice.
    time.sleep(0.3)
    assert metric_value(server.url, "hello_world_requests_total", labels) == before + requests
    histogram_count = metric_value(server.url, "hello_world_request_duration_seconds_count", {"path": "/"})
    assert histogram_count == before + requests
    assert (
        metric_value(server.url, "hello_world_request_duration_seconds_bucket", {"path": "/", "le": "+Inf"})
        == histogram_count
    )
    if workers == 2:
        pids = json.loads(Path(server.config_path.parent / "run" / "hello_world.state.json").read_text())
        assert pids["workers"] == 2


def test_bad_flags_and_config_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("system:\n  server:\n    port: 99999\n")
    result = subprocess.run(
        [PYTHON, str(CHECKOUT / "hello_world.py")],
        env={**os.environ, "HELLO_CONFIG": str(bad)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith("system.server.port: expected a whole number from 1 to 65535, got 99999")
    result = subprocess.run(
        [PYTHON, str(CHECKOUT / "hello_world.py"), "--port", "0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "--port" in result.stderr


def test_port_in_use_fails_with_the_reason(hello_server, tmp_path):
    server = hello_server()
    config = write_config(tmp_path / "second", {"server": {"port": server.port}})
    result = subprocess.run(
        [PYTHON, str(CHECKOUT / "hello_world.py")],
        env={**os.environ, "HELLO_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "Address already in use" in result.stderr


# --- bad clients ----------------------------------------------------------------------------------


def raw_exchange(port: int, payload: bytes, timeout: float = 5) -> bytes:
    """Send payload on a new connection; return what comes back until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with_reset = b""
        try:
            sock.sendall(payload)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            with_reset = b"".join(chunks)
        except (ConnectionResetError, BrokenPipeError):
            pass
        return with_reset


def test_pipelined_and_http_1_0_requests_are_answered_in_order(hello_server):
    server = hello_server()
    requests = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]
    answer = raw_exchange(server.port, b"".join(requests))  # one write: the server sees them pipelined
    parts = answer.split(b"HTTP/1.1 ")[1:]
    assert [part[:3] for part in parts] == [b"200"] * 5, answer[:300]
    assert parts[0].endswith(b"\r\n\r\nHello, World!\n")
    assert b"hello_world_requests_total" in parts[1]
    assert parts[2].endswith(b"}\n") and b'"commit"' in parts[2]
    assert parts[3].endswith(b"\r\n\r\n")  # HEAD: no body
    assert b"connection: close" in parts[4] and parts[4].endswith(b"Hello, World!\n")

    answer = raw_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"Hello, World!\n")
    assert b"connection: close" in answer


def test_big_bodies_and_long_pipelines_are_not_taken_for_big_headers(hello_server):
    server = hello_server()
    body = b"x" * 40_000
    answer = raw_exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 405"), answer[:60]
    requests = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2000 + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(server.port, requests, timeout=20)
    assert answer.count(b"HTTP/1.1 200 OK") == 2001 and answer.count(b"Hello, World!\n") == 2001


def test_malformed_and_slow_clients_never_hurt_others(hello_server):
    server = hello_server(overrides={"server": {"header_timeout": "1s", "keep_alive_timeout": "2s"}})
    rng = random.Random(7)
    for _ in range(20):
        answer = raw_exchange(server.port, bytes(rng.randrange(256) for _ in range(200)) + b"\r\n\r\n")
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:60]

    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert raw_exchange(server.port, big).startswith(b"HTTP/1.1 431")

    answer = raw_exchange(server.port, b"GET /\r\n\r\n")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:60]

    # A slow client sends half a request and stalls: the others are served meanwhile, it gets 408.
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    for _ in range(20):
        status, _, body = http_request(server.url + "/", timeout=1)
        assert (status, body) == (200, b"Hello, World!\n")
    assert time.monotonic() - started < 1, "other clients stalled behind the slow one"
    assert slow.recv(4096).startswith(b"HTTP/1.1 408")
    slow.close()

    # An idle connection that never sends is closed after keep_alive_timeout, without an answer.
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert idle.recv(4096) == b""
    idle.close()

    assert http_request(server.url + "/")[0] == 200
    assert metric_value(server.url, "hello_world_requests_total", {"code": "431"}) == 1
    assert metric_value(server.url, "hello_world_requests_total", {"code": "408"}) == 1
    assert server.proc.poll() is None


# --- stop -----------------------------------------------------------------------------------------


def test_sigterm_under_load_answers_every_request_then_exits(hello_server):
    server = hello_server(workers=2)
    clients = [
        LoadClient(server.port, keep_alive=True),
        LoadClient(server.port, keep_alive=True),
        LoadClient(server.port, keep_alive=False),
    ]
    for client in clients:
        client.stopping_allowed = True
        client.start()
    count_progress(clients, 300)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, server.log()
    for client in clients:
        client.stop()
    failures = [failure for client in clients for failure in client.failures]
    assert failures == [], failures[:5]
    assert sum(client.ok for client in clients) >= 300
    log = server.log()
    assert "stopping (SIGTERM)" in log and "stopped" in log


def test_readyz_turns_503_while_draining(hello_server):
    server = hello_server(overrides={"server": {"drain_timeout": "5s"}})
    # An open keep-alive connection keeps the worker draining until it leaves.
    held = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    held.request("GET", "/")
    held.getresponse().read()
    server.proc.send_signal(signal.SIGTERM)

    def drain_answer() -> http.client.HTTPResponse | None:
        held.request("GET", "/readyz")
        response = held.getresponse()
        response.read()
        return response if response.status == 503 else None

    response = wait_until(drain_answer, 5, "/readyz to answer 503 on the open connection")
    assert response.getheader("connection") == "close"
    held.close()
    assert server.proc.wait(timeout=15) == 0


# --- make targets and reload ----------------------------------------------------------------------


@pytest.fixture
def checkout(tmp_path: Path, processes) -> dict:
    """A scratch git checkout of the server, sharing the repo's venv, with its own config and run dir."""
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "scripts").mkdir()
    # The shared package whole (copytree keeps mtimes too), before the files: it may be named among them.
    shutil.copytree(CHECKOUT / "hello", work / "hello", ignore=shutil.ignore_patterns("__pycache__"))
    for name in PROJECT_FILES:
        shutil.copy2(CHECKOUT / name, work / name)  # copy2 keeps mtimes: make sees the venv as up to date
    (work / ".venv").symlink_to(CHECKOUT / ".venv")
    git_out(work, "init", "-q", "-b", "main")
    git_out(work, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    git_out(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    port = free_port()
    config = write_config(tmp_path / "conf", {"server": {"port": port, "workers": 2, "reload_timeout": "20s"}})
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    state = {
        "dir": work,
        "port": port,
        "url": f"http://127.0.0.1:{port}",
        "env": env,
        "pidfile": tmp_path / "conf" / "run" / "hello_world.pid",
    }
    yield state
    if state["pidfile"].exists():
        processes.adopt(int(state["pidfile"].read_text()))


def make(checkout: dict, *targets: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "-C", str(checkout["dir"]), *targets],
        env=checkout["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


ROUTES = "hello/server/routes.py"  # where the version is
WORKER = "hello/server/worker.py"  # what each worker imports fresh from disk


def commit_change(checkout: dict, file: str, old: str, new: str, message: str) -> str:
    path = checkout["dir"] / file
    text = path.read_text()
    assert old in text, f"{file} has no {old!r} to change"
    path.write_text(text.replace(old, new, 1))
    git_out(checkout["dir"], "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", message)
    return git_out(checkout["dir"], "rev-parse", "HEAD")


def served_commit(checkout: dict) -> str:
    return json.loads(http_request(checkout["url"] + "/version")[2])["commit"]


def test_make_start_status_stop(checkout):
    result = make(checkout, "start")
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout and checkout["url"] in result.stdout
    assert make(checkout, "start").stdout.startswith("already running")
    status = make(checkout, "status")
    assert status.returncode == 0 and git_out(checkout["dir"], "rev-parse", "HEAD") in status.stdout
    pid = int(checkout["pidfile"].read_text())
    assert make(checkout, "stop").returncode == 0
    assert not checkout["pidfile"].exists()
    assert not pid_alive(pid)
    result = make(checkout, "status")
    assert result.returncode != 0 and result.stdout == "not running\n"


def test_reload_under_load_loses_nothing_and_serves_the_new_code(checkout):
    assert make(checkout, "start").returncode == 0
    first = served_commit(checkout)
    clients = [LoadClient(checkout["port"], keep_alive=True), LoadClient(checkout["port"], keep_alive=False)]
    for client in clients:
        client.start()
    try:
        count_progress(clients, 200)
        commits = [first]
        for round_number in range(3):
            commits.append(
                commit_change(checkout, ROUTES, 'VERSION = "', f'VERSION = "{round_number}', f"r{round_number}")
            )
            result = make(checkout, "reload")
            assert result.returncode == 0, result.stderr
            assert served_commit(checkout) == commits[-1]
            count_progress(clients, 200)
    finally:
        for client in clients:
            client.stop()
    failures = [failure for client in clients for failure in client.failures]
    print(f"reload under load: {sum(c.ok for c in clients)} answered, {len(failures)} failed, 3 reloads")
    assert failures == [], failures[:5]
    assert all(client.ok > 200 for client in clients)
    assert served_commit(checkout) == commits[-1] != first


def test_reload_to_broken_code_keeps_the_old_code_serving(checkout):
    assert make(checkout, "start").returncode == 0
    good = served_commit(checkout)
    # Three reloads (one waits out a 2s timeout) on a busy machine: longer than the client's default 30s
    client = LoadClient(checkout["port"], keep_alive=True, max_seconds=120)
    client.start()
    try:
        count_progress([client], 100)
        commit_change(checkout, WORKER, "def main(", "def main(:", "syntax error")
        result = make(checkout, "reload")
        assert result.returncode != 0
        assert "old code still serving" in result.stderr and "SyntaxError" in result.stderr
        count_progress([client], 100)

        # New code that imports but never gets ready: refused at the timeout, old code serving.
        git_out(checkout["dir"], "reset", "-q", "--hard", "HEAD~1")
        hang = "    logging.basicConfig("
        commit_change(checkout, WORKER, hang, "    __import__('time').sleep(3600)\n" + hang, "hangs")
        config = checkout["env"]["HELLO_CONFIG"]
        Path(config).write_text(Path(config).read_text().replace("reload_timeout: 20s", "reload_timeout: 2s"))
        result = make(checkout, "reload")
        assert result.returncode != 0 and "not ready within 2s" in result.stderr
        count_progress([client], 100)
    finally:
        client.stop()
    assert client.failures == []
    assert served_commit(checkout) == good
    assert make(checkout, "status").returncode == 0


def test_reload_takes_the_config_as_it_is_now(checkout):
    assert make(checkout, "start").returncode == 0
    config = Path(checkout["env"]["HELLO_CONFIG"])
    good = config.read_text()
    config.write_text(good.replace("workers: 2", "workers: 0"))
    result = make(checkout, "reload")
    assert result.returncode != 0
    assert "system.server.workers: expected a whole number from 1 to 64, got 0" in result.stderr
    assert http_request(checkout["url"] + "/")[2] == b"Hello, World!\n"
    config.write_text(good.replace("workers: 2", "workers: 3"))
    assert make(checkout, "reload").returncode == 0
    assert json.loads(checkout["pidfile"].with_name("hello_world.state.json").read_text())["workers"] == 3


def test_bad_flags_of_make_start_exit_2(checkout):
    result = subprocess.run(
        [PYTHON, str(checkout["dir"] / "scripts" / "service.py"), "start", "--port", "70000"],
        env=checkout["env"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "--port: expected a whole number from 1 to 65535, got 70000"


def test_make_run_serves_on_the_port_given(processes, tmp_path):
    port = free_port()
    config = write_config(tmp_path)
    proc = processes.start(
        ["make", "-s", "-C", str(CHECKOUT), "run", f"PORT={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HELLO_CONFIG": str(config)},
    )
    wait_until(
        lambda: http_request(f"http://127.0.0.1:{port}/", timeout=1)[2] == b"Hello, World!\n",
        30,
        f"make run on port {port}",
    )
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    proc.wait(timeout=30)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert not (tmp_path / "run" / "hello_world.pid").exists()
