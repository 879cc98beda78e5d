"""Prometheus's config, rendered from config.yaml: the one source of the compose and the local variant.

`prometheus_config()` builds both; they differ only in their targets and rule file paths:
- monitoring/prometheus.yml (COMPOSE_CONFIG, the compose stack's, targets by service name) is the committed
  output of `scripts/monitor.py render compose --write`; `compose_config_is_current()` is what
  `render compose --check` and `make lint` check;
- the local variant (`local_config_text()`, targets on 127.0.0.1 at the ports of config.yaml's URLs and the
  hello-world server that runs) is what `make monitor` runs.
The job names (HELLO_JOB, ...) are the ones the rules, the dashboard and deploy/kubernetes select.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from hello.base.checkout import CHECKOUT
from hello.base.config import RunFiles, server_url
from hello.base.monitor_login import USER, password_path
from hello.monitoring.alerting import format_duration

COMPOSE_CONFIG = CHECKOUT / "monitoring" / "prometheus.yml"
RULES_DIR = CHECKOUT / "monitoring" / "rules"
RULES_GLOB = "*.rules.yml"
HELLO_JOB = "hello-world"
COMPOSE_HELLO_TARGET = "hello-world:80"  # the seed's target: the compose service on port 80
COMPOSE_PUSHGATEWAY_TARGET = "pushgateway:9091"
COMPOSE_PROMETHEUS_TARGET = "localhost:9090"
COMPOSE_ALERTMANAGER_TARGET = "alertmanager:9093"
COMPOSE_NODE_TARGET = "node-exporter:9100"
COMPOSE_PASSWORD_FILE = "/etc/prometheus/secrets/monitor-password"  # docker-compose.yml mounts run/monitor's there
ALERTMANAGER_JOB, NODE_JOB = "alertmanager", "node"
PACKAGES = "prometheus prometheus-pushgateway prometheus-alertmanager prometheus-node-exporter"


class MonitorError(Exception):
    """Monitoring cannot be configured, started or stopped; str() is the one-line reason."""


class MonitorConfigError(MonitorError):
    """config.yaml does not say enough to run monitoring (exit 2)."""


def prometheus_config(
    scrape_interval: float,
    hello_target: str,
    pushgateway_target: str | None,
    prometheus_target: str,
    rule_files: list[str],
    alertmanager_target: str | None = None,
    node_target: str | None = None,
    password_file: str | None = None,
) -> dict[str, Any]:
    """The Prometheus config both variants share; only the targets, the rule file paths and the password file differ.

    The Pushgateway and Alertmanager want a login (hello/base/monitor_login.py): password_file holds its password.
    """
    interval = format_duration(scrape_interval)

    def auth() -> dict[str, Any]:  # a new mapping each time: no YAML anchors in the rendered file
        return {"basic_auth": {"username": USER, "password_file": password_file}} if password_file else {}

    scrape_configs: list[dict[str, Any]] = [
        {"job_name": HELLO_JOB, "static_configs": [{"targets": [hello_target]}]},
    ]
    if pushgateway_target:
        # honor_labels keeps the job label the backup and update scripts push (hello_world_backup, ...).
        scrape_configs.append(
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                **auth(),
                "static_configs": [{"targets": [pushgateway_target]}],
            }
        )
    scrape_configs.append({"job_name": "prometheus", "static_configs": [{"targets": [prometheus_target]}]})
    if alertmanager_target:  # its own metrics: notifications failing
        scrape_configs.append(
            {"job_name": ALERTMANAGER_JOB, **auth(), "static_configs": [{"targets": [alertmanager_target]}]}
        )
    if node_target:  # the host, and the job textfiles of <run_dir>/metrics
        scrape_configs.append({"job_name": NODE_JOB, "static_configs": [{"targets": [node_target]}]})
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": rule_files,
    }
    if alertmanager_target:
        config["alerting"] = {"alertmanagers": [{**auth(), "static_configs": [{"targets": [alertmanager_target]}]}]}
    config["scrape_configs"] = scrape_configs
    return config


def render(config: dict[str, Any], header: str) -> str:
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def compose_config_text(system: dict[str, Any]) -> str:
    """monitoring/prometheus.yml: targets by compose service name, rules relative to the file."""
    config = prometheus_config(
        system["monitoring"]["prometheus"]["scrape_interval"],
        COMPOSE_HELLO_TARGET,
        COMPOSE_PUSHGATEWAY_TARGET,
        COMPOSE_PROMETHEUS_TARGET,
        [f"rules/{RULES_GLOB}"],  # relative to this file: monitoring/rules here, /etc/prometheus/rules in compose
        COMPOSE_ALERTMANAGER_TARGET if system["monitoring"]["alertmanager"]["url"] else None,
        COMPOSE_NODE_TARGET if system["monitoring"]["node_exporter"]["url"] else None,
        COMPOSE_PASSWORD_FILE,
    )
    # The committed file's header, kept byte for byte (render compose --check compares whole files).
    header = (
        "# Prometheus config of the docker compose stack. GENERATED from config.yaml by\n"
        "# `python -m scripts.monitor render compose --write`: edit config.yaml or hello/monitoring/promconfig.py,\n"
        "# then rerun.\n"
        "# `make lint` fails when this file no longer matches. `make monitor` uses the local variant.\n"
    )
    return render(config, header)


def compose_config_is_current(system: dict[str, Any]) -> bool:
    """monitoring/prometheus.yml is what compose_config_text makes of system (`render compose --check`)."""
    return COMPOSE_CONFIG.exists() and COMPOSE_CONFIG.read_text() == compose_config_text(system)


def url_port(url: str, key: str) -> int:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme)
    if port is None:
        raise MonitorConfigError(f"{key}: cannot tell the port of {url!r}")
    return port


def local_ports(system: dict[str, Any]) -> tuple[int, int | None]:
    """(Prometheus port, Pushgateway port or None) from config.yaml's URLs."""
    prometheus_url = system["monitoring"]["prometheus"]["url"]
    if not prometheus_url:
        raise MonitorConfigError("system.monitoring.prometheus.url is null: set it to run Prometheus locally")
    return url_port(prometheus_url, "system.monitoring.prometheus.url"), optional_port(system, "pushgateway")


