"""The systemd units of a checkout, rendered from its config, and their checks with systemd-analyze.

    from hello.units import render_units, verify_units
    units = render_units(config, Checkout.here())     # {"hello-world.service": "...", ...}
    problems = verify_units(directory)                 # [] when systemd-analyze finds nothing

Units (names fixed: one systemd deployment per host):
  hello-world.service            the supervisor in the foreground, Type=notify (hello/sdnotify.py),
                                 `systemctl reload` = scripts/service.py reload (SIGHUP, waits for the verdict)
  hello-world-<job>.service      one `make <job>` (oneshot), the same target cron runs
  hello-world-<job>.timer        when: backup daily at system.backup.time (in system.backup.timezone,
                                 Persistent=true), validate every system.validation.interval, update every
                                 system.update.interval; a job whose interval is null gets no units

Written against systemd 252 (Debian 12): its `systemd-analyze verify` exits 0 on an unknown key or a
bad calendar and only warns, so verify_units counts every line it prints as a problem.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE = "hello-world.service"
PREFIX = "hello-world"
ANALYZE = "systemd-analyze"
ANALYZE_TIMEOUT = 60.0
STOP_MARGIN = 10  # seconds beyond the supervisor's own drain deadline (drain_timeout + 5) before SIGKILL
HOME_DIRS = ("/home", "/root", "/run/user")  # what ProtectHome= hides


class UnitsError(Exception):
    """The units cannot be rendered or checked; str() is the one-line reason."""


@dataclass(frozen=True)
class Checkout:
    """The checkout the units run: its folder and the programs they start."""

    repo: Path
    python: Path  # the venv's interpreter, as `make run` uses
    make: str

    @classmethod
    def here(cls) -> Checkout:
        repo = Path(__file__).resolve().parent.parent
        make = shutil.which("make") or "/usr/bin/make"
        return cls(repo, repo / ".venv" / "bin" / "python", make)


@dataclass(frozen=True)
class Job:
    """A make target run by a timer: when, and the folders it writes."""

    target: str
    description: str
    calendar: str
    persistent: bool
    writes: tuple[str, ...]


def every_calendar(seconds: float) -> str:
    """An OnCalendar= for an interval hello_config accepted (minutes dividing an hour, hours dividing a day)."""
    minutes = int(seconds // 60)
    if minutes < 60:
        return "*-*-* *:*:00" if minutes == 1 else f"*-*-* *:00/{minutes}:00"
    hours = minutes // 60
    return "*-*-* 00:00:00" if hours == 24 else f"*-*-* 00/{hours}:00:00"


def daily_calendar(time_of_day: str, timezone: str | None) -> str:
    """'02:00', 'Europe/Berlin' -> '*-*-* 02:00:00 Europe/Berlin'; no zone: the host's local time."""
    return f"*-*-* {time_of_day}:00" + (f" {timezone}" if timezone else "")


def jobs(config: dict[str, Any]) -> list[Job]:
    """The timers config.yaml asks for, as `make cron` has them."""
    run_dir, backup = config["run_dir"], config["backup"]
    found = [
        Job(
            "backup",
            "one backup (make backup)",
            daily_calendar(backup["time"], backup["timezone"]),
            True,  # a backup missed while the host was off runs at boot
            (run_dir, backup["destination"]),
        )
    ]
    # A weekly restore drill goes here once the Makefile has its `drill` target.
    for target, description, interval in (
        ("validate", "the validation of the live system (make validate)", config["validation"]["interval"]),
        ("update", "the update protocol (make update)", config["update"]["interval"]),
    ):
        if interval is not None:
            writes = (run_dir,) if target == "validate" else (run_dir, backup["destination"])  # update: backup_first
            found.append(Job(target, description, every_calendar(interval), False, writes))
    return found


def _home_protection(paths: list[str]) -> str:
    """ProtectHome=yes hides /home, /root and /run/user: read-only when the checkout or its data is there."""
    inside = any(Path(path) == Path(home) or Path(home) in Path(path).parents for path in paths for home in HOME_DIRS)
    return "read-only" if inside else "yes"


