"""What the server serves: its version and commit, and the routes with their answers, built once per worker.

Endpoints: / (Hello, World!), /healthz, /readyz (503 while draining), /version, /metrics (every worker's counts,
past and present, from prometheus_client's multiprocess files in PROMETHEUS_MULTIPROC_DIR: see
hello/server/metrics_files.py). The HTTP layer (hello/server/protocol.py) answers with what make_site returns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hello.base.git import head_commit
from hello.base.request_metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from hello.server.metrics_files import RequestMetrics
    from hello.server.protocol import Site

VERSION = "1.0.0"
CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout this code runs from; workers run in it

ROUTES = ("/", "/healthz", "/readyz", "/version", "/metrics")
METRICS_RENDERS = (5, 1.0)  # /metrics renders a worker may make at once, and per second after that
NO_STORE = (b"cache-control", b"no-store")  # what a cache must not keep: health, readiness, version, metrics
TEXT = (b"content-type", b"text/plain; charset=utf-8")


@dataclass(frozen=True)
class BuildInfo:
    version: str
    commit: str


def read_build_info() -> BuildInfo:
    """The version and the git commit of the code on disk; HELLO_COMMIT (baked in at image build) without .git."""
    commit = head_commit(CHECKOUT) if (CHECKOUT / ".git").exists() else None
    return BuildInfo(VERSION, commit or os.environ.get("HELLO_COMMIT") or "unknown")


def make_site(build: BuildInfo) -> tuple[Site, RequestMetrics]:
    """The routes and their answers, built once; the request metrics they are counted in."""
    from prometheus_client import CollectorRegistry, Gauge
    from prometheus_client.exposition import choose_encoder

    from hello.server.metrics_files import LockedCollector, RequestMetrics, SharedPage
    from hello.server.protocol import Site

    metrics = RequestMetrics((*ROUTES, "other"), LATENCY_BUCKETS)
    build_info = Gauge(
        "hello_world_build_info", "The running version and commit.", ["version", "commit"], multiprocess_mode="livemax"
    )
    build_info.labels(build.version, build.commit).set(1)
    exposition = CollectorRegistry()
    LockedCollector(exposition)  # the supervisor merges dead workers' files (hello/server/metrics_files.py)

    version_body = json.dumps({"version": build.version, "commit": build.commit}).encode() + b"\n"
    fixed = {
        "/": (200, (TEXT,), b"Hello, World!\n"),
        "/healthz": (200, (TEXT, NO_STORE), b"ok\n"),
        "/version": (200, ((b"content-type", b"application/json"), NO_STORE), version_body),
    }
    ready, draining = (200, (TEXT, NO_STORE), b"ready\n"), (503, (TEXT, NO_STORE), b"draining\n")
    pages = SharedPage(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]), *METRICS_RENDERS)

    def metrics_answer(accept: bytes | None):
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else None)
        name = "openmetrics" if content_type.startswith("application/openmetrics") else "text"
        # a flood of scrapes costs about one render a second
        body = pages.render_or_newest(name, lambda: encoder(exposition))
        return 200, ((b"content-type", content_type.encode()), NO_STORE), body

    def answer(route: str, accept: bytes | None, is_draining: bool):
        if route == "/readyz":
            return draining if is_draining else ready
        if route == "/metrics":
            return metrics_answer(accept)
        return fixed[route]

    site = Site(
        routes={route.encode(): route for route in ROUTES},
        answer=answer,
        fixed=frozenset({"/", "/healthz", "/readyz", "/version"}),
        not_found=(404, (TEXT,), b"not found\n"),
        not_allowed=(405, (TEXT, (b"allow", b"GET, HEAD")), b"method not allowed\n"),
    )
    return site, metrics