def optional_port(system: dict[str, Any], component: str) -> int | None:
    """The port of system.monitoring.<component>.url, None when that url is null (the component is not run)."""
    url = system["monitoring"][component]["url"]
    return url_port(url, f"system.monitoring.{component}.url") if url else None


def scrape_target(system: dict[str, Any]) -> tuple[str, str]:
    """(host:port of the hello-world target, why): the running server's URL, else config.yaml's."""
    files = RunFiles(Path(system["run_dir"]))
    url = files.read_state().get("url")
    if url and files.running_pid():
        return urlsplit(url).netloc, f"the running server (PID {files.running_pid()}, {files.statefile})"
    configured = urlsplit(server_url(system)).netloc
    return configured, f"system.server of {system['config_file']} (no server runs)"


def local_config_text(system: dict[str, Any]) -> str:
    """The config `make monitor` runs: the same jobs and rules, targets on 127.0.0.1 at config.yaml's ports."""
    prometheus_port, pushgateway_port = local_ports(system)
    alertmanager_port, node_port = optional_port(system, "alertmanager"), optional_port(system, "node_exporter")
    config = prometheus_config(
        system["monitoring"]["prometheus"]["scrape_interval"],
        scrape_target(system)[0],
        f"127.0.0.1:{pushgateway_port}" if pushgateway_port else None,
        f"127.0.0.1:{prometheus_port}",
        [str(RULES_DIR / RULES_GLOB)],
        f"127.0.0.1:{alertmanager_port}" if alertmanager_port else None,
        f"127.0.0.1:{node_port}" if node_port else None,
        str(password_path(system)),
    )
    header = f"# GENERATED by scripts/monitor.py from {system['config_file']}: the local variant of make monitor.\n"
    return render(config, header)
