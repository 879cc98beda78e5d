"""The server under hostile and broken clients (issue 10): real servers, real sockets, every wait bounded.

Each test starts its own server on a free port with short timeouts set through its config, and checks one
property a client must not be able to break: its requests never lost to a timer, connections that never
finish closed, bounded memory for headers and unread answers, requests behind an Upgrade answered, a log
that cannot grow without bound, HTTP/0.9 refused at once, and counts that survive a killed worker.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hello.base.checkout import CHECKOUT
from hello.base.http_client import http_request
from hello.base.proc import free_port, wait_until
from tests.support.configs import write_config
from tests.support.load import LoadClient, count_progress, metric_value
from tests.support.tools import PYTHON

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
HELLO = b"Hello, World!\n"


def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until(sock: socket.socket, done, timeout: float) -> bytes:
    """What the server sends until done(received) is true, it closes, or timeout (then: fail)."""
    received = b""
    deadline = time.monotonic() + timeout
    while not done(received):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no complete answer within {timeout:g}s; got {received[-200:]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            raise AssertionError(f"no complete answer within {timeout:g}s; got {received[-200:]!r}") from None
        if not chunk:
            break
        received += chunk
    return received


def closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closed sock (reading and discarding what it sends), None if it did not."""
    started = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return None
    return time.monotonic() - started


def workers_of(supervisor_pid: int) -> list[int]:
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def status_kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


# 1 ------------------------------------------------------------------------------------------------


def test_a_busy_keep_alive_connection_never_loses_a_request_to_a_timer(hello_server):
    server = hello_server(overrides={"server": {"keep_alive_timeout": "1s"}})
    sock = connect(server.port)
    sock.sendall(GET * 5)  # a pipelined burst: five direct answers in one read
    read_until(sock, lambda got: got.count(HELLO) == 5, 10)
    # Then a request every 0.3 s for 2.4 s, well inside keep_alive_timeout each: none may meet a closed socket.
    for number in range(8):
        time.sleep(0.3)  # the client's pace is what is tested, not a wait for the server
        try:
            sock.sendall(GET)
            answer = read_until(sock, lambda got: got.endswith(HELLO), 10)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise AssertionError(f"request {number} at {0.3 * (number + 1):.1f}s after the burst: {exc}") from None
        assert answer.startswith(b"HTTP/1.1 200"), f"request {number} at {0.3 * (number + 1):.1f}s: {answer!r}"
    sock.close()


# 2 ------------------------------------------------------------------------------------------------


def test_connections_that_never_finish_a_request_are_closed(hello_server):
    timeouts = {"keep_alive_timeout": "1s", "header_timeout": "1s", "body_timeout": "1s"}
    server = hello_server(overrides={"server": timeouts})
    cases: dict[str, socket.socket] = {}
    cases["lone CRLF"] = connect(server.port)
    cases["lone CRLF"].sendall(b"\r\n")
    cases["CRLF after an answer"] = connect(server.port)
    cases["CRLF after an answer"].sendall(GET)
    read_until(cases["CRLF after an answer"], lambda got: got.endswith(HELLO), 10)
    cases["CRLF after an answer"].sendall(b"\r\n")
    cases["half a body, then nothing"] = connect(server.port)
    cases["half a body, then nothing"].sendall(b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
    trickled = ("a CRLF every 0.3 s", "a body byte every 0.3 s after the answer")
    cases[trickled[0]] = connect(server.port)
    cases[trickled[1]] = connect(server.port)
    cases[trickled[1]].sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    # Each of these would stay open for good; every one must be closed within a few timeouts.
    deadline = time.monotonic() + 8
    open_cases = dict(cases)
    while open_cases and time.monotonic() < deadline:
        for name in trickled:
            if name in open_cases:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    open_cases[name].sendall(b"\r\n" if name == trickled[0] else b"x")
        for name, sock in list(open_cases.items()):
            if closed_within(sock, 0.05) is not None:
                del open_cases[name]
        time.sleep(0.25)  # the trickling clients' pace
    assert not open_cases, f"still open after 8 s: {sorted(open_cases)}"
    for sock in cases.values():
        sock.close()
    assert http_request(server.url + "/")[2] == HELLO


def test_a_server_at_its_file_limit_keeps_answering_new_clients(processes, tmp_path):
    limit = 200
    own_soft, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if own_hard != resource.RLIM_INFINITY and own_hard < limit + 100:
        pytest.skip(f"this test opens {limit} connections; the hard file limit here is {own_hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(own_soft, limit + 100), own_hard))
    port = free_port()
    timeouts = {"keep_alive_timeout": "60s", "header_timeout": "60s"}  # no timer may rescue the server here
    config = write_config(tmp_path, {"server": {"port": port, **timeouts}})
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = processes.start(
            [PYTHON, str(CHECKOUT / "hello_world.py")],
            cwd=CHECKOUT,
            env={**os.environ, "HELLO_CONFIG": str(config)},
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
        )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_request(url + "/readyz", timeout=1)[0] == 200, 30, "the server to be ready")
    idle = []
    try:
        for _ in range(limit - 5):
            sock = connect(port)
            sock.sendall(b"\r\n")  # bytes that are no request: the connection stays idle
            idle.append(sock)
        for attempt in range(3):  # a few new clients, one after another: each must be answered
            status, _, body = http_request(url + "/", timeout=5)
            assert (status, body) == (200, HELLO), f"new client {attempt}: {status} {body!r}"
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (own_soft, own_hard))
    warnings = [line for line in log_path.read_text().splitlines() if "file limit" in line]
    assert 1 <= len(warnings) <= 2, warnings  # logged once, not per connection
    assert proc.poll() is None


