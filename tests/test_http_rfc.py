"""The server's own HTTP layer (issue 23): correct by the RFC, and counts and answers that cannot be abused.

Real servers on free ports, raw sockets for what an HTTP client library would not send, REDbot on the live
endpoints, and counts read straight from the workers' metric files (not through /metrics, whose page is
rendered at most once a second).
"""

from __future__ import annotations

import email.utils
import json
import socket
import subprocess
import threading
import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from hello.base.checkout import CHECKOUT
from hello.base.http_client import http_request
from hello.base.proc import wait_until
from tests.support.tools import PYTHON
from tests.test_hostile_clients import connect, read_until, status_kib, workers_of

HELLO = b"Hello, World!\n"
NO_STORE_ROUTES = ("/healthz", "/readyz", "/version", "/metrics")

# REDbot's warnings (and worse) that are intended, with the reason; any other fails the test.
REDBOT_INTENDED = {
    ("/", "FRESHNESS_HEURISTIC"): "the greeting is the same for every client: a cache may keep it as long as it likes",
}


def exchange(port: int, payload: bytes, timeout: float = 10) -> bytes:
    """Send payload on a new connection and read until the server closes it (fails after timeout)."""
    sock = connect(port)
    try:
        sock.sendall(payload)
        return read_until(sock, lambda got: False, timeout)
    finally:
        sock.close()


def answers(data: bytes) -> list[bytes]:
    """The status lines and headers of each answer in data (bodies have no status line of their own here)."""
    return [b"HTTP/1.1 " + part.split(b"\r\n\r\n")[0] for part in data.split(b"HTTP/1.1 ")[1:]]


def header(answer: bytes, name: bytes) -> list[bytes]:
    return [
        line.split(b":", 1)[1].strip() for line in answer.split(b"\r\n")[1:] if line.split(b":", 1)[0].lower() == name
    ]


