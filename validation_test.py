"""Prove that the live system named by config.yaml works: the steps of validation_steps.md as checks.

    python validation_test.py                      # every group; lines for humans (-v: details whole)
    python validation_test.py --only service       # what the update protocol runs after a deploy
    python validation_test.py --json               # a list of results for machines
    make validate [ONLY=backup,update]

Groups (validation_steps.md says what each check proves and what to do when it fails):
  service     the server at system.server answers /, /healthz, /readyz, /metrics and counts requests
  monitoring  Prometheus is ready, scrapes the service, answers every dashboard query, has our alert
              rules loaded with none firing; Grafana when system.monitoring.grafana.url is set;
              Alertmanager ready, Prometheus connected to it, a receiver configured, the Watchdog
              in it; node_exporter scraped
  backup      the newest archive is fresh, matches its checksum, reads back, agrees with the backup
              metric, and a scheduler (crontab line, systemd timer or `backup_script.py schedule` loop) exists
  update      /version serves the checkout's HEAD and the last good release, and the last update succeeded
  restarts    the supervisor was not restarted after a crash since the last run (its state file); not in
              the update protocol's `--only service`, so a crash an hour ago never rolls back a good deploy

Each check prints PASS, FAIL or SKIP with its reason; a FAIL also says what to run or set (`; fix: ...`).
Every network wait is bounded by system.validation.timeout; a component that is down fails its checks at
once with a reason naming it. Exit codes: 0 no check failed, 1 some check failed, 2 bad usage or bad config.

Each run also records its results as metrics (hello_world_validation_success, ..._last_run_timestamp_seconds,
..._check_success{group,check}) in <run_dir>/metrics/hello_world_validation.prom and on the Pushgateway
(job hello_world_validation) when system.monitoring.pushgateway.url is set.

Not a pytest module despite its name (the user's design card names it): pytest collects only
test_*.py here, and nothing in this file is named test*.
"""

from __future__ import annotations

import hello.base.venv  # noqa: F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
import argparse
import base64
import functools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from hello.backup import offsite_versions, rclone
from hello.backup.naming import JOB, BackupError, check_checksum, parse_archive
from hello.base import monitor_login, promtext
from hello.base.config import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError, load_config, served_url
from hello.base.config_schema import parse_duration
from hello.base.git import GitError, git
from hello.base.job_metrics import job_gauges, metrics_textfile, record_job
from hello.monitoring import alerting, slo
from hello.monitoring.dashboard import expanded_queries
from hello.monitoring.promconfig import COMPOSE_ALERTMANAGER_TARGET
from hello.platform import units
from hello.server import restarts
from hello.update.deploy_records import DEPLOY_METRIC, recorded_deploy
from hello.update.history import good_release, update_log

log = logging.getLogger("validation")
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser when PyYAML has it: 10x faster

CHECKOUT = Path(__file__).resolve().parent  # the deployed code: `make validate` runs the checkout's own copy
GROUPS = ("service", "monitoring", "backup", "update", "restarts")
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

SCHEDULE_MAX_AGE = {"daily": 26 * 3600.0}  # a daily backup may be this old (one day plus slack)
BACKUP_METRIC_TOLERANCE = 15 * 60.0  # seconds between an archive's name (start) and the metric (end)
VERIFY_TIMEOUT = 600.0  # a full read of a large archive is disk work, not a network wait
SPEC_ALERTS = (
    "HelloWorldDown",
    "HelloWorldHighErrorRate",
    "HelloWorldBackupStale",
    "HelloWorldBackupFailed",
    "HelloWorldUpdateFailed",
)
SPEC_METRICS = ("hello_world_requests_total", "hello_world_request_duration_seconds_bucket", "hello_world_build_info")
JOB_BACKUP, JOB_UPDATE = JOB, "hello_world_update"  # metric prefixes and Pushgateway jobs

# What a FAIL line says to do: a command to run or a config key to set (README "First run" walks through them).
FIX_SERVER = "run `make start`, or `make status`"
FIX_MONITOR = "run `make monitor`"
FIX_GRAFANA = "set system.monitoring.grafana.url"
FIX_BACKUP = "run `make backup`"
FIX_FIRST_SCRAPE = "wait one scrape_interval, then `make validate`"
FIX_SCRAPES = "wait a minute for scrapes, then `make validate`"
FIX_SCHEDULER = "run `make cron | crontab -` or `make systemd-install`"
FIX_RECEIVER = "set system.monitoring.alertmanager.receivers.webhook_url or email.to"
FIX_DEPLOY = "run `make update FORCE=1`"
FIX_OBJECT_LOCK = "lock the bucket; see system.backup.offsite.immutable"


