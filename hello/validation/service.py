"""Group `service`: the server at system.server answers /, /healthz, /readyz, /metrics and counts requests (what the
update protocol's verify step runs: `validation_test.py --only service`)."""

from __future__ import annotations

import time

from hello.validation.components import Context, metric_values, sample_names
from hello.validation.core import FIX_SERVER, CheckFailed
from hello.validation.registry import check

SPEC_METRICS = ("hello_world_requests_total", "hello_world_request_duration_seconds_bucket", "hello_world_build_info")


@check("service", "GET / says Hello, World!", fix=FIX_SERVER)
def check_root(ctx: Context) -> str:
    status, body, content_type = ctx.server.get("/")
    text = body.decode("utf-8", "replace")
    if status != 200 or text.rstrip("\n") != "Hello, World!":
        raise CheckFailed(f"{ctx.server.base}/ answered {status} {text[:60]!r}, expected 200 'Hello, World!'")
    if not content_type.startswith("text/plain"):
        raise CheckFailed(f"{ctx.server.base}/ answered content type {content_type!r}, expected text/plain")
    return f"{ctx.server.base}/ -> 200 text/plain 'Hello, World!'"


@check("service", "/healthz and /readyz are 200", fix=FIX_SERVER)
def check_health(ctx: Context) -> str:
    for path in ("/healthz", "/readyz"):
        status, body, _ = ctx.server.get(path)
        if status != 200:
            why = " (the server is draining: stopping or reloading)" if path == "/readyz" and status == 503 else ""
            raise CheckFailed(f"{ctx.server.base}{path} answered {status}{why}")
    return "both 200"


def _metrics_text(ctx: Context) -> str:
    return ctx.server.ok("/metrics").decode("utf-8", "replace")


@check("service", "/metrics carries the SPEC metrics", fix=FIX_SERVER)
def check_metrics(ctx: Context) -> str:
    names = sample_names(_metrics_text(ctx))
    missing = [name for name in SPEC_METRICS if name not in names]
    if missing:
        raise CheckFailed(f"{ctx.server.base}/metrics lacks {', '.join(missing)}")
    return ", ".join(name.removesuffix("_bucket") for name in SPEC_METRICS)


@check("service", "one request moves the counter by one", fix=FIX_SERVER)
def check_counter(ctx: Context) -> str:
    # /version, not /: ordinary clients do not ask for it, so live traffic does not move this series.
    series = {"method": "GET", "path": "/version", "code": "200"}

    def count() -> float:
        return sum(metric_values(_metrics_text(ctx), "hello_world_requests_total", series))

    moved = 0.0
    for _attempt in range(3):  # another client's request in between can move it by more: try again
        before = count()
        ctx.server.ok("/version")
        # Under repeated scrapes a worker renders /metrics about once a second (hello/server/metrics_files.py
        # SharedPage): poll gently, for longer than that.
        deadline = time.monotonic() + min(ctx.timeout, 3.0)
        after = count()
        while after == before and time.monotonic() < deadline:
            time.sleep(0.2)
            after = count()
        moved = after - before
        if moved == 1:
            return f'hello_world_requests_total{{method="GET",path="/version",code="200"}} {before:g} -> {after:g}'
        if moved < 1:
            break
    raise CheckFailed(f'one GET /version moved hello_world_requests_total{{path="/version"}} by {moved:g}, not 1')
