"""The local monitoring stack: Prometheus, Alertmanager, the Pushgateway and node_exporter as processes.

`start(system)` writes the local configs (hello/promconfig.py, hello/alerting.py) into <run_dir>/monitor,
starts from the host's binaries what is not running yet, each in its own session, and returns once each
answers (/-/ready); a running Prometheus or Alertmanager is told to reload. The PIDs go to
<run_dir>/monitor/monitor.json; `stop(system)` stops what it recorded, by PID (checking the PID still runs
the binary it started). scripts/monitor.py is the command over it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hello import alerting
from hello.jobs import http_get, pid_alive, write_atomically
from hello.proc import tail, terminate
from hello.promconfig import PACKAGES, MonitorError, local_config_text, local_ports, optional_port

log = logging.getLogger("monitor")

RESEND_DELAY = "10s"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Debian prefixes some binaries with prometheus-; upstream tarballs do not.
BINARIES = {
    "prometheus": ("prometheus",),
    "pushgateway": ("prometheus-pushgateway", "pushgateway"),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
    "node_exporter": ("prometheus-node-exporter", "node_exporter"),
}
READY_PATHS = {"node_exporter": "/metrics"}  # node_exporter 1.5 has no /-/ready


def monitor_dir(system: dict[str, Any]) -> Path:
    return Path(system["run_dir"]) / "monitor"


def textfile_dir(system: dict[str, Any]) -> Path:
    """Where the jobs write their outcomes (hello.jobs.record_job) and node_exporter reads them."""
    return Path(system["run_dir"]) / "metrics"


def binary_paths(names: list[str]) -> dict[str, str]:
    """Each program's path on this host, else where its Debian package puts it (for units rendered elsewhere)."""
    return {name: find_binary(name) or f"/usr/bin/{BINARIES[name][0]}" for name in names}


def wanted(system: dict[str, Any]) -> list[str]:
    """The programs config.yaml asks for: Prometheus, and each of the others whose url is not null."""
    local_ports(system)  # Prometheus needs a url: MonitorConfigError otherwise
    return ["prometheus"] + [n for n in ("pushgateway", "alertmanager", "node_exporter") if optional_port(system, n)]


def find_binary(name: str) -> str | None:
    for candidate in BINARIES[name]:
        path = shutil.which(candidate)
        if path:
            return path
    return None


def require_binaries(names: list[str]) -> dict[str, str]:
    found = {name: find_binary(name) for name in names}
    missing = [" or ".join(BINARIES[name]) for name, path in found.items() if not path]
    if missing:
        raise MonitorError(
            f"{', '.join(missing)} not found on PATH: install the Debian packages {PACKAGES} "
            f"(sudo apt-get install {PACKAGES})"
        )
    return {name: path for name, path in found.items() if path}


def is_ours(pid: int, binary: str) -> bool:
    """The PID runs, and still runs the binary we started (PIDs get reused after a reboot or a crash)."""
    if not pid_alive(pid):
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return True  # no /proc: trust the PID file
    return Path(argv0).name == Path(binary).name


def read_state(directory: Path) -> dict[str, dict[str, Any]]:
    path = directory / "monitor.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise MonitorError(f"{path}: unreadable ({exc}); remove it after checking nothing runs") from None


def write_state(directory: Path, state: dict[str, dict[str, Any]]) -> None:
    write_atomically(directory / "monitor.json", (json.dumps(state, indent=2) + "\n").encode())


def running(state: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: entry for name, entry in state.items() if is_ours(entry["pid"], entry["binary"])}


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def is_ready(url: str, path: str = "/-/ready") -> bool:
    try:
        return http_get(url + path, timeout=1)[0] == 200
    except OSError:
        return False


def reload_config(name: str, url: str) -> None:
    """POST /-/reload (Prometheus runs with --web.enable-lifecycle): a running one applies the rewritten config."""
    request = urllib.request.Request(url + "/-/reload", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10):
            return
    except OSError as exc:  # urllib's HTTPError and URLError are OSErrors
        raise MonitorError(
            f"{name} at {url} did not reload the rewritten config ({exc}): "
            "restart it with make monitor-stop && make monitor"
        ) from None


def launch(name: str, args: list[str], directory: Path) -> subprocess.Popen:
    log_path = directory / f"{name}.log"
    with open(log_path, "ab") as log_file:
        # Its own session: a Ctrl-C in the terminal that ran `make monitor` does not reach it later.
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(name: str, proc: subprocess.Popen, url: str, log_path: Path) -> None:
    path = READY_PATHS.get(name, "/-/ready")
    deadline = time.monotonic() + READY_TIMEOUT
    while not is_ready(url, path):
        if proc.poll() is not None:
            raise MonitorError(f"{name} exited with {proc.returncode}: {tail(log_path)}")
        if time.monotonic() > deadline:
            raise MonitorError(f"{name} not ready at {url}{path} after {READY_TIMEOUT:.0f}s: {tail(log_path)}")
        time.sleep(0.1)