class CheckFailed(Exception):
    """The check found a fault; str() is the reason, fix what to set or run (else the check's own fix)."""

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(reason)
        self.fix = fix


class CheckSkipped(Exception):
    """The check does not apply to this deployment; str() is why."""


@dataclass
class Result:
    group: str
    check: str
    status: str
    detail: str
    duration: float
    fix: str = ""  # a FAIL's remedy: the config key to set or the command to run


# --- talking to components ------------------------------------------------------------------------


def _reason(exc: BaseException, timeout: float) -> str:
    """A short human reason for a failed connection."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, ConnectionError):
        return exc.strerror or type(exc).__name__
    return str(getattr(exc, "reason", None) or exc) or type(exc).__name__


@dataclass
class Endpoint:
    """One HTTP component. After it fails to answer once, later calls fail at once with the same reason."""

    name: str
    base: str
    timeout: float
    headers: dict[str, str] = field(default_factory=dict)
    down: str | None = None
    fix: str = ""  # what to run or set when it does not answer

    def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes, str]:
        """(status, body, content type) of GET base+path; HTTP error statuses are returned, not raised."""
        if self.down:
            raise CheckFailed(self.down, self.fix)
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        request = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")
        except (OSError, ValueError) as exc:  # URLError, refused, timeout, reset, bad URL
            self.down = f"{self.name} at {self.base} unreachable: {_reason(exc, self.timeout)}"
            raise CheckFailed(self.down, self.fix) from None

    def ok(self, path: str, params: dict[str, str] | None = None) -> bytes:
        """The body of a 200 answer; any other status fails the check, naming it."""
        status, body, _ = self.get(path, params)
        if status != 200:
            text = body.decode("utf-8", "replace").strip().splitlines()
            answer = f"{self.name} {path} answered {status}" + (f": {text[0][:200]}" if text else "")
            raise CheckFailed(answer, self.fix)
        return body

    def json(self, path: str, params: dict[str, str] | None = None) -> Any:
        body = self.ok(path, params)
        try:
            return json.loads(body)
        except ValueError:
            raise CheckFailed(f"{self.name} {path} answered with invalid JSON") from None


def prometheus_api(prom: Endpoint, path: str, params: dict[str, str] | None = None) -> Any:
    """The `data` of a Prometheus HTTP API answer; an error answer fails the check with Prometheus's reason."""
    status, body, _ = prom.get(path, params)
    try:
        answer = json.loads(body)
    except ValueError:
        raise CheckFailed(f"{prom.name} {path} answered {status} without JSON (is {prom.base} Prometheus?)") from None
    if answer.get("status") != "success":
        raise CheckFailed(f"{prom.name} {path}: {answer.get('errorType', status)}: {answer.get('error', '')}")
    return answer.get("data")


def _url_with_auth(url: str, name: str, timeout: float) -> Endpoint:
    """An Endpoint; user:password@ in the URL becomes basic auth (Grafana without anonymous access)."""
    parts = urllib.parse.urlsplit(url)
    headers: dict[str, str] = {}
    if parts.username:
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return Endpoint(name, urllib.parse.urlunsplit(parts).rstrip("/"), timeout, headers)


# --- exposition text ------------------------------------------------------------------------------


def metric_values(text: str, name: str, labels: dict[str, str] | None = None) -> list[float]:
    """Values of the samples called name whose labels include `labels`; CheckFailed when the text is unreadable."""
    try:
        return promtext.values(text, name, labels)
    except ValueError as exc:
        raise CheckFailed(f"unreadable metrics text: {exc}") from None


def sample_names(text: str) -> set[str]:
    try:
        return promtext.names(text)
    except ValueError as exc:
        raise CheckFailed(f"unreadable metrics text: {exc}") from None


# --- the run context and the check registry -------------------------------------------------------