# 3 ------------------------------------------------------------------------------------------------


def test_many_tiny_headers_are_refused_early_and_hold_little_memory(hello_server):
    server = hello_server(overrides={"server": {"header_timeout": "60s", "max_header_count": 100}})
    (worker,) = workers_of(server.proc.pid)
    sock = connect(server.port)
    sock.sendall(b"GET / HTTP/1.1\r\n" + b"a:\r\n" * 200)  # headers that never end, over the count
    answer = read_until(sock, lambda got: b"\r\n\r\n" in got, 10)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    sock.close()

    sock = connect(server.port)
    sock.sendall(b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 200_000)  # one header that never ends
    assert read_until(sock, lambda got: b"\r\n\r\n" in got, 10).startswith(b"HTTP/1.1 431")
    sock.close()

    peak_before = status_kib(worker, "VmHWM")
    flood = b"GET / HTTP/1.1\r\n" + b"a:\r\n" * (960 * 1024 // 4)  # 960 KiB of tiny headers
    socks = [connect(server.port) for _ in range(4)]
    for sock in socks:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before it was all sent
            sock.sendall(flood)
    for sock in socks:
        assert closed_within(sock, 10) is not None, "a flood of headers was not refused"
        sock.close()
    grown_mib = (status_kib(worker, "VmHWM") - peak_before) / 1024
    assert grown_mib < 8, f"four connections of tiny headers grew the worker's peak RSS by {grown_mib:.1f} MiB"
    assert http_request(server.url + "/")[2] == HELLO


# 4 ------------------------------------------------------------------------------------------------


def unread_connection(port: int) -> socket.socket:
    """A connection with small buffers, for a client that does not read: answers pile up at the server."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # our kernel holds little of what we send
    sock.connect(("127.0.0.1", port))
    return sock


def count_answers(sock: socket.socket, expected: int, timeout: float) -> int:
    """How many `Hello, World!` answers arrive until expected have, the server closes, or timeout."""
    count, tail, deadline = 0, b"", time.monotonic() + timeout
    while count < expected and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 20)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        window = tail + chunk
        count += window.count(HELLO)
        tail = window[-(len(HELLO) - 1) :]  # too short to hold a whole answer: none is counted twice
    return count


def send_requests(sock: socket.socket, budget: int, deadline: float) -> tuple[int, bool]:
    """Pipeline GET / (whole requests only) until budget bytes are sent or a send blocks: (bytes sent, blocked)."""
    chunk = b"GET / HTTP/1.1\r\nHost:x\r\n\r\n" * 2800  # 72 KiB
    sent, rest = 0, chunk
    while sent < budget and time.monotonic() < deadline:
        try:
            done = sock.send(rest)
        except TimeoutError:
            return sent, True
        sent += done
        rest = rest[done:] or chunk
    return sent, False


def test_a_client_that_never_reads_cannot_make_the_worker_buffer_without_limit(hello_server):
    server = hello_server()
    (worker,) = workers_of(server.proc.pid)
    peak_before = status_kib(worker, "VmHWM")
    sock = unread_connection(server.port)
    sock.settimeout(2)  # the server stopped reading when a send waits this long
    sent, blocked = send_requests(sock, 48 * 1024 * 1024, time.monotonic() + 30)
    grown_mib = (status_kib(worker, "VmHWM") - peak_before) / 1024
    assert blocked, f"the server read {sent / 2**20:.0f} MiB of requests whose answers nobody read"
    assert grown_mib < 12, f"unread answers grew the worker's peak RSS by {grown_mib:.1f} MiB"
    # Once the client reads, the server reads on: every whole request it sent is answered.
    requests = sent // len(b"GET / HTTP/1.1\r\nHost:x\r\n\r\n")
    assert count_answers(sock, requests, 60) == requests
    sock.close()
    assert http_request(server.url + "/")[2] == HELLO


def test_a_client_that_never_reads_is_dropped_after_write_timeout(hello_server):
    server = hello_server(overrides={"server": {"write_timeout": "1s", "keep_alive_timeout": "60s"}})
    sock = unread_connection(server.port)
    sock.settimeout(0.5)
    deadline, dropped = time.monotonic() + 15, False
    while not dropped and time.monotonic() < deadline:
        try:
            send_requests(sock, 1 << 30, deadline)
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
    sock.close()
    assert dropped, "a client that never read its answers was still connected after 15 s"
    assert http_request(server.url + "/")[2] == HELLO


# 5 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["/", "/metrics"], ids=["direct", "app"])
def test_a_request_pipelined_behind_an_upgrade_is_answered(hello_server, first):
    server = hello_server()
    upgrade = f"GET {first} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\n\r\n".encode()
    after = b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    sock = connect(server.port)
    sock.sendall(upgrade + after)
    answer = read_until(sock, lambda got: b'"commit"' in got, 10)
    sock.close()
    assert answer.count(b"HTTP/1.1 200") == 2, answer[:400]
    # An upgrade request that declares a body: what follows cannot be told apart from it, so it is not parsed.
    sock = connect(server.port)
    sock.sendall(upgrade.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello") + after)
    answer = read_until(sock, lambda got: False, 10)
    sock.close()
    assert answer.count(b"HTTP/1.1 200") == 1, answer[:400]


def test_clients_cannot_grow_the_log_without_bound(hello_server):
    server = hello_server()
    before = server.log_path.read_text().count("WARNING")
    for _ in range(30):
        sock = connect(server.port)
        sock.sendall(b"\x00\x01 garbage\r\n\r\n")
        read_until(sock, lambda got: False, 10)
        sock.close()
        sock = connect(server.port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n")
        read_until(sock, lambda got: got.endswith(HELLO), 10)
        sock.close()
    assert http_request(server.url + "/")[2] == HELLO
    warnings = server.log_path.read_text().count("WARNING") - before
    assert warnings <= 2, f"60 bad requests wrote {warnings} WARNING lines:\n{server.log()}"


def test_the_background_log_is_rotated_with_several_workers_writing(processes, tmp_path):
    port = free_port()
    rotation = {"log_max_size": "4KiB", "log_keep": 2, "access_log": True}  # a line a request: a quick 4 KiB
    config = write_config(tmp_path, {"server": {"port": port, "workers": 2, **rotation}})
    log_path = tmp_path / "run" / "hello_world.log"
    log_path.parent.mkdir(parents=True)
    proc = processes.start(
        [PYTHON, str(CHECKOUT / "hello_world.py"), "--log-file", str(log_path)],
        cwd=CHECKOUT,
        env={**os.environ, "HELLO_CONFIG": str(config)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_request(url + "/readyz", timeout=1)[0] == 200, 30, "the server to be ready")
    for _ in range(40):  # several connections: both workers answer, and both write to the log
        client = LoadClient(port, keep_alive=False, max_requests=10)
        client.run()
        assert client.failures == []
    wait_until(lambda: log_path.with_name("hello_world.log.2").exists(), 10, "a second rotation")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    files = sorted(log_path.parent.glob("hello_world.log*"))
    assert [path.name for path in files] == ["hello_world.log", "hello_world.log.1", "hello_world.log.2"]
    for path in files:
        text = path.read_text()
        assert len(text.encode()) <= 4096 + 300, f"{path.name} is {len(text)} bytes"
        assert all(" [" in line for line in text.splitlines()), f"a torn line in {path.name}"
    pids = {line.split("[")[1].split("]")[0] for path in files for line in path.read_text().splitlines()}
    assert len(pids) >= 2, f"lines from one process only: {pids}"
    assert "stopped" in files[0].read_text()


# 6 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"GET /\r\n", GET + b"GET /\r\n"], ids=["alone", "pipelined"])
def test_an_http_0_9_request_line_is_answered_400_at_once(hello_server, payload):
    server = hello_server(overrides={"server": {"header_timeout": "60s"}})
    sock = connect(server.port)
    sock.sendall(payload)
    answer = read_until(sock, lambda got: b"400 Bad Request" in got, 10)
    sock.close()
    assert answer.count(b"HTTP/1.1 400") == 1, answer[:300]


# 7 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_every_answered_request_is_counted_however_the_worker_ends(hello_server, how):
    server = hello_server(workers=1)
    (worker,) = workers_of(server.proc.pid)
    labels = {"method": "GET", "path": "/", "code": "200"}
    before = metric_value(server.url, "hello_world_requests_total", labels)
    client = LoadClient(server.port, keep_alive=True)
    client.start()
    count_progress([client], 500)
    os.kill(worker, getattr(signal, how))  # while requests flow: SIGKILL gives the worker no last word
    client.stop()
    answered = client.ok
    wait_until(lambda: workers_of(server.proc.pid) not in ([], [worker]), 30, "a new worker")
    server.wait_ready()
    counted = metric_value(server.url, "hello_world_requests_total", labels) - before
    # The request in flight at the kill may be counted (just before its answer was written) and never received.
    assert answered <= counted <= answered + 1, f"{answered} answered, {counted:.0f} counted"
