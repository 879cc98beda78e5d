"""Run Prometheus and the Pushgateway from the host's binaries, and render the Prometheus configs.

`make monitor` runs `python scripts/monitor.py start`: Prometheus and the Pushgateway
(Debian packages `prometheus` and `prometheus-pushgateway`) start in the background,
scraping the local service with this repo's alert rules. Their data, logs, PID files
and the generated config live in <system.run_dir>/monitor (git-ignored). Ports come
from system.monitoring.prometheus.url and system.monitoring.pushgateway.url
(a null pushgateway url: Prometheus only).

    python scripts/monitor.py start [--foreground]   # returns once both answer /-/ready
    python scripts/monitor.py stop                   # stops what start started, by PID
    python scripts/monitor.py status                 # exit 0 if running, 1 if not
    python scripts/monitor.py render compose|local [--check]

This module is the one source of the two Prometheus configs: `prometheus_config()`
builds both. monitoring/prometheus.yml (the compose stack's, targets by service name)
is its committed output: `render compose --write` rewrites it, `render compose --check`
(run by `make lint`) fails when it no longer matches config.yaml. The local variant
(targets on 127.0.0.1 at the ports of config.yaml) is written at every `start`; a
Prometheus that already runs is told to reload it (POST /-/reload).

Exit codes: 0 ok, 1 failed (e.g. a binary is missing, a port is taken), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hello_config import DEFAULT_PATH, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError, load_config  # noqa: E402
from hello_jobs import http_get, pid_alive, write_atomically  # noqa: E402

log = logging.getLogger("monitor")

COMPOSE_CONFIG = REPO / "monitoring" / "prometheus.yml"
RULES_DIR = REPO / "monitoring" / "rules"
RULES_GLOB = "*.rules.yml"
HELLO_JOB = "hello-world"
COMPOSE_HELLO_TARGET = "hello-world:80"  # the seed's target: the compose service on port 80
COMPOSE_PUSHGATEWAY_TARGET = "pushgateway:9091"
COMPOSE_PROMETHEUS_TARGET = "localhost:9090"
PACKAGES = "prometheus prometheus-pushgateway"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Debian installs the Pushgateway as prometheus-pushgateway; upstream tarballs call it pushgateway.
BINARIES = {"prometheus": ("prometheus",), "pushgateway": ("prometheus-pushgateway", "pushgateway")}


class MonitorError(Exception):
    """Monitoring cannot start or stop; str() is the one-line reason."""


class MonitorConfigError(MonitorError):
    """config.yaml does not say enough to run monitoring (exit 2)."""


# --- the Prometheus config: one builder for the compose and the local variant ---


def format_duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds as '15s', anything finer in milliseconds."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def prometheus_config(
    scrape_interval: float,
    hello_target: str,
    pushgateway_target: str | None,
    prometheus_target: str,
    rule_files: list[str],
) -> dict[str, Any]:
    """The Prometheus config both variants share; only the targets and the rule file paths differ."""
    interval = format_duration(scrape_interval)
    scrape_configs: list[dict[str, Any]] = [
        {"job_name": HELLO_JOB, "static_configs": [{"targets": [hello_target]}]},
    ]
    if pushgateway_target:
        # honor_labels keeps the job label the backup and update scripts push (hello_world_backup, ...).
        scrape_configs.append(
            {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": [pushgateway_target]}]}
        )
    scrape_configs.append({"job_name": "prometheus", "static_configs": [{"targets": [prometheus_target]}]})
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": rule_files,
        "scrape_configs": scrape_configs,
    }


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
    )
    header = (
        "# Prometheus config of the docker compose stack. GENERATED from config.yaml by\n"
        "# `python scripts/monitor.py render compose --write`: edit config.yaml or scripts/monitor.py, then rerun it.\n"
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
    monitoring = system["monitoring"]
    prometheus_url = monitoring["prometheus"]["url"]
    if not prometheus_url:
        raise MonitorConfigError("system.monitoring.prometheus.url is null: set it to run Prometheus locally")
    prometheus_port = url_port(prometheus_url, "system.monitoring.prometheus.url")
    pushgateway_url = monitoring["pushgateway"]["url"]
    pushgateway_port = url_port(pushgateway_url, "system.monitoring.pushgateway.url") if pushgateway_url else None
    return prometheus_port, pushgateway_port


def local_config_text(system: dict[str, Any]) -> str:
    """The config `make monitor` runs: the same jobs and rules, targets on 127.0.0.1 at config.yaml's ports."""
    prometheus_port, pushgateway_port = local_ports(system)
    config = prometheus_config(
        system["monitoring"]["prometheus"]["scrape_interval"],
        f"127.0.0.1:{system['server']['port']}",
        f"127.0.0.1:{pushgateway_port}" if pushgateway_port else None,
        f"127.0.0.1:{prometheus_port}",
        [str(RULES_DIR / RULES_GLOB)],
    )
    header = f"# GENERATED by scripts/monitor.py from {system['config_file']}: the local variant of make monitor.\n"
    return render(config, header)


