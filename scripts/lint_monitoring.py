"""Check the monitoring and container files with the real tools: what `make lint` runs after ruff.

    python -m scripts.lint_monitoring [--json]

One line per check, PASS or FAIL with the reason; exit 0 only if every check passed (1 otherwise).
The checks read the repo's config.yaml (what the compose stack ships; --config PATH names another), loaded once:
when it is invalid, its one-line reason goes to stderr and the exit code is 2, with no check run.
What each check reads and why: hello/monitoring/lint.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
from hello.base.config import DEFAULT_PATH, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError, load_config  # noqa: E402
from hello.monitoring.lint import run_checks  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lint_monitoring.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--config", type=Path, default=DEFAULT_PATH, help="the config to check (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        system = load_config(args.config)
    except ConfigError as exc:
        print(f"lint_monitoring: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    results = run_checks(system)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            line = f"{'PASS' if result['ok'] else 'FAIL'}  {result['check']}"
            print(line + (f": {result['detail']}" if result["detail"] else ""))
    failed = sum(not result["ok"] for result in results)
    if not args.json:
        print(f"lint_monitoring: {len(results) - failed} passed, {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
