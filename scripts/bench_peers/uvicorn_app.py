"""Bench peer: a plain ASGI app for uvicorn, serving / and /metrics with a prometheus_client counter and histogram.

    uvicorn --loop uvloop --http httptools --no-access-log --workers 1 uvicorn_app:app

Started by scripts/bench_server.py (see its docstring); not part of the service.
"""

from __future__ import annotations

import time

from peer_metrics import HELLO, NOT_FOUND, metrics_body, observe

TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
METRICS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    started = time.perf_counter()
    path = scope["path"]
    if path == "/":
        code, headers, body = 200, TEXT, HELLO
    elif path == "/metrics":
        code, headers, body = 200, METRICS, metrics_body()
    else:
        code, headers, body = 404, TEXT, NOT_FOUND
    headers = [*headers, (b"content-length", b"%d" % len(body))]  # else uvicorn answers chunked
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    observe(scope["method"], path, code, time.perf_counter() - started)
