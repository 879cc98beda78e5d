"""Bench peer: a plain RSGI app for granian, serving / and /metrics with a prometheus_client counter and histogram.

    granian --interface rsgi --http 1 --no-ws --workers 1 scripts.bench_peers.granian_app:app

Started by scripts/bench_server.py (see its docstring); not part of the service.
"""

from __future__ import annotations

import time

from peer_metrics import HELLO, NOT_FOUND, metrics_body, observe

TEXT = [("content-type", "text/plain; charset=utf-8")]
METRICS = [("content-type", "text/plain; version=0.0.4; charset=utf-8")]


async def app(scope, protocol) -> None:
    started = time.perf_counter()
    path = scope.path
    if path == "/":
        code = 200
        protocol.response_bytes(200, TEXT, HELLO)
    elif path == "/metrics":
        code = 200
        protocol.response_bytes(200, METRICS, metrics_body())
    else:
        code = 404
        protocol.response_bytes(404, TEXT, NOT_FOUND)
    observe(scope.method, path, code, time.perf_counter() - started)
