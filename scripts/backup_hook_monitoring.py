"""A system.backup.hooks.before command: the monitoring state into the backup's staging folder.

    hooks: {before: [".venv/bin/python -m scripts.backup_hook_monitoring"]}      (config.yaml, system.backup)
    python -m scripts.backup_hook_monitoring [--prometheus URL] [--pushgateway URL] [--alertmanager URL]

Writes into $HELLO_BACKUP_STAGING (set by backup_script.py):
  prometheus/    a TSDB snapshot through Prometheus' admin API (POST /api/v1/admin/tsdb/snapshot; `make monitor`
                 runs Prometheus with --web.enable-admin-api), moved out of <tsdb path>/snapshots/, whose path
                 Prometheus reports in /api/v1/status/flags. Restore: stop Prometheus, put the snapshot's blocks
                 into its --storage.tsdb.path, start it.
  pushgateway/   a copy of the Pushgateway's --persistence.file (from its /api/v1/status), when it has one.
  alertmanager/silences.json   the silences (GET /api/v2/silences); restore with `amtool silence import`.
URLs default to system.monitoring.* in config.yaml; a service set to null (or not configured) is skipped.
The Pushgateway and Alertmanager get the login `make monitor` made (hello/base/monitor_login.py).
Exit codes: 0 done; 1 a configured service did not answer or refused (the backup then fails, naming this hook);
2 bad usage or config, or HELLO_BACKUP_STAGING not set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split

from hello.backup.hooks import STAGING_ENV  # noqa: E402
from hello.base.config import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError, load_config  # noqa: E402
from hello.base.monitor_login import AuthError, auth_headers  # noqa: E402

TIMEOUT = 60.0  # a snapshot of a large TSDB takes a while


class HookError(Exception):
    """A service failed; str() names it."""


def call(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
        raise HookError(f"{method} {url}: {exc}") from None


def prometheus_snapshot(url: str, staging: Path, _login: dict[str, str]) -> Path:  # Prometheus: no login
    answer = call(f"{url}/api/v1/admin/tsdb/snapshot", "POST")
    name = answer.get("data", {}).get("name")
    if answer.get("status") != "success" or not name:
        raise HookError(f"{url}: no snapshot (is Prometheus running with --web.enable-admin-api?): {answer}")
    tsdb = call(f"{url}/api/v1/status/flags")["data"]["storage.tsdb.path"]
    snapshot = Path(tsdb) / "snapshots" / name
    if not snapshot.is_dir():
        raise HookError(f"{snapshot}: the snapshot Prometheus reported is not there (is it on another host?)")
    destination = staging / "prometheus"
    shutil.move(str(snapshot), destination)  # out of the TSDB folder: snapshots there only grow
    return destination


def pushgateway_state(url: str, staging: Path, login: dict[str, str]) -> Path | None:
    flags = call(f"{url}/api/v1/status", headers=login).get("data", {}).get("flags", {})
    store = flags.get("persistence.file")
    if not store or not Path(store).is_file():
        return None  # no persistence file configured, or none written yet
    destination = staging / "pushgateway"
    destination.mkdir(exist_ok=True)
    shutil.copy2(store, destination / Path(store).name)
    return destination


def alertmanager_silences(url: str, staging: Path, login: dict[str, str]) -> Path:
    silences = call(f"{url}/api/v2/silences", headers=login)
    destination = staging / "alertmanager"
    destination.mkdir(exist_ok=True)
    (destination / "silences.json").write_text(json.dumps(silences, indent=1) + "\n")
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("prometheus", "pushgateway", "alertmanager"):
        parser.add_argument(f"--{name}", metavar="URL", help=f"default: system.monitoring.{name}.url")
    args = parser.parse_args(argv)
    staging_dir = os.environ.get(STAGING_ENV)
    if not staging_dir or not Path(staging_dir).is_dir():
        print(
            f"backup_hook_monitoring.py: {STAGING_ENV} is not set to a folder (run me as a backup hook)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        system = load_config()
        login = auth_headers(system)  # Alertmanager's and the Pushgateway's
    except (ConfigError, AuthError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    monitoring = system["monitoring"]
    staging = Path(staging_dir)
    steps = (
        ("prometheus", prometheus_snapshot),
        ("pushgateway", pushgateway_state),
        ("alertmanager", alertmanager_silences),
    )
    try:
        for name, step in steps:
            url = getattr(args, name) or (monitoring.get(name) or {}).get("url")
            if url:
                written = step(url.rstrip("/"), staging, login)
                print(f"{name}: {written or 'nothing to save'}")
    except HookError as exc:
        print(f"backup_hook_monitoring.py: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
