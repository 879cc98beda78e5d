"""The trimmed connection set-up of the worker (hello/server/worker.py): idle connections still close on time.

No timer is armed per connection or per keep-alive answer; the worker's tick (and its drain loop) closes
connections idle past keep_alive_timeout. Real server, real sockets, real signals.
"""

from __future__ import annotations

import signal
import socket
import time

from hello.base.http_client import http_request

IDLE = {"server": {"keep_alive_timeout": "1s", "drain_timeout": "30s"}}


def get_on(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock.recv(4096)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes sock (EOF) within seconds; what is left of an answer is read and dropped."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if sock.recv(4096) == b"":
                return True
    except TimeoutError:
        pass
    return False


def test_idle_keep_alive_connections_close_after_keep_alive_timeout(hello_server):
    server = hello_server(overrides=IDLE)
    answered = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert get_on(answered).startswith(b"HTTP/1.1 200")  # idle after a direct answer
    app_answered = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    app_answered.sendall(b"GET /version?x HTTP/1.1\r\nHost: x\r\n\r\n")  # answered by the ASGI app
    assert app_answered.recv(4096).startswith(b"HTTP/1.1 200")
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # never sends a byte
    started = time.monotonic()
    for name, sock in {
        "after a direct answer": answered,
        "after an app answer": app_answered,
        "silent": silent,
    }.items():
        assert closed_within(sock, 20), f"an idle connection ({name}) was not closed"
        sock.close()
    assert time.monotonic() - started < 20
    assert http_request(server.url + "/")[0] == 200


def test_a_drain_closes_idle_connections_after_keep_alive_timeout_not_drain_timeout(hello_server):
    server = hello_server(overrides=IDLE)
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert get_on(idle).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert closed_within(idle, 20), "the idle connection outlived the drain's keep_alive_timeout"
    server.proc.wait(timeout=25)
    assert time.monotonic() - started < 20, "the stop waited for drain_timeout (30 s), not keep_alive_timeout (1 s)"
    assert server.proc.returncode == 0