def counted(server) -> dict[tuple[str, str, str], float]:
    """hello_world_requests_total from the workers' files, by (method, path, code): exact, at this moment."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(server.config_path.parent / "run" / "multiproc"))
    return {
        (sample.labels["method"], sample.labels["path"], sample.labels["code"]): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "hello_world_requests_total"
    }


def counted_since(server, before: dict) -> dict:
    now = counted(server)
    return {key: value - before.get(key, 0.0) for key, value in now.items() if value != before.get(key, 0.0)}


# --- RFC 9110 / 9112 ------------------------------------------------------------------------------


def test_http_1_1_without_host_or_with_two_is_400(hello_server):
    server = hello_server()
    before = counted(server)
    for payload in (
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",  # nothing after the 400 is answered
    ):
        (answer,) = answers(exchange(server.port, payload))
        assert answer.startswith(b"HTTP/1.1 400 ") and b"connection: close" in answer, (payload, answer)
    answer = exchange(server.port, b"GET / HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs no Host
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(HELLO)
    assert counted_since(server, before) == {("other", "other", "400"): 4, ("GET", "/", "200"): 1}


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/3.0", b"HTTP/1.2"])
def test_a_version_other_than_1_0_or_1_1_is_refused_and_closed(hello_server, version):
    server = hello_server()
    request = b"GET / " + version + b"\r\nHost: x\r\n\r\n"
    (answer,) = answers(exchange(server.port, request + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert answer.startswith((b"HTTP/1.1 505 ", b"HTTP/1.1 400 ")), answer
    assert b"connection: close" in answer


def test_health_readiness_version_and_metrics_are_not_stored_by_caches(hello_server):
    server = hello_server()
    for path in NO_STORE_ROUTES:
        for method in ("GET", "HEAD"):
            status, headers, _ = http_request(server.url + path, method=method)
            assert (status, headers["cache-control"]) == (200, "no-store"), (method, path)


def test_every_answer_carries_a_date(hello_server):
    server = hello_server(overrides={"server": {"header_timeout": "1s"}})
    cases = {
        "malformed request line": b"GARBAGE\x01 x\r\n\r\n",
        "HTTP/0.9": b"GET /\r\n",
        "no Host": b"GET / HTTP/1.1\r\n\r\n",
        "HTTP/2.0": b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        "headers too large": b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40_000 + b"\r\n\r\n",
        "unknown path": b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "method not allowed": b"DELETE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "headers too slow (408)": b"GET / HTTP/1.1\r\nHost: x\r\n",
        "greeting": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "HEAD": b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    }
    for name, payload in cases.items():
        (answer,) = answers(exchange(server.port, payload))
        (date,) = header(answer, b"date")
        when = email.utils.parsedate_to_datetime(date.decode()).timestamp()
        assert abs(when - time.time()) < 5, (name, date)


def test_the_date_header_moves_with_the_clock(hello_server):
    server = hello_server()
    sock = connect(server.port)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    def date_now() -> bytes:
        sock.sendall(request)
        (date,) = header(answers(read_until(sock, lambda got: got.endswith(b"ok\n"), 10))[0], b"date")
        return date

    first = date_now()
    second = wait_until(lambda: (date := date_now()) != first and date, 5, "the Date header to change")
    sock.close()
    first_at, second_at = (email.utils.parsedate_to_datetime(d.decode()).timestamp() for d in (first, second))
    assert 1 <= second_at - first_at <= 3, (first, second)
    assert abs(second_at - time.time()) < 2


def test_redbot_finds_nothing_unintended_on_the_live_endpoints(hello_server):
    server = hello_server()
    found = {}
    for path in ("/", *NO_STORE_ROUTES, "/nope"):
        done = subprocess.run(
            [PYTHON, str(CHECKOUT / "tests" / "support" / "redbot_notes.py"), server.url + path],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        notes = [json.loads(line) for line in done.stdout.splitlines()]
        assert any(note["name"] == "DATE_CORRECT" for note in notes), (path, notes)
        for note in notes:
            if note["level"] in ("warning", "bad"):
                found[(path, note["name"])] = note["summary"]
    unintended = {key: summary for key, summary in found.items() if key not in REDBOT_INTENDED}
    assert not unintended, f"REDbot warnings not written down as intended: {unintended}"


# --- counts that cannot be abused -------------------------------------------------------------------


def test_pipelined_http_1_0_requests_are_counted_only_as_answered(hello_server):
    server = hello_server()
    before = counted(server)
    request = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    answered = 0
    for _ in range(20):
        data = exchange(server.port, request * 1000)
        assert data.endswith(HELLO) and b"connection: close" in data  # HTTP/1.0 keep-alive is not honoured
        answered += data.count(b"HTTP/1.1 200 ")
    assert answered == 20
    assert http_request(server.url + "/healthz")[0] == 200  # the worker is past those reads
    assert counted_since(server, before) == {("GET", "/", "200"): 20, ("GET", "/healthz", "200"): 1}


@pytest.mark.parametrize(
    "body",
    [b"ZZZ\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\nXX\r\n", b"5\r\nhelloXX0\r\n\r\n"],
    ids=["bad size", "bad second size", "no CRLF after data"],
)
def test_a_post_with_a_malformed_chunked_body_is_answered_and_counted_once(hello_server, body):
    server = hello_server()
    before = counted(server)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = exchange(server.port, head + body + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (answer,) = answers(data)
    assert answer.startswith(b"HTTP/1.1 405 ")
    assert counted_since(server, before) == {("POST", "/", "405"): 1}


def test_a_flood_of_pipelined_metrics_requests_leaves_the_greeting_answered(hello_server):
    """300 connections each write 7 KB of pipelined GET /metrics and never read; probes of / go on meanwhile."""
    server = hello_server()
    (worker,) = workers_of(server.proc.pid)
    rss_before = status_kib(worker, "VmRSS")
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    flood = request * (7000 // len(request))
    floods: list[socket.socket] = []
    latencies: list[float | None] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set() and len(latencies) < 400:
            started = time.monotonic()
            try:
                ok = http_request(server.url + "/", timeout=1)[2] == HELLO
            except OSError:
                ok = False
            latencies.append(time.monotonic() - started if ok else None)
            time.sleep(0.02)  # the probes' pace

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for _ in range(300):
            sock = connect(server.port)
            sock.sendall(flood)
            floods.append(sock)
        wait_until(lambda: len(latencies) >= 200 or not prober.is_alive(), 60, "200 probes during the flood")
        rss_during = status_kib(worker, "VmRSS")
    finally:
        stop.set()
        prober.join(timeout=30)
        for sock in floods:
            sock.close()
    answered = [latency for latency in latencies if latency is not None and latency < 1.0]
    share = len(answered) / len(latencies)
    slowest = max((latency for latency in latencies if latency is not None), default=float("nan"))
    print(
        f"flood: {len(answered)} of {len(latencies)} probes answered within 1 s ({share:.1%}), slowest "
        f"{slowest * 1000:.0f} ms; worker RSS {rss_before / 1024:.1f} -> {rss_during / 1024:.1f} MiB"
    )
    assert share >= 0.99, f"{len(latencies) - len(answered)} of {len(latencies)} probes failed or took over 1 s"
    assert (rss_during - rss_before) / 1024 < 64, f"the flood grew the worker from {rss_before} to {rss_during} KiB"
    assert wait_until(lambda: http_request(server.url + "/")[2] == HELLO, 30, "the greeting after the flood")
