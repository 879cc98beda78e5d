"""Group `monitoring`, Prometheus's side: Prometheus is ready and scrapes the service, answers every dashboard query,
has our alert and SLO rules loaded with none of our alerts firing; Grafana when system.monitoring.grafana.url is set.
(Alert delivery, the rest of the group, is hello/validation/alert_delivery.py.)"""

from __future__ import annotations

import functools
import json
import re
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

import yaml

from hello.base.config_schema import parse_duration
from hello.base.job_metrics import metrics_textfile
from hello.monitoring import alerting, slo
from hello.monitoring.dashboard import expanded_queries
from hello.update.deploy_records import DEPLOY_METRIC, recorded_deploy
from hello.validation.components import Context, Endpoint, prometheus_api
from hello.validation.core import (
    CHECKOUT,
    FIX_BACKUP,
    FIX_FIRST_SCRAPE,
    FIX_GRAFANA,
    FIX_MONITOR,
    FIX_SCRAPES,
    SAFE_LOADER,
    CheckFailed,
    CheckSkipped,
)
from hello.validation.last_runs import JOB_UPDATE, has_archive, update_never_ran
from hello.validation.registry import check

SPEC_ALERTS = (
    "HelloWorldDown",
    "HelloWorldHighErrorRate",
    "HelloWorldBackupStale",
    "HelloWorldBackupFailed",
    "HelloWorldUpdateFailed",
)


@check("monitoring", "Prometheus is ready", fix=FIX_MONITOR)
def check_prometheus_ready(ctx: Context) -> str:
    prom = ctx.need_prometheus()
    prom.ok("/-/ready")
    return f"{prom.base}/-/ready 200"


def _seconds(text: str | None, default: float) -> float:
    """Seconds of a Prometheus duration like '15s' or '1m30s'; default when absent or odd."""
    try:
        return parse_duration(text)
    except ValueError:
        return default


def _age(iso: str) -> float | None:
    """Seconds since a Prometheus RFC 3339 timestamp (nanoseconds trimmed), None if never."""
    if not iso or iso.startswith("0001-"):
        return None
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", iso).replace("Z", "+00:00")
    try:
        return time.time() - datetime.fromisoformat(trimmed).timestamp()
    except ValueError:
        return None


@check("monitoring", "the hello-world target is up and fresh", fix="run `make monitor` after `make start`")
def check_target(ctx: Context) -> str:
    prom = ctx.need_prometheus()
    data = prometheus_api(prom, "/api/v1/targets", {"state": "active"})
    targets = [t for t in data.get("activeTargets", []) if t.get("labels", {}).get("job") == "hello-world"]
    if not targets:
        raise CheckFailed(f'Prometheus at {prom.base} has no active target with job="hello-world"')
    server_port = str(ctx.config["server"]["port"])
    problems, good = [], []
    for target in targets:
        where = target.get("scrapeUrl") or target.get("labels", {}).get("instance", "?")
        interval = _seconds(target.get("scrapeInterval"), ctx.scrape_interval)
        age = _age(target.get("lastScrape", ""))
        port = urllib.parse.urlsplit(where).port if "://" in where else None
        hint = f" (the configured server listens on port {server_port})" if port and str(port) != server_port else ""
        if target.get("health") != "up":
            error = target.get("lastError") or "not scraped yet"
            problems.append(f"target {where} is {target.get('health', 'unknown')}: {error}{hint}")
        elif age is None or age > 3 * interval:
            shown = "never" if age is None else f"{age:.0f}s ago"
            problems.append(f"target {where} last scraped {shown}, more than 3 scrape intervals ({3 * interval:g}s)")
        else:
            good.append(f"{where} up, scraped {age:.1f}s ago")
    if problems:
        unscraped = all(t.get("health") == "unknown" for t in targets)
        raise CheckFailed("; ".join(problems), FIX_FIRST_SCRAPE if unscraped else "")
    return "; ".join(good)


def dashboard_path(ctx: Context) -> Path:
    """This repo's dashboard JSON: <dashboard>.json, else the file whose uid is grafana.dashboard."""
    name = ctx.config["monitoring"]["grafana"]["dashboard"]
    folder = CHECKOUT / "monitoring" / "grafana" / "dashboards"
    if (folder / f"{name}.json").is_file():
        return folder / f"{name}.json"
    for path in sorted(folder.glob("*.json")):
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("uid") == name:
                return path
        except (OSError, ValueError):
            continue
    raise CheckFailed(f"no dashboard {name}.json (or uid {name!r}) in {folder}")


