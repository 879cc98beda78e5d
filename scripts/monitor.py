"""Run Prometheus, Alertmanager, the Pushgateway and node_exporter from the host's binaries; render their configs.

`make monitor` runs `python -m scripts.monitor start`: Prometheus, Alertmanager, the Pushgateway
and node_exporter (Debian packages prometheus, prometheus-alertmanager, prometheus-pushgateway,
prometheus-node-exporter) start in the background, scraping the local service with this repo's
alert rules and delivering alerts to the receivers of system.monitoring.alertmanager.
Their data, logs, PID files and the generated configs live in <system.run_dir>/monitor
(git-ignored); node_exporter's textfile collector reads <system.run_dir>/metrics, where the
backup, update and validation outcomes are written. Ports come from the URLs under
system.monitoring (a null pushgateway, alertmanager or node_exporter url: that one is not run).
The hello-world target is the server that runs (its <run_dir>/hello_world.state.json, e.g. after
`make start PORT=18080`), else system.server; `start` prints which and why.

    python -m scripts.monitor start [--foreground]   # returns once both answer /-/ready
    python -m scripts.monitor stop                   # stops what start started, by PID
    python -m scripts.monitor status                 # exit 0 if running, 1 if not
    python -m scripts.monitor render compose|local [--check]
    python -m scripts.monitor render alertmanager    # writes <run_dir>/monitor/alertmanager.yml (make up)
                                                     # and the login's web-config.yml and monitor-password
    python -m scripts.monitor render slo [--check|--write]  # monitoring/rules/hello_world_slo.rules.yml
    python -m scripts.monitor render configs         # writes both local configs (the systemd units' ExecStartPre)

The two Prometheus configs come from one source, hello/monitoring/promconfig.py; the Alertmanager config
comes from hello/monitoring/alerting.py; hello/monitoring/stack.py runs the processes; this command is the CLI.
monitoring/prometheus.yml (the compose stack's, targets by service name) is its committed
output: `render compose --write` rewrites it, `render compose --check` (run by `make lint`)
fails when it no longer matches config.yaml. The local variant (targets on 127.0.0.1 at the
ports of config.yaml) is written at every `start`, with alertmanager.yml (mode 0600: it holds
the receivers' secrets); a Prometheus or Alertmanager that already runs is told to reload
(POST /-/reload). Alertmanager and the Pushgateway want a login (user hello, the password in
<run_dir>/monitor/monitor-password, 0600): give it to curl in a --netrc-file, never on a command line.

Exit codes: 0 ok, 1 failed (e.g. a binary is missing, a port is taken), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
import yaml  # noqa: E402

from hello.base.config import (  # noqa: E402
    DEFAULT_PATH,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    ConfigError,
    load_config,
)
from hello.base.locks import pid_alive  # noqa: E402
from hello.base.monitor_login import PASSWORD_NAME, USER, WEB_CONFIG_NAME, private_dir  # noqa: E402
from hello.monitoring import (  # noqa: E402
    alerting,
    slo,
)
from hello.monitoring.promconfig import (  # noqa: E402
    COMPOSE_CONFIG,
    MonitorConfigError,
    MonitorError,
    compose_config_is_current,
    compose_config_text,
    local_config_text,
    scrape_target,
)
from hello.monitoring.stack import monitor_dir, read_state, running, start, stop, write_auth, write_configs  # noqa: E402

log = logging.getLogger("monitor")


def print_urls(state: dict[str, dict[str, Any]], directory: Path, system: dict[str, Any] | None = None) -> None:
    for name in ("prometheus", "alertmanager", "pushgateway", "node_exporter"):
        if name in state:
            print(f"{name:<13} {state[name]['url']}  (PID {state[name]['pid']}, log {state[name]['log']})")
    if "prometheus" in state:
        print(f"alerts        {state['prometheus']['url']}/alerts")
    if system is not None:
        target, why = scrape_target(system)
        print(f"scraping      hello-world at {target}: {why}")
        if "alertmanager" in state:
            kinds = alerting.configured_receivers(yaml.safe_load((directory / alerting.CONFIG_NAME).read_text()))
            told = " and ".join(kinds) or "NOBODY (set system.monitoring.alertmanager.receivers)"
            print(f"alerts go to  {told}")
    if {"alertmanager", "pushgateway"} & state.keys():
        print(f"login         user {USER}, password in {directory / PASSWORD_NAME} (Alertmanager, Pushgateway)")
    print(f"data          {directory}")


def foreground(system: dict[str, Any]) -> int:
    """start, then wait: Ctrl-C or SIGTERM stops both."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Python leaves SIGINT ignored when started so (a shell's `cmd &`, nohup): Ctrl-C must still stop both.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        state = start(system)
        print_urls(state, monitor_dir(system), system)
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
    start_parser = commands.add_parser(
        "start", help="start Prometheus, Alertmanager, the Pushgateway and node_exporter; print their URLs"
    )
    start_parser.add_argument("--foreground", action="store_true", help="stay in the foreground; Ctrl-C stops them all")
    commands.add_parser("stop", help="stop what start started (by the PIDs it recorded)")
    status_parser = commands.add_parser("status", help="exit 0 if running, 1 if not")
    status_parser.add_argument("--json", action="store_true", help="print the state as JSON")
    render_parser = commands.add_parser("render", help="print or write a generated Prometheus config")
    render_parser.add_argument("variant", choices=["compose", "local", "alertmanager", "slo", "configs"])
    render_parser.add_argument(
        "--check", action="store_true", help="compose, slo: exit 1 if the committed file differs"
    )
    render_parser.add_argument(
        "--write", action="store_true", help="compose, slo: rewrite monitoring/prometheus.yml or the SLO rules"
    )
    return parser.parse_args(argv)