# --- processes ---


def monitor_dir(system: dict[str, Any]) -> Path:
    return Path(system["run_dir"]) / "monitor"


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


def is_ready(url: str) -> bool:
    try:
        return http_get(url + "/-/ready", timeout=1)[0] == 200
    except OSError:
        return False


def reload_prometheus(url: str) -> None:
    """POST /-/reload (it runs with --web.enable-lifecycle): a running Prometheus applies the rewritten config."""
    request = urllib.request.Request(url + "/-/reload", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10):
            return
    except OSError as exc:  # urllib's HTTPError and URLError are OSErrors
        raise MonitorError(
            f"prometheus at {url} did not reload the rewritten config ({exc}): "
            "restart it with make monitor-stop && make monitor"
        ) from None


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def launch(name: str, args: list[str], directory: Path) -> subprocess.Popen:
    log_path = directory / f"{name}.log"
    with open(log_path, "ab") as log_file:
        # Its own session: a Ctrl-C in the terminal that ran `make monitor` does not reach it later.
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(name: str, proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not is_ready(url):
        if proc.poll() is not None:
            raise MonitorError(f"{name} exited with {proc.returncode}: {tail(log_path)}")
        if time.monotonic() > deadline:
            raise MonitorError(f"{name} not ready at {url}/-/ready after {READY_TIMEOUT:.0f}s: {tail(log_path)}")
        time.sleep(0.1)


def terminate(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM (both flush their data on it), then SIGKILL after the timeout."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            log.warning("PID %d did not stop within %.0fs: killing it", pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child (start --foreground)
        time.sleep(0.05)


def services(system: dict[str, Any], directory: Path, binaries: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    """(name, url, argv) of each program to run."""
    prometheus_port, pushgateway_port = local_ports(system)
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
                "--web.enable-admin-api",  # TSDB snapshots for the backup hook (scripts/backup_hook_monitoring.py)
            ],
        )
    )
    return result


