"""Print the crontab lines that run this project's jobs, derived from config.yaml.

    python -m scripts.cron [--json]        (make cron)
    make cron | crontab -                  install them (replaces the user's crontab)

Lines printed:
  - the daily backup at system.backup.time (`02:00` -> `0 2 * * *`), with CRON_TZ=<system.backup.timezone>
    when one is set (cronie and systemd-cron honour CRON_TZ; Debian's classic cron ignores it, and then
    the time is the host's local time);
  - the validation every system.validation.interval (`15m` -> `*/15 * * * *`), none when it is null;
  - the update every system.update.interval, none when it is null;
  - the server: at @reboot and every minute `-m scripts.service start --quiet` (make start QUIET=1), which starts it
    only when it is not running (silent and exit 0 when it is): a killed supervisor is back within a minute;
  - monitoring, when system.monitoring.prometheus.url is on this host (127.0.0.1, localhost, ::1):
    at @reboot `-m scripts.monitor start` (make monitor), and every minute when its `status` finds nothing.
  - the restore drill weekly, on Sundays an hour after the backup (`02:00` -> `0 3 * * 0`).
  - on a vault host (system.backup.vault.pull_from set): the pull every system.backup.vault.interval.
Each runs `cd <repo> && mkdir -p <run_dir> && <repo>/.venv/bin/python <script> <args> >> <run_dir>/cron.log 2>&1`,
<script> being `<repo>/backup_script.py` or, for scripts/, the module in the checkout (`-m scripts.service`)
(hello/platform/scheduled.py: the script itself, never `make <target>`, which turns every failure into 2: cron's
mail and any wrapper see the script's own code, 75 when another run holds the lock), after a PATH= line (cron's own PATH
is minimal) and, when HELLO_CONFIG selects another file, a HELLO_CONFIG= line.
Exit codes: 0 printed (stdout holds crontab lines only); 2 bad config.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split

from hello.base.checkout import command_argv  # noqa: E402
from hello.base.config import EXIT_CONFIG, EXIT_OK, ConfigError, load_config  # noqa: E402
from hello.platform.scheduled import job_argv  # noqa: E402
from hello.platform.units import prometheus_is_local  # noqa: E402

BASE_PATH = ["/usr/local/bin", "/usr/bin", "/bin"]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"  # what `make` creates; the lines run it on the scripts
EVERY_MINUTE = "* * * * *"


def daily_at(time_of_day: str) -> str:
    """'02:00' -> '0 2 * * *'."""
    hours, minutes = (int(part) for part in time_of_day.split(":"))
    return f"{minutes} {hours} * * *"


def weekly_after(time_of_day: str) -> str:
    """'02:00' -> '0 3 * * 0': Sundays, an hour after the daily backup, so the drill gets a fresh archive."""
    hours, minutes = (int(part) for part in time_of_day.split(":"))
    return f"{minutes} {(hours + 1) % 24} * * 0"


def every(seconds: float) -> str:
    """A cron schedule for a period hello_config accepted: minutes dividing an hour or hours dividing a day."""
    minutes = int(seconds // 60)
    if minutes < 60:
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    hours = minutes // 60
    if hours == 1:
        return "0 * * * *"
    return "0 0 * * *" if hours == 24 else f"0 */{hours} * * *"


def _cron_escape(text: str) -> str:
    return text.replace("%", r"\%")  # cron turns an unescaped % into a newline


def command(target: str, log: Path, unless: str = "") -> str:
    """cd to the repo and run the job of `make <target>` into the log; `unless`: a shell test skipping it if true."""
    # run_dir must exist before the shell opens the log, or the redirection fails and the job never runs.
    folder, repo, log_file = (shlex.quote(str(p)) for p in (log.parent, REPO, log))
    run = f"{shlex.join(job_argv(VENV_PYTHON, REPO, target))} >> {log_file} 2>&1"
    if unless:
        run = f"{{ {unless} || {run}; }}"  # braces: a failed cd must not fall through to make
    return _cron_escape(f"cd {repo} && mkdir -p {folder} && {run}")


def search_path() -> str:
    """Where make and python3 are found now, then the usual places."""
    found = [str(Path(tool).parent) for tool in (shutil.which("make"), shutil.which("python3")) if tool]
    return ":".join(dict.fromkeys(found + BASE_PATH))


def entries(config: dict[str, Any]) -> list[dict[str, str]]:
    log = Path(config["run_dir"]) / "cron.log"
    found = [{"target": "backup", "schedule": daily_at(config["backup"]["time"]), "command": command("backup", log)}]
    for target, interval in (("validate", config["validation"]["interval"]), ("update", config["update"]["interval"])):
        if interval is not None:
            found.append({"target": target, "schedule": every(interval), "command": command(target, log)})
    # Back by itself: after a reboot, and within a minute of a crash (start is a no-op while it runs).
    found += [
        {"target": "start", "schedule": "@reboot", "command": command("start", log)},
        {"target": "start", "schedule": EVERY_MINUTE, "command": command("start", log)},  # silent while it runs
    ]
    if prometheus_is_local(config):
        running = f"{shlex.join([*command_argv(VENV_PYTHON, REPO, 'scripts/monitor.py'), 'status'])} >/dev/null 2>&1"
        found += [
            {"target": "monitor", "schedule": "@reboot", "command": command("monitor", log)},
            {"target": "monitor", "schedule": EVERY_MINUTE, "command": command("monitor", log, unless=running)},
        ]
    found.append(
        {"target": "drill", "schedule": weekly_after(config["backup"]["time"]), "command": command("drill", log)}
    )
    vault = config["backup"]["vault"]
    if vault["pull_from"] is not None and vault["interval"] is not None:  # a vault host: it pulls from production
        found.append({"target": "pull", "schedule": every(vault["interval"]), "command": command("pull", log)})
    return found


def crontab_lines(config: dict[str, Any]) -> list[str]:
    lines = [f"# Python Hello Printer jobs, from {config['config_file']} (make cron)", f"PATH={search_path()}"]
    if os.environ.get("HELLO_CONFIG"):
        lines.append(f"HELLO_CONFIG={_cron_escape(config['config_file'])}")
    if config["backup"]["timezone"]:
        lines.append(f"CRON_TZ={config['backup']['timezone']}")
    lines += [f"{entry['schedule']} {entry['command']}" for entry in entries(config)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the crontab lines derived from config.yaml.")
    parser.add_argument("--json", action="store_true", help="the entries as JSON")
    args = parser.parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        data = {"timezone": config["backup"]["timezone"], "lines": crontab_lines(config), "entries": entries(config)}
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(crontab_lines(config)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