def _monitor_login(config: dict[str, Any]) -> dict[str, str]:
    """Alertmanager's and the Pushgateway's login (hello/base/monitor_login.py); a bad password file: none, warned."""
    try:
        return monitor_login.auth_headers(config)
    except monitor_login.AuthError as exc:
        log.warning("%s", exc)
        return {}


class Context:
    """What the checks share: the config, one Endpoint per component, and values computed once."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.timeout = float(config["validation"]["timeout"])
        monitoring = config["monitoring"]
        self.server = Endpoint("hello-world server", served_url(config), self.timeout, fix=FIX_SERVER)
        prom, push, grafana = (monitoring[key]["url"] for key in ("prometheus", "pushgateway", "grafana"))
        self.prometheus = Endpoint("Prometheus", prom, self.timeout, fix=FIX_MONITOR) if prom else None
        self.auth = _monitor_login(config)
        self.pushgateway = Endpoint("Pushgateway", push, self.timeout, self.auth, fix=FIX_MONITOR) if push else None
        self.grafana = _url_with_auth(grafana, "Grafana", self.timeout) if grafana else None
        if self.grafana:
            self.grafana.fix = FIX_GRAFANA
        self.scrape_interval = float(monitoring["prometheus"]["scrape_interval"])
        self.run_dir = Path(config["run_dir"])
        self._cache: dict[str, Any] = {}

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """compute() the first time; later calls give the same value or re-raise the same failure."""
        if key not in self._cache:
            try:
                self._cache[key] = ("value", compute())
            except (CheckFailed, CheckSkipped) as exc:
                self._cache[key] = ("error", exc)
        kind, value = self._cache[key]
        if kind == "error":
            raise value
        return value

    def need_prometheus(self) -> Endpoint:
        if self.prometheus is None:
            raise CheckSkipped("system.monitoring.prometheus.url is null")
        return self.prometheus


Check = Callable[[Context], str]
CHECKS: list[tuple[str, str, Check]] = []
FIXES: dict[tuple[str, str], str] = {}  # (group, check) -> what to do when it fails and its CheckFailed names nothing


def check(group: str, name: str, fix: str = "") -> Callable[[Check], Check]:
    """Register a check: it returns the PASS detail or raises CheckFailed / CheckSkipped; fix: its usual remedy."""

    def register(func: Check) -> Check:
        CHECKS.append((group, name, func))
        FIXES[(group, name)] = fix
        return func

    return register


# --- service --------------------------------------------------------------------------------------


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
        # A worker writes its counts every 0.1 s and before answering /metrics: allow it a moment.
        deadline = time.monotonic() + min(ctx.timeout, 1.0)
        after = count()
        while after == before and time.monotonic() < deadline:
            time.sleep(0.01)
            after = count()
        moved = after - before
        if moved == 1:
            return f'hello_world_requests_total{{method="GET",path="/version",code="200"}} {before:g} -> {after:g}'
        if moved < 1:
            break
    raise CheckFailed(f'one GET /version moved hello_world_requests_total{{path="/version"}} by {moved:g}, not 1')


# --- monitoring -----------------------------------------------------------------------------------


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
        no_backup = any("hello_world_backup_" in query for query in empty) and not _has_archive(ctx)
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


# --- alert delivery: Alertmanager, its receivers, the Watchdog, node_exporter (issue 12) ----------

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


VALIDATION_JOB = "hello_world_validation"  # metric prefix and Pushgateway job of each run's results


def record_results(config: dict[str, Any], results: list[Result], started: float) -> Path:
    """This run as metrics (textfile and Pushgateway, via job_metrics.record_job); SKIPped checks are left out."""
    checks = {(r.group, r.check): 1.0 if r.status == PASS else 0.0 for r in results if r.status != SKIP}
    return record_job(
        config,
        VALIDATION_JOB,
        success=not any(r.status == FAIL for r in results),
        started=started,
        finished=time.time(),
        series={f"{VALIDATION_JOB}_check_success": (("group", "check"), checks)},
    )


# --- backup ---------------------------------------------------------------------------------------


def archive_time(path: Path) -> float:
    """The UTC time in an archive's name (newest_archive found it, so it follows the naming), as Unix time."""
    archive = parse_archive(path)
    assert archive is not None, path
    return archive.created.timestamp()


