"""A recording webhook receiver: a real HTTP server that keeps every JSON body POSTed to it.

    from hello.webhook_sink import WebhookSink
    sink = WebhookSink()                  # listens on 127.0.0.1, a free port
    ... point Alertmanager's webhook_url at sink.url + "/alerts" ...
    sink.alerts("/alerts", "HelloWorldDown", "firing")   # [(arrival time, alert), ...]
    sink.close()

The live alert delivery test (tests/test_alerting.py) and scripts/bench_alerting.py receive
Alertmanager's webhook payloads (version 4: {"status", "alerts": [{"status", "labels", ...}]}) with it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from typing import Any


class WebhookSink:
    """Every JSON body POSTed, with its arrival time (time.time()) and path."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        """host: where it listens; 0.0.0.0 lets containers reach it (as host.containers.internal)."""
        self.received: list[tuple[float, str, dict[str, Any]]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with contextlib.suppress(ValueError):
                    sink.received.append((time.time(), self.path, json.loads(body or b"{}")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep quiet
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def payloads(self, path: str) -> list[tuple[float, dict[str, Any]]]:
        return [(when, body) for when, got, body in list(self.received) if got == path]

    def alerts(self, path: str, name: str, status: str) -> list[tuple[float, dict[str, Any]]]:
        """(arrival time, alert) of the alerts called name with status ('firing', 'resolved') received on path."""
        return [
            (when, alert)
            for when, body in self.payloads(path)
            for alert in body.get("alerts", [])
            if alert.get("labels", {}).get("alertname") == name and alert.get("status") == status
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
