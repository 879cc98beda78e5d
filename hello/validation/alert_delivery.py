"""Group `monitoring`, alert delivery (issue 12): Alertmanager is ready, Prometheus sends its alerts there, a receiver
is configured, the Watchdog arrives; node_exporter is scraped."""

from __future__ import annotations

import json
import urllib.parse

import yaml

from hello.monitoring import alerting
from hello.monitoring.promconfig import COMPOSE_ALERTMANAGER_TARGET
from hello.validation.components import Context, Endpoint, prometheus_api
from hello.validation.core import FIX_FIRST_SCRAPE, FIX_MONITOR, FIX_RECEIVER, SAFE_LOADER, CheckFailed, CheckSkipped
from hello.validation.registry import check

ALERTING_KEY = "system.monitoring.alertmanager"


def need_alertmanager(ctx: Context) -> Endpoint:
    url = ctx.config["monitoring"]["alertmanager"]["url"]
    if not url:
        raise CheckSkipped(f"{ALERTING_KEY}.url is null: no alert delivery")
    return ctx.once(
        "alertmanager endpoint", lambda: Endpoint("Alertmanager", url, ctx.timeout, ctx.auth, fix=FIX_MONITOR)
    )


@check("monitoring", "Alertmanager is ready", fix=FIX_MONITOR)
def check_alertmanager_ready(ctx: Context) -> str:
    alertmanager = need_alertmanager(ctx)
    alertmanager.ok("/-/ready")
    return f"{alertmanager.base}/-/ready 200"


@check("monitoring", "Prometheus sends its alerts to Alertmanager", fix=FIX_MONITOR)
def check_prometheus_alertmanager(ctx: Context) -> str:
    alertmanager, prom = need_alertmanager(ctx), ctx.need_prometheus()
    active = [a.get("url", "") for a in prometheus_api(prom, "/api/v1/alertmanagers").get("activeAlertmanagers", [])]
    wanted = urllib.parse.urlsplit(alertmanager.base).port
    # The compose stack's Prometheus reaches Alertmanager by service name, whatever port the host publishes it on.
    if not any(urllib.parse.urlsplit(url).port == wanted or COMPOSE_ALERTMANAGER_TARGET in url for url in active):
        raise CheckFailed(
            f"Prometheus at {prom.base} sends alerts to {', '.join(active) or 'no Alertmanager'}, "
            f"not {alertmanager.base} (its alerting: section; make monitor renders it)"
        )
    return f"Prometheus -> {', '.join(active)}"


@check("monitoring", "a receiver is configured", fix=FIX_RECEIVER)
def check_receiver(ctx: Context) -> str:
    what_to_set = (
        f"set {ALERTING_KEY}.receivers.webhook_url (or env {alerting.WEBHOOK_ENV}) "
        "or receivers.email.to/from/smarthost, then run `make monitor` to apply it"
    )
    if not ctx.config["monitoring"]["alertmanager"]["url"]:
        raise CheckFailed(
            f"{ALERTING_KEY}.url is null: alerts reach nobody; set it and {what_to_set}",
            f"set {ALERTING_KEY}.url and .receivers.webhook_url",
        )
    status = need_alertmanager(ctx).json("/api/v2/status")
    try:
        running = yaml.load((status.get("config") or {}).get("original") or "", Loader=SAFE_LOADER) or {}
    except yaml.YAMLError:
        raise CheckFailed("Alertmanager's /api/v2/status holds no readable config") from None
    kinds = alerting.configured_receivers(running)
    if not kinds:
        raise CheckFailed(
            f"Alertmanager tells nobody: its {alerting.NOTIFY_RECEIVER!r} receiver is empty; {what_to_set}"
        )
    return f"alerts go to {' and '.join(kinds)}"


@check("monitoring", "the Watchdog is in Alertmanager", fix="run `make monitor`, then wait a minute")
def check_watchdog(ctx: Context) -> str:
    alertmanager = need_alertmanager(ctx)
    body = alertmanager.ok("/api/v2/alerts", {"filter": f'alertname="{alerting.WATCHDOG}"', "active": "true"})
    try:
        alerts = json.loads(body)
    except ValueError:
        raise CheckFailed("Alertmanager /api/v2/alerts answered with invalid JSON") from None
    if not alerts:
        raise CheckFailed(
            f"Alertmanager at {alertmanager.base} has no {alerting.WATCHDOG} alert: Prometheus's rules are not loaded "
            "or its alerts do not arrive (Prometheus sends a new alert within --rules.alert.resend-delay of starting)"
        )
    heartbeat = ctx.config["monitoring"]["alertmanager"]["heartbeat_url"]
    where = f"pinging {urllib.parse.urlsplit(heartbeat).netloc}" if heartbeat else f"no {ALERTING_KEY}.heartbeat_url"
    return f"{alerting.WATCHDOG} active since {alerts[0].get('startsAt', '?')[:19]} ({where})"


@check("monitoring", "node_exporter is scraped", fix=FIX_MONITOR)
def check_node_exporter(ctx: Context) -> str:
    if not ctx.config["monitoring"]["node_exporter"]["url"]:
        raise CheckSkipped("system.monitoring.node_exporter.url is null: no host metrics")
    prom = ctx.need_prometheus()
    data = prometheus_api(prom, "/api/v1/targets", {"state": "active"})
    targets = [t for t in data.get("activeTargets", []) if t.get("labels", {}).get("job") == "node"]
    if not targets:
        raise CheckFailed(f'Prometheus at {prom.base} has no target with job="node" (make monitor adds it)')
    down = [
        f"{t.get('scrapeUrl')}: {t.get('lastError') or t.get('health')}" for t in targets if t.get("health") != "up"
    ]
    if down:
        unscraped = all(t.get("health") == "unknown" for t in targets)
        raise CheckFailed("node_exporter not scraped: " + "; ".join(down), FIX_FIRST_SCRAPE if unscraped else "")
    return ", ".join(f"{t.get('scrapeUrl')} up" for t in targets)