def newest_archive(ctx: Context) -> Path:
    def find() -> Path:
        destination = Path(ctx.config["backup"]["destination"])
        try:
            found = [archive for entry in os.scandir(destination) if (archive := parse_archive(Path(entry.path)))]
        except FileNotFoundError:
            raise CheckFailed(f"no backup destination {destination} (no backup has run)") from None
        except OSError as exc:
            raise CheckFailed(f"cannot list {destination}: {exc.strerror}") from None
        if not found:
            raise CheckFailed(f"no archive hello-world-*.tar.gz in {destination}")
        return max(found, key=lambda archive: archive.created).path

    return ctx.once("newest archive", find)


def _has_archive(ctx: Context) -> bool:
    try:
        newest_archive(ctx)
    except CheckFailed:
        return False
    return True


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


@check("backup", "the newest archive is fresh", fix=FIX_BACKUP)
def check_archive_age(ctx: Context) -> str:
    archive = newest_archive(ctx)
    schedule = ctx.config["backup"]["schedule"]
    limit = SCHEDULE_MAX_AGE[schedule]
    age = time.time() - archive_time(archive)
    if age > limit:
        raise CheckFailed(f"newest archive {archive.name} is {_hours(age)} old, more than {_hours(limit)} ({schedule})")
    if age < -300:
        raise CheckFailed(f"newest archive {archive.name} is dated {_hours(-age)} in the future (clock?)")
    return f"{archive.name}, {_hours(max(age, 0))} old (limit {_hours(limit)})"


@check("backup", "its checksum matches the sidecar", fix=FIX_BACKUP)
def check_archive_checksum(ctx: Context) -> str:
    try:
        digest = check_checksum(newest_archive(ctx))
    except BackupError as exc:
        raise CheckFailed(str(exc)) from None
    return f"sha256 {digest[:12]}... ok"


