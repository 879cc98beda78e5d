"""Shared test helpers: free ports, deadlines, configs, and real processes cleaned up by PID.

Tests start real programs (the server, Prometheus, git). Every process a test
starts is registered with the `processes` fixture, which kills its whole
process group by PID at teardown. Nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

# The suite runs wherever an operator runs it: under `make update` (a parent make's MAKEFLAGS and MAKELEVEL make
# every child make print "make[2]: Entering directory ..."), under cron, with HELLO_CONFIG naming a deployment's
# file. Each test sets the environment it needs; nothing inherited steers the session.
INHERITED_ENV = ("HELLO_CONFIG", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
for _name in INHERITED_ENV:
    os.environ.pop(_name, None)

REPO = Path(__file__).resolve().parent
# The update tests' scratch deployment fixtures (`deployment`, `site`); the e2e tier's marking and `podman_host`.
pytest_plugins = ["tests.support.deployment", "tests.support.e2e"]
from hello.base import proc as hello_proc  # noqa: E402
from hello.base.proc import free_port  # noqa: E402 - re-exported for the tests
from hello.monitoring import promconfig  # noqa: E402 - the one source of the Prometheus config
from hello.monitoring.webhook_sink import WebhookSink  # noqa: E402 - the webhook receiver of the alerting tests

PYTHON = sys.executable
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
T = TypeVar("T")
RULES_DIR = REPO / "monitoring" / "rules"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fast: the in-process tier of `make test-fast`: no real servers, the inner loop")
    config.addinivalue_line(
        "markers", "update_e2e: the shipped `make update` end to end, one whole nested suite run (deselectable)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end update (a whole nested suite) first: under xdist one worker runs it beside all the rest."""
    items.sort(key=lambda item: item.get_closest_marker("update_e2e") is None)


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """hello.base.proc.wait_until, failing the test (AssertionError) naming `what` at the deadline."""
    try:
        return hello_proc.wait_until(predicate, timeout, what, interval)
    except hello_proc.TimedOut as exc:
        raise AssertionError(str(exc)) from None


def require_tool(name: str, package: str | None = None) -> str:
    """The path of a program the test needs: skip loudly without it, but fail in CI, which must install it.
    The sbin folders too: cron's bare PATH (/usr/bin:/bin) leaves out where runuser and debootstrap live."""
    path = shutil.which(name, path=f"{os.environ.get('PATH', os.defpath)}:/usr/sbin:/sbin")
    if path:
        return path
    reason = f"{name} is not installed (Debian package {package or name}); .ci/run installs it"
    if IN_CI:
        pytest.fail(f"CI must have {reason}")
    pytest.skip(reason)


def http_get(url: str, timeout: float = 5.0, method: str = "GET", headers: dict[str, str] | None = None):
    """(status, headers, body) of one request; HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = (
            deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def write_config(directory: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A config.yaml in directory: the repo's, with run_dir inside directory, then the overrides (under `system`)."""
    directory.mkdir(parents=True, exist_ok=True)
    system = yaml.safe_load((REPO / "config.yaml").read_text())["system"]
    system = deep_merge(system, {"run_dir": str(directory / "run")})
    system = deep_merge(system, overrides or {})
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump({"system": system}, sort_keys=False))
    return path


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group led by pid (our children start their own session), or pid alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class ProcessRegistry:
    """Processes a test started, by PID: each is killed with its group at teardown."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.popens: list[subprocess.Popen] = []

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(args, **kwargs)
        self.popens.append(proc)
        self.pids.append(proc.pid)
        return proc

    def adopt(self, pid: int) -> None:
        """Register a process started indirectly (e.g. by `make start`, read from its pidfile)."""
        self.pids.append(pid)

    def cleanup(self) -> None:
        for pid in reversed(self.pids):
            kill_group(pid)
        for proc in self.popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@pytest.fixture
def processes() -> Iterator[ProcessRegistry]:
    registry = ProcessRegistry()
    try:
        yield registry
    finally:
        registry.cleanup()


class HelloServer:
    """A real `python hello_world.py` in the foreground, on a free port, with its own config and run dir."""

    def __init__(self, registry: ProcessRegistry, directory: Path, workers: int = 1, overrides: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server = {"host": "127.0.0.1", "port": self.port, "workers": workers}
        self.config_path = write_config(directory, deep_merge({"server": server}, overrides or {}))
        self.env = {**os.environ, "HELLO_CONFIG": str(self.config_path)}
        self.log_path = directory / "server.log"
        with open(self.log_path, "ab") as log:
            self.proc = registry.start(
                [PYTHON, str(REPO / "hello_world.py")], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log()}")
            return http_get(self.url + "/readyz", timeout=1)[0] == 200

        wait_until(ready, timeout, f"{self.url}/readyz")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def hello_server(processes: ProcessRegistry, tmp_path: Path) -> Callable[..., HelloServer]:
    """Factory: hello_server(workers=1, overrides={...}) starts a server and waits until it is ready."""
    count = 0

    def start(workers: int = 1, overrides: dict | None = None) -> HelloServer:
        nonlocal count
        count += 1
        return HelloServer(processes, tmp_path / f"server{count}", workers, overrides)

    return start


# --- Prometheus and the Pushgateway, real and on free ports ---


def start_ready(
    registry: ProcessRegistry, args: list[str], url: str, log_path: Path, timeout: float = 30, path: str = "/-/ready"
) -> subprocess.Popen:
    """Start a program logging to log_path and wait until url+path answers 200; fail at once if it exits."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        proc = registry.start(args, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{args[0]} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        return http_get(url + path, timeout=1)[0] == 200

    wait_until(ready, timeout, url + path)
    return proc


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
        assert http_get(f"{self.url}/-/reload", method="POST")[0] == 200


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
    status, _, body = http_get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=timeout)
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
    from hello.monitoring import alerting

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


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    sink = WebhookSink()
    try:
        yield sink
    finally:
        sink.close()


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 1 MiB tmpfs mount, or a skip saying why there can be none."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
