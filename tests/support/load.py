"""Load on the server in tests: LoadClient threads on /, a wait for their progress, and /metrics samples."""

from __future__ import annotations

import http.client
import re
import threading
import time

from hello.base.http_client import http_request
from hello.base.proc import wait_until


def metric_value(url: str, name: str, labels: dict[str, str]) -> float:
    """The value of one sample in the server's /metrics, 0 when absent."""
    body = http_request(url + "/metrics")[2].decode()
    for line in body.splitlines():
        match = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            if all(found.get(key) == value for key, value in labels.items()):
                return float(match.group(3))
    return 0.0


class LoadClient(threading.Thread):
    """Sends GET / in a loop until stopped or bounded out; counts answers and failures.

    keep_alive=True reuses one connection and reconnects only when the server said `Connection: close`;
    a connection the server drops without saying so fails the next request. keep_alive=False opens a
    connection per request. `refused` counts new connections the server would not take (it stopped).
    """

    def __init__(self, port: int, keep_alive: bool, max_requests: int = 200_000, max_seconds: float = 30) -> None:
        super().__init__(daemon=True)
        self.port, self.keep_alive = port, keep_alive
        self.max_requests, self.deadline = max_requests, time.monotonic() + max_seconds
        self.stopping = threading.Event()
        self.ok = self.refused = 0
        self.failures: list[str] = []
        self.stopping_allowed = False  # set when the test stops the server: a refused new connection is no failure

    def run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        while not self.stopping.is_set() and self.ok < self.max_requests and time.monotonic() < self.deadline:
            fresh = connection is None
            if fresh:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    connection.connect()
                except OSError as exc:
                    connection = None
                    if not self.stopping_allowed:
                        self.failures.append(f"connect: {type(exc).__name__}: {exc}")
                        continue
                    self.refused += 1  # the server stops: it takes no new connections
                    time.sleep(0.01)
                    continue
            headers = {} if self.keep_alive else {"Connection": "close"}
            try:
                connection.request("GET", "/", headers=headers)
                response = connection.getresponse()
                body = response.read()
            except (ConnectionResetError, http.client.RemoteDisconnected) as exc:
                # A fresh connection reset before any answer: the server stopped listening (stop, not reload).
                if fresh and self.stopping_allowed:
                    self.refused += 1
                else:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = None
                continue
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = None
                continue
            if response.status == 200 and body == b"Hello, World!\n":
                self.ok += 1
            else:
                self.failures.append(f"status {response.status} body {body[:40]!r}")
            if not self.keep_alive or response.getheader("connection", "").lower() == "close":
                connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


def count_progress(clients: list[LoadClient], more: int, timeout: float = 20) -> None:
    """Wait until the clients have answered `more` requests beyond now: proof the load is flowing."""
    target = sum(client.ok for client in clients) + more
    wait_until(lambda: sum(client.ok for client in clients) >= target, timeout, f"{more} more answered requests")