def run_render(args: argparse.Namespace, system: dict[str, Any]) -> int:
    if args.variant == "local":
        sys.stdout.write(local_config_text(system))
        return EXIT_OK
    if args.variant == "configs":  # what start writes; the systemd units run it before each start
        print("wrote " + " ".join(str(path) for path in write_configs(system)[1]))
        return EXIT_OK
    if args.variant == "alertmanager":  # it may hold secrets: written (0600), never printed
        directory = private_dir(monitor_dir(system))
        print(f"wrote {alerting.write_alertmanager_config(system, directory)}")
        credentials = write_auth(system)  # the compose stack's Alertmanager and Pushgateway want a login too
        print(f"wrote {directory / WEB_CONFIG_NAME} (the login of {credentials.path})")
        return EXIT_OK
    system_of_repo = load_config(DEFAULT_PATH)  # the compose stack ships the repo's config.yaml
    if args.variant == "slo":
        return render_slo(args, system_of_repo)
    if args.write:
        COMPOSE_CONFIG.write_text(compose_config_text(system_of_repo))
        print(f"wrote {COMPOSE_CONFIG}")
        return EXIT_OK
    if args.check:
        if not compose_config_is_current(system_of_repo):
            print(
                f"{COMPOSE_CONFIG.relative_to(REPO)} does not match config.yaml: "
                "run `python -m scripts.monitor render compose --write`",
                file=sys.stderr,
            )
            return EXIT_FAILED
        return EXIT_OK
    sys.stdout.write(compose_config_text(system_of_repo))
    return EXIT_OK


def render_slo(args: argparse.Namespace, system: dict[str, Any]) -> int:
    """monitoring/rules/hello_world_slo.rules.yml from config.yaml's system.slo (hello/monitoring/slo.py)."""
    shown = slo.RULES_FILE.relative_to(REPO)
    if args.write:
        print(f"wrote {shown}" if slo.write_rules(system) else f"{shown} is up to date")
        return EXIT_OK
    if args.check:
        if not slo.is_current(system):
            print(f"{shown} does not match config.yaml: run `make k8s-render`", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    sys.stdout.write(slo.rules_text(system))
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
            print_urls(state, monitor_dir(system), system)
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
    except alerting.AlertingConfigError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except MonitorError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, MonitorConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("monitor: interrupted", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