@check("backup", "it reads back in full (backup_script.py verify)", fix=FIX_BACKUP)
def check_archive_verify(ctx: Context) -> str:
    archive = newest_archive(ctx)
    script = CHECKOUT / "backup_script.py"
    if not script.is_file():
        raise CheckFailed(f"{script} is missing")
    try:
        done = subprocess.run(
            [sys.executable, str(script), "verify", str(archive)],
            capture_output=True,
            text=True,
            timeout=VERIFY_TIMEOUT,
            cwd=CHECKOUT,
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"backup_script.py verify {archive.name} took more than {VERIFY_TIMEOUT:g}s") from None
    lines = [line for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0:
        raise CheckFailed(
            f"backup_script.py verify {archive.name} exit {done.returncode}: " + (lines[-1] if lines else "no output")
        )
    return lines[-1] if lines else f"{archive.name} verified"


def job_metrics(ctx: Context, job: str) -> tuple[dict[str, float], str]:
    """The newest gauges of a job (hello_world_backup/_update) and where they came from.

    Prometheus first (what the alerts see), then the Pushgateway, then the job's textfile.
    """
    names = job_gauges(job)
    tried = []
    if ctx.prometheus is not None:
        try:
            values: dict[str, float] = {}
            for name in names:
                result = prometheus_api(ctx.prometheus, "/api/v1/query", {"query": f"max({name})"}).get("result")
                if result:
                    values[name] = float(result[0]["value"][1])
            if values:
                return values, f"Prometheus at {ctx.prometheus.base}"
            tried.append(f"Prometheus has no {names.last_run}")
        except CheckFailed as exc:
            tried.append(str(exc))
    if ctx.pushgateway is not None:
        try:
            text = ctx.pushgateway.ok("/metrics").decode("utf-8", "replace")
            values = {n: max(v) for n in names if (v := metric_values(text, n, {"job": job}))}
            if values:
                return values, f"Pushgateway at {ctx.pushgateway.base} (Prometheus lacks it)"
            tried.append(f"the Pushgateway has no job {job}")
        except CheckFailed as exc:
            tried.append(str(exc))
    textfile = ctx.run_dir / "metrics" / f"{job}.prom"
    try:
        text = textfile.read_text(encoding="utf-8")
        values = {n: max(v) for n in names if (v := metric_values(text, n))}
        if values:
            return values, f"textfile {textfile}"
    except OSError:
        pass
    except CheckFailed as exc:  # unreadable: say so, as for the other two sources
        tried.append(f"{textfile}: {exc}")
        return {}, "; ".join(tried)
    tried.append(f"no {textfile}")
    return {}, "; ".join(tried)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@check("backup", "off-host copies refuse a delete (canary)", fix=FIX_OBJECT_LOCK)
def check_offsite_locked(ctx: Context) -> str:
    settings = ctx.config["backup"]["offsite"]
    if settings["immutable"] is None:
        raise CheckSkipped("system.backup.offsite.immutable is null (no object-locked remote)")
    scratch = ctx.run_dir if ctx.run_dir.is_dir() else None
    try:
        with rclone.connect(settings["remote"], settings["rclone_config"], scratch=scratch) as remote:
            offsite_versions.check_canary_locked(remote, scratch)
    except rclone.OffsiteError as exc:
        raise CheckFailed(str(exc)) from None
    days = settings["immutable"]["retention_days"]
    try:
        archive = newest_archive(ctx)
    except CheckFailed:
        return f"a version delete with this host's key was refused (retention {days} days)"
    left = days - (time.time() - archive_time(archive)) / 86400
    return f"a version delete with this host's key was refused; {archive.name} stays locked {left:.1f} more days"


@check("backup", "the backup metric agrees with it", fix=FIX_BACKUP)
def check_backup_metric(ctx: Context) -> str:
    archive = newest_archive(ctx)
    values, source = job_metrics(ctx, JOB_BACKUP)
    gauges = job_gauges(JOB_BACKUP)
    name = gauges.last_success
    if not values:
        raise CheckFailed(f"no backup metric anywhere: {source}")
    if values.get(gauges.success) == 0:
        run = values.get(gauges.last_run)
        raise CheckFailed(f"the last backup run{f' at {_when(run)}' if run else ''} failed ({source})")
    if name not in values:
        raise CheckFailed(f"{name} missing ({source})")
    gap = values[name] - archive_time(archive)
    if not -120 <= gap <= BACKUP_METRIC_TOLERANCE:
        raise CheckFailed(
            f"{name} says {_when(values[name])} but the newest archive {archive.name} is "
            f"{_hours(abs(gap))} {'older' if gap > 0 else 'newer'} ({source})"
        )
    return f"{name} {_when(values[name])}, {gap:.0f}s after the archive's name ({source})"


def backup_cron_lines(crontab_text: str) -> list[str]:
    """The uncommented lines of a crontab that run a backup (`backup_script.py [create]` as `make cron` has it, or
    an older `make backup`); not the drill's or another subcommand's line."""
    lines = [line.strip() for line in crontab_text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    other = r"backup_script\.py\s+(drill|verify|list|prune|restore|pull|schedule)\b"
    runs = [line for line in lines if "backup_script" in line and not re.search(other, line)]
    return runs + [line for line in lines if re.search(r"\bmake\b.*\bbackup\b", line) and line not in runs]


def _cron_lines() -> tuple[list[str], str]:
    """The user's crontab lines that run a backup, and why there are none."""
    crontab = shutil.which("crontab")
    if not crontab:
        return [], "crontab is not installed"
    try:
        done = subprocess.run([crontab, "-l"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"crontab -l failed: {exc}"
    return backup_cron_lines(done.stdout), "no crontab line runs backup_script.py or make backup"


def schedule_loops(directories: set[Path]) -> list[tuple[int, str]]:
    """(PID, command) of running `backup_script.py schedule` loops of code in directories (reads /proc only)."""
    loops = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = [a.decode("utf-8", "replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue  # gone, or not ours to read
        script = next((i for i, a in enumerate(args) if a.endswith("backup_script.py")), None)
        if script is None or "schedule" not in args[script + 1 :]:
            continue
        path = Path(args[script])
        if not path.is_absolute():
            try:
                path = Path(os.readlink(entry / "cwd")) / path
            except OSError:
                continue
        if path.resolve().parent in directories:
            loops.append((int(entry.name), " ".join(args)))
    return loops


@check("backup", "a scheduler exists", fix=FIX_SCHEDULER)
def check_scheduler(ctx: Context) -> str:
    cron, why_not = _cron_lines()
    if cron:
        return f"crontab line: {cron[0]}"
    timer = units.enabled_timer(CHECKOUT, "backup")
    if timer:
        return f"systemd timer: {timer} (enabled)"
    loops = schedule_loops({CHECKOUT, Path(ctx.config["config_file"]).parent})
    if loops:
        pid, command = loops[0]
        return f"schedule loop: PID {pid} ({command})"
    raise CheckFailed(
        f"no scheduler: {why_not}, and no `backup_script.py schedule` process of {CHECKOUT} runs "
        "(install the `make cron` lines or `make systemd-install`, or run `make backup-schedule`)"
    )


# --- update ---------------------------------------------------------------------------------------


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    """hello.base.git.git in the checkout, 30 s at most; GitError when git is missing or hangs."""
    return git(CHECKOUT, *args, timeout=30, check=False)


@check("update", "/version serves the checkout's HEAD", fix=FIX_DEPLOY)
def check_served_commit(ctx: Context) -> str:
    served = ctx.server.json("/version").get("commit", "unknown")
    try:
        head = _git("rev-parse", "HEAD")
    except GitError as exc:
        raise CheckFailed(f"cannot run git in {CHECKOUT}: {exc}") from None
    if head.returncode != 0:
        raise CheckFailed(f"{CHECKOUT} is not a git checkout: {head.stderr.strip()[:200]}")
    head_commit = head.stdout.strip()
    if served == head_commit:
        return f"serving {served[:12]} = HEAD of {CHECKOUT}"
    if not re.fullmatch(r"[0-9a-f]{40}", served):
        raise CheckFailed(f"the server reports commit {served!r}, the checkout is at {head_commit[:12]}")
    if _git("merge-base", "--is-ancestor", served, head_commit).returncode == 0:
        count = _git("rev-list", "--count", f"{served}..{head_commit}").stdout.strip()
        raise CheckFailed(
            f"the checkout's HEAD {head_commit[:12]} is {count} commit(s) ahead of the served "
            f"{served[:12]}: the new code is not deployed (make reload, or make update)"
        )
    if _git("merge-base", "--is-ancestor", head_commit, served).returncode == 0:
        raise CheckFailed(f"the server runs {served[:12]}, newer than the checkout's HEAD {head_commit[:12]}")
    raise CheckFailed(f"the server runs {served[:12]}, which is not an ancestor of HEAD {head_commit[:12]}")


@check("update", "/version serves the last good release", fix=FIX_DEPLOY)
def check_good_release(ctx: Context) -> str:
    good, logfile = good_release(ctx.run_dir), update_log(ctx.run_dir)
    if good is None:
        raise CheckSkipped(f"no update has recorded a tested and verified release yet ({logfile})")
    served = str(ctx.server.json("/version").get("commit", "unknown"))
    if served != good:
        raise CheckFailed(
            f"the server runs {served[:12]}, not {good[:12]}, the release the last update tested and verified "
            f"({logfile}): untested code may be serving (make update FORCE=1 tests and redeploys the checkout)"
        )
    return f"serving {good[:12]}, tested and verified by an update ({logfile})"


def last_update_log(ctx: Context) -> dict[str, Any] | None:
    """The last JSON line of <run_dir>/update.log, or None when there is none."""
    path = ctx.run_dir / "update.log"
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            return entry
    return None


def update_never_ran(ctx: Context) -> bool:
    return ctx.once("update never ran", lambda: last_update_log(ctx) is None and not job_metrics(ctx, JOB_UPDATE)[0])


@check("update", "the last update succeeded", fix="see `make history ALL=1`, then run `make update`")
def check_last_update(ctx: Context) -> str:
    entry = last_update_log(ctx)
    if entry is not None:
        outcome = str(entry.get("outcome", "?"))
        commits = f"{entry.get('from')!s:.12} -> {entry.get('to')!s:.12}" if entry.get("to") else "no target commit"
        what = f"{commits} at {entry.get('time', '?')}"
        if entry.get("exit") != 0:  # update_protocol.py has always logged its exit code
            why = entry.get("reason") or f"see {ctx.run_dir / 'update.log'}"
            raise CheckFailed(f"the last update ({what}) ended {outcome!r}: {why}; `make history ALL=1` shows it")
        return f"{outcome}: {what} ({ctx.run_dir / 'update.log'})"
    values, source = job_metrics(ctx, JOB_UPDATE)
    if not values:
        raise CheckSkipped(f"no update has ever run ({source}; no {ctx.run_dir / 'update.log'})")
    gauges = job_gauges(JOB_UPDATE)
    run = values.get(gauges.last_run)
    when = f" at {_when(run)}" if run else ""
    if values.get(gauges.success) == 0:
        raise CheckFailed(f"the last update{when} failed ({gauges.success} 0, {source})")
    return f"succeeded{when} ({source})"


# --- restarts -------------------------------------------------------------------------------------


@check(
    "restarts", "no restart after a crash since the last run", fix="read the crash in hello_world.log (system.run_dir)"
)
def check_restarts(ctx: Context) -> str:
    """The supervisor's start history (its state file) since validation last looked: a crash loop shows."""
    ok, detail = restarts.report_and_mark_seen(ctx.run_dir, first_window=ctx.config["validation"]["interval"] or 900.0)
    if ok is None:
        raise CheckSkipped(detail)
    if not ok:
        raise CheckFailed(detail)
    return detail


# --- running and reporting ------------------------------------------------------------------------


def run_checks(ctx: Context, groups: list[str]) -> list[Result]:
    results = []
    for group, name, func in CHECKS:
        if group not in groups:
            continue
        started = time.monotonic()
        fix = ""
        try:
            status, detail = PASS, func(ctx)
        except CheckSkipped as exc:
            status, detail = SKIP, str(exc)
        except CheckFailed as exc:
            status, detail = FAIL, str(exc)
            fix = exc.fix or FIXES.get((group, name)) or f"see validation_steps.md, group {group}"
        except Exception as exc:  # noqa: BLE001 - a bug in one check must not hide the others
            log.debug("check %s/%s crashed", group, name, exc_info=True)
            status, detail = FAIL, f"internal error: {type(exc).__name__}: {exc}"
            fix = "a bug: `validation_test.py -v` logs it"
        results.append(Result(group, name, status, detail, time.monotonic() - started, fix))
    return results


def _shown_duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


LINE_WIDTH = 120  # a terminal's width: longer details are cut here (-v or --json gives them whole)


def _fit(text: str, width: int = LINE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def render_table(results: list[Result], verbose: bool = False) -> str:
    """One line per check (`STATUS  group  check: detail`); a FAIL line says what to do and its reason follows.

    Lines are cut at LINE_WIDTH unless verbose, which adds each check's duration.
    """
    group_width = max((len(r.group) for r in results), default=0)
    fit = (lambda text: text) if verbose else _fit
    lines = []
    for r in results:
        took = f" ({_shown_duration(r.duration)})" if verbose else ""
        head = f"{r.status}  {r.group.ljust(group_width)}  {r.check}{took}"
        if r.status == FAIL:
            lines.append(f"{head}; fix: {r.fix}")  # whole, never cut: the fixes are short
            lines.append(fit(" " * (len(r.status) + 2) + r.detail))
        else:
            lines.append(fit(f"{head}: {r.detail}"))
    counts = {status: sum(r.status == status for r in results) for status in (PASS, FAIL, SKIP)}
    total = sum(r.duration for r in results)
    lines.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped in {_shown_duration(total)}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every script here
        self.exit(EXIT_CONFIG, f"{self.prog}: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="validation_test.py", description="Check the live system named by config.yaml.")
    parser.add_argument("--json", action="store_true", help="print a JSON list of results instead of a table")
    parser.add_argument("--only", metavar="GROUP[,GROUP]", help=f"run only these groups of {', '.join(GROUPS)}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="whole details and durations; debug logs to stderr"
    )
    args = parser.parse_args(argv)
    if args.only is None:
        args.groups = list(GROUPS)
    else:
        chosen = [part.strip() for part in args.only.split(",") if part.strip()]
        unknown = [part for part in chosen if part not in GROUPS]
        if unknown or not chosen:
            parser.error(
                f"--only: unknown group {', '.join(map(repr, unknown)) or repr(args.only)} "
                f"(choose from {', '.join(GROUPS)})"
            )
        args.groups = [group for group in GROUPS if group in chosen]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        config = load_config()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    started = time.time()
    results = run_checks(Context(config), args.groups)
    record_results(config, results, started)
    if args.json:
        print(json.dumps([asdict(r) | {"duration": round(r.duration, 4)} for r in results], indent=2))
    else:
        print(render_table(results, args.verbose))
    return EXIT_FAILED if any(r.status == FAIL for r in results) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
