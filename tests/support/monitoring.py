"""Prometheus, the Pushgateway, node_exporter and Alertmanager, real and on free ports, for the monitoring tests.

Each start_* waits until the program is ready and registers it with a ProcessRegistry; the configs come from the
kit's own renderers (hello/monitoring's promconfig and alerting), the one source.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hello.base.checkout import CHECKOUT
from hello.base.http_client import http_request
from hello.base.proc import free_port
from hello.monitoring import alerting, promconfig
from tests.support.processes import ProcessRegistry, start_ready
from tests.support.tools import require_tool

RULES_DIR = CHECKOUT / "monitoring" / "rules"


def start_pushgateway(registry: ProcessRegistry, directory: Path, port: int | None = None) -> str:
    """A ready Pushgateway on port (a free one by default), logging to directory/pushgateway.log; its URL."""
    binary = require_tool("prometheus-pushgateway")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    start_ready(registry, [binary, f"--web.listen-address=127.0.0.1:{port}"], url, directory / "pushgateway.log")
    return url


def netloc(url: str | None) -> str | None:
    return urllib.parse.urlsplit(url).netloc if url else None


def write_prometheus_config(
    path: Path,
    scrape_interval: float,
    hello_port: int,
    pushgateway_url: str | None,
    prometheus_port: int,
    rules_dir: Path = RULES_DIR,
    alertmanager_url: str | None = None,
    node_url: str | None = None,
) -> Path:
    """A local Prometheus config at path, built by promconfig.prometheus_config (the one source)."""
    config = promconfig.prometheus_config(
        scrape_interval,
        f"127.0.0.1:{hello_port}",
        netloc(pushgateway_url),
        f"127.0.0.1:{prometheus_port}",
        [str(rules_dir / promconfig.RULES_GLOB)],
        netloc(alertmanager_url),
        netloc(node_url),
    )
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Prometheus:
    """A Prometheus started by start_prometheus, and what its config was written from."""

    url: str
    port: int
    config_path: Path
    scrape_interval: float
    pushgateway_url: str | None
    rules_dir: Path
    alertmanager_url: str | None = None
    node_url: str | None = None

    def reload(self, hello_port: int) -> None:
        """Rewrite the config to scrape the service on hello_port and POST /-/reload."""
        write_prometheus_config(
            self.config_path,
            self.scrape_interval,
            hello_port,
            self.pushgateway_url,
            self.port,
            self.rules_dir,
            self.alertmanager_url,
            self.node_url,
        )
        assert http_request(f"{self.url}/-/reload", method="POST")[0] == 200


def start_prometheus(
    registry: ProcessRegistry,
    directory: Path,
    hello_port: int,
    pushgateway_url: str | None,
    scrape_interval: float,
    rules_dir: Path = RULES_DIR,
    port: int | None = None,
    alertmanager_url: str | None = None,
    node_url: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> Prometheus:
    """A ready Prometheus (lifecycle API on, for reload) with its config and data in directory."""
    binary = require_tool("prometheus")
    port = port or free_port()
    prometheus = Prometheus(
        f"http://127.0.0.1:{port}",
        port,
        directory / "prometheus.yml",
        scrape_interval,
        pushgateway_url,
        rules_dir,
        alertmanager_url,
        node_url,
    )
    write_prometheus_config(
        prometheus.config_path,
        scrape_interval,
        hello_port,
        pushgateway_url,
        port,
        rules_dir,
        alertmanager_url,
        node_url,
    )
    args = [
        binary,
        f"--config.file={prometheus.config_path}",
        f"--storage.tsdb.path={directory / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        *extra_args,
    ]
    start_ready(registry, args, prometheus.url, directory / "prometheus.log")
    return prometheus


def prometheus_query(url: str, expr: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The result of an instant query; fails naming expr unless Prometheus answers success."""
    status, _, body = http_request(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=timeout)
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", f"{expr}: {body[:300]!r}"
    return answer["data"]["result"]


# --- Alertmanager, node_exporter and the receivers they deliver to (issue 12) ---


def start_node_exporter(registry: ProcessRegistry, directory: Path, textfile_dir: Path, port: int | None = None) -> str:
    """A ready node_exporter on port (a free one by default) reading textfile_dir (the run dir's metrics/); its URL."""
    binary = require_tool("prometheus-node-exporter")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    textfile_dir.mkdir(parents=True, exist_ok=True)
    args = [binary, f"--web.listen-address=127.0.0.1:{port}", f"--collector.textfile.directory={textfile_dir}"]
    start_ready(registry, args, url, directory / "node_exporter.log", path="/metrics")  # 1.5 has no /-/ready
    return url


def start_alertmanager(registry: ProcessRegistry, directory: Path, system: dict[str, Any], port: int) -> str:
    """A ready Alertmanager on port with the config hello/monitoring/alerting.py renders from system; its URL."""
    binary = require_tool("prometheus-alertmanager")
    url = f"http://127.0.0.1:{port}"
    directory.mkdir(parents=True, exist_ok=True)
    config = alerting.write_alertmanager_config(system, directory)
    args = [
        binary,
        f"--config.file={config}",
        f"--storage.path={directory / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    start_ready(registry, args, url, directory / "alertmanager.log")
    return url