def start(system: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Start what is not running yet; return the state of both once they answer /-/ready."""
    directory = monitor_dir(system)
    directory.mkdir(parents=True, exist_ok=True)
    _, pushgateway_port = local_ports(system)
    binaries = require_binaries(["prometheus", "pushgateway"] if pushgateway_port else ["prometheus"])
    write_atomically(directory / "prometheus.yml", local_config_text(system).encode())
    state = running(read_state(directory))
    if "prometheus" in state:
        reload_prometheus(state["prometheus"]["url"])
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
            terminate(pid)
        remaining = {name: entry for name, entry in state.items() if entry["pid"] not in started}
        write_state(directory, remaining)
        raise
    return state


def stop(system: dict[str, Any]) -> list[str]:
    """Stop what start recorded; return the names stopped."""
    directory = monitor_dir(system)
    state = read_state(directory)
    stopped = []
    for name, entry in running(state).items():
        terminate(entry["pid"])
        stopped.append(name)
    with contextlib.suppress(FileNotFoundError):
        (directory / "monitor.json").unlink()
    return stopped


def print_urls(state: dict[str, dict[str, Any]], directory: Path) -> None:
    for name in ("prometheus", "pushgateway"):
        if name in state:
            print(f"{name:<12} {state[name]['url']}  (PID {state[name]['pid']}, log {state[name]['log']})")
    if "prometheus" in state:
        print(f"alerts       {state['prometheus']['url']}/alerts")
    print(f"data         {directory}")


def foreground(system: dict[str, Any]) -> int:
    """start, then wait: Ctrl-C or SIGTERM stops both."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        state = start(system)
        print_urls(state, monitor_dir(system))
        print("running in the foreground: Ctrl-C stops both")
        sys.stdout.flush()
        while all(pid_alive(entry["pid"]) for entry in state.values()):
            time.sleep(0.5)
        gone = [name for name, entry in state.items() if not pid_alive(entry["pid"])]
        log.error("%s exited: see %s", ", ".join(gone), monitor_dir(system))
        stop(system)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("stopping", ", ".join(stop(system)) or "nothing")
        return EXIT_OK


# --- command line ---


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="monitor.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", help="start Prometheus and the Pushgateway; print their URLs")
    start_parser.add_argument("--foreground", action="store_true", help="stay in the foreground; Ctrl-C stops both")
    commands.add_parser("stop", help="stop what start started (by the PIDs it recorded)")
    status_parser = commands.add_parser("status", help="exit 0 if running, 1 if not")
    status_parser.add_argument("--json", action="store_true", help="print the state as JSON")
    render_parser = commands.add_parser("render", help="print or write a generated Prometheus config")
    render_parser.add_argument("variant", choices=["compose", "local"])
    render_parser.add_argument("--check", action="store_true", help="compose: exit 1 if the committed file differs")
    render_parser.add_argument("--write", action="store_true", help="compose: rewrite monitoring/prometheus.yml")
    return parser.parse_args(argv)


def run_render(args: argparse.Namespace, system: dict[str, Any]) -> int:
    if args.variant == "local":
        sys.stdout.write(local_config_text(system))
        return EXIT_OK
    system_of_repo = load_config(DEFAULT_PATH)  # the compose stack ships the repo's config.yaml
    if args.write:
        COMPOSE_CONFIG.write_text(compose_config_text(system_of_repo))
        print(f"wrote {COMPOSE_CONFIG}")
        return EXIT_OK
    if args.check:
        if not compose_config_is_current(system_of_repo):
            print(
                f"{COMPOSE_CONFIG.relative_to(REPO)} does not match config.yaml: "
                "run `python scripts/monitor.py render compose --write`",
                file=sys.stderr,
            )
            return EXIT_FAILED
        return EXIT_OK
    sys.stdout.write(compose_config_text(system_of_repo))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="monitor: %(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        system = load_config()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.command == "render":
            return run_render(args, system)
        if args.command == "start" and args.foreground:
            return foreground(system)
        if args.command == "start":
            before = running(read_state(monitor_dir(system)))
            state = start(system)
            if before and before.keys() == state.keys():
                print("monitor: already running")
            print_urls(state, monitor_dir(system))
            print("stop with: make monitor-stop")
            return EXIT_OK
        if args.command == "stop":
            stopped = stop(system)
            print(f"stopped {', '.join(stopped)}" if stopped else "monitor: nothing was running")
            return EXIT_OK
        state = running(read_state(monitor_dir(system)))
        if args.json:
            print(json.dumps(state, indent=2))
        elif state:
            print_urls(state, monitor_dir(system))
        else:
            print("monitor: not running")
        return EXIT_OK if state else EXIT_FAILED
    except MonitorError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, MonitorConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("monitor: interrupted", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
