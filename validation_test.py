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

The checks live in hello/validation/, one module per group; this command parses the arguments, prints, and
exits.

Not a pytest module despite its name (the user's design card names it): pytest collects only
test_*.py here, and nothing in this file is named test*.
"""

from __future__ import annotations

import hello.base.venv  # noqa: F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
import argparse
import logging
import sys
import time

from hello.base.config import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError, load_config
from hello.validation.components import Context
from hello.validation.core import FAIL, GROUPS
from hello.validation.registry import run_checks
from hello.validation.report import record_results, render_json, render_table


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
        print(render_json(results))
    else:
        print(render_table(results, args.verbose))
    return EXIT_FAILED if any(r.status == FAIL for r in results) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