def _quoted(path: str | Path) -> str:
    """A path as a systemd command-line word (quoted when it holds spaces; % and $ escaped)."""
    text = str(path).replace("%", "%%").replace("$", "$$")
    return f'"{text}"' if re.search(r"\s", text) else text


def _lines(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"{key}={value}\n" for key, value in pairs if value is not None)


def _common(config: dict[str, Any], checkout: Checkout, environ: dict[str, str]) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [("WorkingDirectory", _quoted(checkout.repo)), ("User", config["server"]["user"])]
    if environ.get("HELLO_CONFIG"):
        pairs.append(("Environment", _quoted(f"HELLO_CONFIG={config['config_file']}")))
    return pairs + [("Environment", "PYTHONDONTWRITEBYTECODE=1"), ("Environment", "PYTHONUNBUFFERED=1")]


def _hardening(writes: tuple[str, ...], checkout: Checkout, strict: bool = True) -> list[tuple[str, Any]]:
    """strict: the whole file system read-only but `writes`; else (the update, which moves the checkout and
    rebuilds .venv) only /usr, /boot and /etc, with the checkout writable even under a read-only /home."""
    if not strict:
        writes = (str(checkout.repo), *writes)
    return [
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectSystem", "strict" if strict else "full"),
        *[("ReadWritePaths", _quoted(path)) for path in dict.fromkeys(writes)],
        ("ProtectHome", _home_protection([str(checkout.repo), *writes])),
    ]


def _make_dirs(config: dict[str, Any], paths: tuple[str, ...]) -> list[tuple[str, Any]]:
    """ExecStartPre= lines creating the writable folders (as root: '+'), owned by User= when set.

    ReadWritePaths= needs them to exist before the sandbox is set up, and `make clean` removes run/.
    """
    owner = f"-o {config['server']['user']} " if config["server"]["user"] else ""
    return [("ExecStartPre", f"+/usr/bin/install -d {owner}{_quoted(path)}") for path in dict.fromkeys(paths)]


def _header(config: dict[str, Any]) -> str:
    return f"# GENERATED by scripts/systemd.py (make systemd) from {config['config_file']}: edit that, not this.\n"


def server_unit(config: dict[str, Any], checkout: Checkout, environ: dict[str, str]) -> str:
    server = config["server"]
    python, repo = _quoted(checkout.python), checkout.repo
    service = [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        *_common(config, checkout, environ),
        *_make_dirs(config, (config["run_dir"],)),
        ("ExecStart", f"{python} {_quoted(repo / 'hello_world.py')}"),
        # SIGHUP, then it waits for the supervisor's verdict: `systemctl reload` fails when the new code was refused.
        ("ExecReload", f"{python} {_quoted(repo / 'scripts' / 'service.py')} reload"),
        ("KillSignal", "SIGTERM"),
        ("KillMode", "mixed"),  # SIGTERM to the supervisor only: it drains its workers itself
        ("TimeoutStartSec", f"{round(server['reload_timeout']) + 30}s"),
        ("TimeoutStopSec", f"{round(server['drain_timeout']) + 5 + STOP_MARGIN}s"),
        ("Restart", "on-failure"),
        ("RestartSec", "1s"),
        *_hardening((config["run_dir"],), checkout),
    ]
    return (
        _header(config)
        + "[Unit]\nDescription=Python Hello Printer: the Hello, World! HTTP service\n"
        + f"Documentation=file://{repo}/README.md\n"
        + "After=network-online.target\nWants=network-online.target\n"
        + "StartLimitIntervalSec=60s\nStartLimitBurst=5\n"
        + "\n[Service]\n"
        + _lines(service)
        + "\n[Install]\nWantedBy=multi-user.target\n"
    )


