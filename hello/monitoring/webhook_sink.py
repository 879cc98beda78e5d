"""A recording webhook receiver: a real HTTP server that keeps every JSON body POSTed to it.

    from hello.monitoring.webhook_sink import WebhookSink
    sink = WebhookSink()                  # listens on 127.0.0.1, a free port
    ... point Alertmanager's webhook_url at sink.url + "/alerts" ...
    sink.alerts("/alerts", "HelloWorldDown", "firing")   # [(arrival time, alert), ...]
    sink.close()

    python -m hello.monitoring.webhook_sink [PORT]   # try alert delivery: prints each alert (README "First run")

The live alert delivery test (tests/test_alerting.py) and scripts/bench_alerting.py receive
Alertmanager's webhook payloads (version 4: {"status", "alerts": [{"status", "labels", ...}]}) with it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import threading
import time
from typing import Any


class WebhookSink:
    """Every JSON body POSTed, with its arrival time (time.time()) and path."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
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

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
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


def main(argv: list[str] | None = None) -> int:
    """Listen on 127.0.0.1:PORT and print one line per alert received, until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m hello.monitoring.webhook_sink", description=main.__doc__)
    parser.add_argument("port", nargs="?", type=int, default=0, help="the port (default: a free one)")
    args = parser.parse_args(argv)
    try:
        sink = WebhookSink(args.port)
    except OSError as exc:
        parser.exit(2, f"webhook_sink: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}\n")
    print(f"webhook_sink: set webhook_url: {sink.url}/alerts (Ctrl-C stops)", flush=True)
    shown = 0
    try:
        while True:
            time.sleep(0.5)
            received = sink.received[shown:]
            shown += len(received)
            for when, _path, body in received:
                for alert in body.get("alerts", []):
                    stamp = time.strftime("%H:%M:%S", time.localtime(when))
                    print(f"{stamp} {alert.get('status')} {alert.get('labels', {}).get('alertname')}", flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        sink.close()


if __name__ == "__main__":
    raise SystemExit(main())