def slo_without_budget(ctx: Context, prom: Endpoint) -> list[str]:
    """The record prefixes of the objectives with no budget left yet: Prometheus' SLO windows hold none of
    their user traffic (a fresh deployment; no 5xx series yet for availability)."""

    def unknown() -> list[str]:
        objectives = slo.objectives(ctx.config)
        empty = [o for o in objectives if not prometheus_api(prom, "/api/v1/query", {"query": o.budget_left})["result"]]
        return [f"{slo.RECORD_PREFIX}{objective.sli}:" for objective in empty]

    return ctx.once("slo without budget", unknown)


@check("monitoring", "every dashboard panel's query returns data", fix=FIX_SCRAPES)
def check_dashboard(ctx: Context) -> str:
    prom = ctx.need_prometheus()
    path = dashboard_path(ctx)
    try:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckFailed(f"cannot read the dashboard {path}: {exc}") from None
    queries = expanded_queries(dashboard, ctx.scrape_interval)
    if not queries:
        raise CheckFailed(f"{path.name} has no Prometheus queries")
    empty, excused = [], []
    for title, expr in queries:
        data = prometheus_api(prom, "/api/v1/query", {"query": expr, "timeout": f"{ctx.timeout:g}s"})
        if data.get("resultType") in ("vector", "matrix") and not data.get("result"):
            # A fresh deployment has never run an update: its panel has nothing to show yet, and that is no fault.
            never = "hello_world_update_" in expr and update_never_ran(ctx)
            # No deploy yet (or none since the deploy metric exists): the Deploys panel and annotation are empty.
            never = never or (DEPLOY_METRIC in expr and not recorded_deploy(metrics_textfile(ctx.config, JOB_UPDATE)))
            # No user traffic in the SLO windows yet (a fresh deployment): the SLO row has nothing to judge.
            never = never or any(prefix in expr for prefix in slo_without_budget(ctx, prom))
            (excused if never else empty).append(f"{title!r}: {expr}")
    if empty:
        no_backup = any("hello_world_backup_" in query for query in empty) and not has_archive(ctx)
        raise CheckFailed(
            f"{len(empty)} of {len(queries)} queries returned no data: " + "; ".join(empty),
            f"{FIX_BACKUP}, then wait a minute for scrapes" if no_backup else "",
        )
    note = f" ({len(excused)} empty: no update, deploy or user traffic recorded yet)" if excused else ""
    return f"{len(queries) - len(excused)} queries of {path.name} returned data{note}"


@functools.cache
def expected_alerts() -> list[str]:
    """The alert names of this repo's rule files (monitoring/rules/*.rules.yml, as make monitor loads), else SPEC's."""
    names = []
    for path in sorted((CHECKOUT / "monitoring" / "rules").glob("*.rules.yml")):
        try:
            document = yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER) or {}
            groups = document.get("groups") or []
        except (OSError, yaml.YAMLError, AttributeError):
            continue  # an unreadable file: the rules check then names what Prometheus lacks
        for group in groups:
            names += [rule["alert"] for rule in group.get("rules") or [] if "alert" in rule]
    return list(dict.fromkeys(names)) or list(SPEC_ALERTS)  # a rule may come in variants of one name


@check("monitoring", "our alert rules are loaded", fix="run `make monitor` (it reloads monitoring/rules/)")
def check_rules_loaded(ctx: Context) -> str:
    prom = ctx.need_prometheus()
    data = prometheus_api(prom, "/api/v1/rules", {"type": "alert"})
    loaded = {rule.get("name") for group in data.get("groups", []) for rule in group.get("rules", [])}
    expected = expected_alerts()
    missing = [name for name in expected if name not in loaded]
    if missing:
        raise CheckFailed(f"Prometheus at {prom.base} has not loaded {', '.join(missing)} (monitoring/rules/*.yml)")
    return f"{len(expected)} loaded: {', '.join(expected)}"