def job_units(config: dict[str, Any], checkout: Checkout, job: Job, environ: dict[str, str]) -> dict[str, str]:
    name = f"{PREFIX}-{job.target}"
    service = [
        ("Type", "oneshot"),
        *_common(config, checkout, environ),
        *_make_dirs(config, job.writes),
        ("ExecStart", f"{_quoted(checkout.make)} --no-print-directory -C {_quoted(checkout.repo)} {job.target}"),
        ("Nice", "10"),
        *_hardening(job.writes, checkout, strict=job.target != "update"),
    ]
    persistent = "true" if job.persistent else None
    timer = [("OnCalendar", job.calendar), ("Persistent", persistent), ("Unit", f"{name}.service")]
    return {
        f"{name}.service": _header(config)
        + f"[Unit]\nDescription=Python Hello Printer: {job.description}\n"
        + "After=network-online.target\nWants=network-online.target\n"
        + "\n[Service]\n"
        + _lines(service),
        f"{name}.timer": _header(config)
        + f"[Unit]\nDescription=Python Hello Printer: when to run {job.description}\n"
        + "\n[Timer]\n"
        + _lines(timer)
        + "\n[Install]\nWantedBy=timers.target\n",
    }


def render_units(config: dict[str, Any], checkout: Checkout, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Every unit's file name and text for this checkout and config (environ: where HELLO_CONFIG is read)."""
    environ = dict(os.environ if environ is None else environ)
    units = {SERVICE: server_unit(config, checkout, environ)}
    for job in jobs(config):
        units.update(job_units(config, checkout, job, environ))
    return units


def calendars(units: dict[str, str]) -> dict[str, str]:
    """Each timer's OnCalendar= value, by timer name."""
    found = {}
    for name, text in units.items():
        match = re.search(r"^OnCalendar=(.+)$", text, re.MULTILINE)
        if name.endswith(".timer") and match:
            found[name] = match.group(1)
    return found


def enabled_timer(repo: Path, target: str, root: Path = Path("/")) -> Path | None:
    """The installed unit file of our timer for `make <target>`, if it is enabled and runs this checkout."""
    unit_dir = root / "etc" / "systemd" / "system"
    name = f"{PREFIX}-{target}"
    if not os.path.lexists(unit_dir / "timers.target.wants" / f"{name}.timer"):  # links to /etc/..., not root
        return None
    try:
        service = (unit_dir / f"{name}.service").read_text()
    except OSError:
        return None
    runs_here = re.search(rf"^ExecStart=.* -C {re.escape(_quoted(repo))} {target}$", service, re.MULTILINE)
    return unit_dir / f"{name}.timer" if runs_here else None


# --- checks with the real tool ---


def analyze_binary() -> str:
    path = shutil.which(ANALYZE)
    if not path:
        raise UnitsError(f"{ANALYZE} is not installed (Debian package systemd)")
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=ANALYZE_TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        raise UnitsError(f"{' '.join(args[:2])} took over {ANALYZE_TIMEOUT:g}s") from None


def verify_units(directory: Path) -> list[str]:
    """What `systemd-analyze verify` says about every unit file in directory: [] when nothing."""
    files = sorted(str(path) for path in directory.iterdir() if path.suffix in (".service", ".timer"))
    if not files:
        raise UnitsError(f"{directory}: no unit files")
    # --man=no: no man page lookups (Documentation=); verify works without systemd running as PID 1.
    done = _run([analyze_binary(), "verify", "--man=no", "--recursive-errors=no", *files])
    problems = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0 and not problems:
        problems.append(f"{ANALYZE} verify exited {done.returncode}")
    return problems


def check_calendar(spec: str) -> str | None:
    """None when `systemd-analyze calendar` accepts spec, else its reason."""
    done = _run([analyze_binary(), "calendar", spec])
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]


def check_units(units: dict[str, str]) -> list[str]:
    """Every problem systemd-analyze finds in these units (verify, and calendar for each timer)."""
    with tempfile.TemporaryDirectory(prefix="hello-units-") as scratch:
        directory = Path(scratch)
        for name, text in units.items():
            (directory / name).write_text(text)
        problems = [line.replace(scratch + "/", "") for line in verify_units(directory)]
    for timer, spec in calendars(units).items():
        reason = check_calendar(spec)
        if reason:
            problems.append(f"{timer}: OnCalendar={spec}: {reason}")
    return problems