def services(system: dict[str, Any], directory: Path, binaries: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    """(name, url, argv) of each program to run, in start order (Prometheus last: its targets are up)."""
    prometheus_port, pushgateway_port = local_ports(system)
    alertmanager_port, node_port = optional_port(system, "alertmanager"), optional_port(system, "node_exporter")
    result = []
    if pushgateway_port:
        result.append(
            (
                "pushgateway",
                f"http://127.0.0.1:{pushgateway_port}",
                [
                    binaries["pushgateway"],
                    f"--web.listen-address=127.0.0.1:{pushgateway_port}",
                    f"--persistence.file={directory / 'pushgateway.store'}",
                    "--persistence.interval=1m",
                ],
            )
        )
    if node_port:
        metrics = textfile_dir(system)
        result.append(
            (
                "node_exporter",
                f"http://127.0.0.1:{node_port}",
                [
                    binaries["node_exporter"],
                    f"--web.listen-address=127.0.0.1:{node_port}",
                    f"--collector.textfile.directory={metrics}",  # backup/update/validation outcomes
                ],
            )
        )
    if alertmanager_port:
        result.append(
            (
                "alertmanager",
                f"http://127.0.0.1:{alertmanager_port}",
                [
                    binaries["alertmanager"],
                    f"--config.file={directory / alerting.CONFIG_NAME}",
                    f"--storage.path={directory / 'alertmanager-data'}",
                    f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                    "--cluster.listen-address=",  # one instance: no gossip port (9094) to collide on
                ],
            )
        )
    result.append(
        (
            "prometheus",
            f"http://127.0.0.1:{prometheus_port}",
            [
                binaries["prometheus"],
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--web.enable-lifecycle",  # POST /-/reload applies a changed config or rules
                # Alerts of its first evaluations, before it has found Alertmanager, are dropped and sent again
                # only after this delay (default 1m): the Watchdog reaches Alertmanager within seconds of a start.
                f"--rules.alert.resend-delay={RESEND_DELAY}",
                "--web.enable-admin-api",  # TSDB snapshots for the backup hook (scripts/backup_hook_monitoring.py)
            ],
        )
    )
    return result


def write_configs(system: dict[str, Any]) -> list[Path]:
    """Prometheus's config and (when it runs) Alertmanager's, 0600, into the monitor folder; their paths."""
    directory = monitor_dir(system)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / "prometheus.yml", local_config_text(system).encode())
    written = [directory / "prometheus.yml"]
    if "alertmanager" in wanted(system):
        written.append(alerting.write_alertmanager_config(system, directory))
    return written


def start(system: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Start what is not running yet; return the state of each once it answers (/-/ready)."""
    directory = monitor_dir(system)
    directory.mkdir(parents=True, exist_ok=True)
    binaries = require_binaries(wanted(system))
    textfile_dir(system).mkdir(parents=True, exist_ok=True)
    write_configs(system)
    state = running(read_state(directory))
    for name in ("alertmanager", "prometheus"):
        if name in state:
            reload_config(name, state[name]["url"])
    started: list[int] = []
    try:
        for name, url, args in services(system, directory, binaries):
            if name in state:
                continue
            port = urlsplit(url).port
            if port is not None and port_in_use(port):
                raise MonitorError(
                    f"{name}: port {port} is already in use (another {name}, or the compose stack?); "
                    "change system.monitoring in config.yaml or stop it"
                )
            proc = launch(name, args, directory)
            started.append(proc.pid)
            wait_ready(name, proc, url, directory / f"{name}.log")
            state[name] = {"pid": proc.pid, "url": url, "binary": args[0], "log": str(directory / f"{name}.log")}
            write_state(directory, state)
    except BaseException:
        # Half a monitor is no use: stop what this call started (also on Ctrl-C).
        for pid in started:
            terminate(pid, STOP_TIMEOUT)
        remaining = {name: entry for name, entry in state.items() if entry["pid"] not in started}
        write_state(directory, remaining)
        raise
    if started and {"prometheus", "alertmanager"} <= state.keys():
        wait_for_watchdog(state["alertmanager"]["url"], system["monitoring"]["prometheus"]["scrape_interval"])
    return state


def watchdog_arrived(alertmanager_url: str) -> bool:
    query = urllib.parse.urlencode({"filter": f'alertname="{alerting.WATCHDOG}"', "active": "true"})
    try:
        return bool(json.loads(http_get(f"{alertmanager_url}/api/v2/alerts?{query}", timeout=2)[1]))
    except (OSError, ValueError):
        return False


def wait_for_watchdog(alertmanager_url: str, evaluation_interval: float) -> None:
    """Return once the always-firing Watchdog is in Alertmanager (the alert path works); warn after a while.

    Prometheus drops the alerts of its first evaluation (it has not found Alertmanager yet) and sends
    them again at the first evaluation after RESEND_DELAY, so `make validate` right after finds it.
    """
    timeout = 2 * evaluation_interval + 20
    deadline = time.monotonic() + timeout
    while not watchdog_arrived(alertmanager_url):
        if time.monotonic() > deadline:
            log.warning(
                "the %s alert has not reached Alertmanager after %.0fs: see /alerts", alerting.WATCHDOG, timeout
            )
            return
        time.sleep(0.2)


def stop(system: dict[str, Any]) -> list[str]:
    """Stop what start recorded; return the names stopped."""
    directory = monitor_dir(system)
    state = read_state(directory)
    stopped = []
    for name, entry in running(state).items():
        terminate(entry["pid"], STOP_TIMEOUT)
        stopped.append(name)
    with contextlib.suppress(FileNotFoundError):
        (directory / "monitor.json").unlink()
    return stopped
