"""The metrics every Python peer of the bench keeps: the names our server uses, so one reader checks them all.

A request counter and a latency histogram from prometheus_client, updated on every request (what a user
of granian or uvicorn would write). With more than one worker, PROMETHEUS_MULTIPROC_DIR is set by the bench
and /metrics sums every worker's files, as ours does.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter(
    "hello_world_requests", "Requests answered, by method, route and status code.", ["method", "path", "code"]
)
DURATION = Histogram(
    "hello_world_request_duration_seconds", "Time to answer a request.", ["path"], buckets=LATENCY_BUCKETS
)

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    EXPOSITION = CollectorRegistry()
    multiprocess.MultiProcessCollector(EXPOSITION)
else:
    from prometheus_client import REGISTRY as EXPOSITION

HELLO = b"Hello, World!\n"
NOT_FOUND = b"not found\n"
ROUTES = frozenset({"/", "/metrics"})


def metrics_body() -> bytes:
    return generate_latest(EXPOSITION)


def observe(method: str, path: str, code: int, seconds: float) -> None:
    route = path if path in ROUTES else "other"
    REQUESTS.labels(method, route, str(code)).inc()
    DURATION.labels(route).observe(seconds)