@check("monitoring", "SLO rules are loaded: error budget left over 30 days", fix=FIX_MONITOR)
def check_slo_budget(ctx: Context) -> str:
    """The recording rules of system.slo (monitoring/rules/hello_world_slo.rules.yml) are loaded, with this
    config's objectives; reports each objective's budget left (issue 25)."""
    prom = ctx.need_prometheus()
    rules = prometheus_api(prom, "/api/v1/rules", {"type": "record"})
    loaded = {rule.get("name") for group in rules.get("groups", []) for rule in group.get("rules", [])}
    where = f"monitoring/rules/{slo.RULES_FILE.name}"
    parts = []
    for objective in slo.objectives(ctx.config):
        missing = [name for name in (objective.budget_left, slo.OBJECTIVE_RECORD) if name not in loaded]
        if missing:
            raise CheckFailed(f"Prometheus at {prom.base} has not loaded the SLO rules {', '.join(missing)} ({where})")
        query = f'{slo.OBJECTIVE_RECORD}{{slo="{objective.slo}"}}'
        recorded = prometheus_api(prom, "/api/v1/query", {"query": query, "timeout": f"{ctx.timeout:g}s"})["result"]
        values = {round(float(sample["value"][1]), 12) for sample in recorded}
        if values and values != {round(objective.objective, 12)}:
            raise CheckFailed(
                f"Prometheus' {objective.slo} objective is {', '.join(f'{v:.4%}' for v in sorted(values))}, "
                f"config.yaml says {objective.objective:.4%}: run `make k8s-render` and reload Prometheus"
            )
        query = {"query": objective.budget_left, "timeout": f"{ctx.timeout:g}s"}
        budget = prometheus_api(prom, "/api/v1/query", query)["result"]
        shown = ", ".join(f"{s['metric'].get('job', '?')} {float(s['value'][1]):.1%}" for s in budget)
        parts.append(f"{objective.slo} {objective.objective:.2%}: {shown or 'no user traffic yet'}")
    return "budget left: " + "; ".join(parts)


# Firing, but no fault of the system: the Watchdog always fires; the validation alerts report on this very run.
NOT_FAULTS = {alerting.WATCHDOG, "HelloWorldValidationFailed", "HelloWorldValidationStale"}


@check("monitoring", "none of our alerts is firing", fix="follow each alert's runbook_url (docs/runbooks.md)")
def check_alerts(ctx: Context) -> str:
    prom = ctx.need_prometheus()
    ours = set(expected_alerts()) - NOT_FAULTS
    alerts = prometheus_api(prom, "/api/v1/alerts").get("alerts", [])
    mine = [a for a in alerts if a.get("labels", {}).get("alertname", "") in ours]
    firing = sorted({a["labels"]["alertname"] for a in mine if a.get("state") == "firing"})
    pending = sorted({a["labels"]["alertname"] for a in mine if a.get("state") == "pending"})
    if firing:
        raise CheckFailed("firing: " + ", ".join(firing))
    return "none firing" + (f" (pending: {', '.join(pending)})" if pending else "")


@check("monitoring", "Grafana: healthy, our dashboard, a healthy datasource", fix=FIX_GRAFANA)
def check_grafana(ctx: Context) -> str:
    grafana = ctx.grafana
    if grafana is None:
        raise CheckSkipped("system.monitoring.grafana.url is null: no Grafana to check")
    health = grafana.json("/api/health")
    if health.get("database") != "ok":
        raise CheckFailed(f"Grafana at {grafana.base} reports database {health.get('database')!r}")
    uid = ctx.config["monitoring"]["grafana"]["dashboard"]
    status, _, _ = grafana.get(f"/api/dashboards/uid/{urllib.parse.quote(uid)}")
    if status in (401, 403):
        raise CheckFailed(f"Grafana at {grafana.base} refused ({status}): put user:password in grafana.url")
    if status != 200:
        raise CheckFailed(f"Grafana at {grafana.base} has no dashboard uid {uid!r} ({status})")
    sources = [s for s in grafana.json("/api/datasources") if s.get("type") == "prometheus"]
    if not sources:
        raise CheckFailed(f"Grafana at {grafana.base} has no Prometheus datasource")
    for source in sources:
        status, body, _ = grafana.get(f"/api/datasources/uid/{source.get('uid')}/health")
        if status != 200:
            text = body.decode("utf-8", "replace")[:200]
            raise CheckFailed(f"Grafana datasource {source.get('name')!r} is unhealthy ({status}): {text}")
    names = ", ".join(repr(s.get("name")) for s in sources)
    return f"{grafana.base} {health.get('version', '?')}: database ok, dashboard {uid}, datasource {names} healthy"
