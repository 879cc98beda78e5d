"""The systemd units of a checkout, rendered from its config, and their checks with systemd-analyze.

    from hello.platform.units import render_units, verify_units
    units = render_units(config, Checkout.here())     # {"hello-world.service": "...", ...}
    problems = verify_units(directory)                 # [] when systemd-analyze finds nothing

Units (names fixed: one systemd deployment per host):
  hello-world.service            the supervisor in the foreground, Type=notify (hello/server/sdnotify.py),
                                 `systemctl reload` = `python -m scripts.service reload` (SIGHUP, waits for the verdict)
  hello-world-<job>.service      one job (oneshot): the venv's python on the script, as cron runs it
                                 (hello/platform/scheduled.py), so its own exit code (75: lock held) reaches systemd
  hello-world-<program>.service  prometheus, alertmanager, pushgateway, node-exporter: the monitoring stack of
                                 `make monitor` (same argv and configs), when Prometheus's url is on this host
  hello-world-serve-vault.service  production's read-only SFTP for the vault (system.backup.vault.listen set)
  hello-world-<job>.timer        when: backup daily at system.backup.time (in system.backup.timezone,
                                 Persistent=true), the restore drill weekly an hour after it, validate every
                                 system.validation.interval, update every system.update.interval, the
                                 vault's pull every system.backup.vault.interval (with pull_from set); a job
                                 whose interval is null gets no units

Each unit is sandboxed as far as its work allows (`systemd-analyze security`: every unit rates at most
EXPOSURE_LIMIT, 4.0, the update UPDATE_EXPOSURE_LIMIT, 7.0; `make lint` checks it): no capabilities (the server: only
CAP_NET_BIND_SERVICE for a port below 1024; backup and drill as root: reading and restoring every file),
the file system read-only but the folders it writes, no devices, no kernel tunables, modules or logs, the
system calls of an ordinary service. The update is the exception: it runs the tests, pip and git.

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
from urllib.parse import urlsplit

from hello.base.checkout import CHECKOUT, command_argv
from hello.monitoring import stack
from hello.platform.scheduled import JOBS, job_argv

SERVICE = "hello-world.service"
PREFIX = "hello-world"
ANALYZE = "systemd-analyze"
ANALYZE_TIMEOUT = 60.0
STOP_MARGIN = 10  # seconds beyond the supervisor's own drain deadline (drain_timeout + 5) before SIGKILL
HOME_DIRS = ("/home", "/root", "/run/user")  # what ProtectHome= hides
TMP_DIRS = ("/tmp", "/var/tmp")  # what PrivateTmp= replaces
PRIVILEGED_PORTS = 1024
# `systemd-analyze security` exposure (0 best, 10 worst) make lint accepts: 4.0 for every unit but the update,
# which runs the project's test suite (real servers, pip, git, runuser) and keeps the capabilities that needs.
EXPOSURE_LIMIT = 4.0
UPDATE_EXPOSURE_LIMIT = 7.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
        repo = CHECKOUT
        make = shutil.which("make") or "/usr/bin/make"
        return cls(repo, repo / ".venv" / "bin" / "python", make)


@dataclass(frozen=True)
class Job:
    """A job run by a timer: when, the folders it writes, and the privileges its work needs."""

    target: str
    description: str
    calendar: str
    persistent: bool
    writes: tuple[str, ...]
    reads: tuple[str, ...] = ()  # beyond the checkout: where ProtectHome= or PrivateTmp= must not hide
    root_capabilities: tuple[str, ...] = ()  # its bounding set when it runs as root (none as another user)


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


def weekly_calendar(time_of_day: str, timezone: str | None) -> str:
    """'02:00' -> 'Sun *-*-* 03:00:00': Sundays, an hour after the daily backup (as `make cron` has the drill)."""
    hours, minutes = (int(part) for part in time_of_day.split(":"))
    return f"Sun *-*-* {(hours + 1) % 24:02d}:{minutes:02d}:00" + (f" {timezone}" if timezone else "")


def offsite_folder(config: dict[str, Any]) -> str | None:
    """The off-host remote when it is a plain path (a mounted disk): the backup writes there, the drill reads."""
    remote = config["backup"]["offsite"]["remote"]
    return remote if remote and remote.startswith("/") else None


def _offsite_reads(config: dict[str, Any]) -> tuple[str, ...]:
    """What the off-host jobs read: the plain-path remote, or rclone's config file (by default in the home)."""
    offsite = config["backup"]["offsite"]
    if offsite["remote"] is None:
        return ()
    # rclone reads its default config (~/.config/rclone/rclone.conf) even for a plain path: a home made
    # inaccessible (ProtectHome=yes) is a fatal "permission denied" (seen as root and as a service user); a
    # missing one is fine. So the home stays visible, read-only, unless rclone_config names the file.
    home = (offsite["rclone_config"] or HOME_DIRS[1],)
    return (offsite["remote"], *home) if offsite_folder(config) else home


# Restoring a tree as it was, as root: owners (chown), modes of files it no longer may write, every file read back.
RESTORE_CAPABILITIES = ("CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH")


def jobs(config: dict[str, Any]) -> list[Job]:
    """The timers config.yaml asks for, as `make cron` has them."""
    run_dir, backup = config["run_dir"], config["backup"]
    offsite = offsite_folder(config)
    found = [
        Job(
            "backup",
            "one backup (backup_script.py create)",
            daily_calendar(backup["time"], backup["timezone"]),
            True,  # a backup missed while the host was off runs at boot
            (run_dir, backup["destination"], *([offsite] if offsite else [])),
            (backup["source"], *_offsite_reads(config)),
            ("CAP_DAC_READ_SEARCH",),  # reads every file of the source, as tar does
        ),
        Job(
            "drill",
            "the restore drill (backup_script.py drill)",
            weekly_calendar(backup["time"], backup["timezone"]),
            True,
            (run_dir,),  # its scratch folder is in run_dir
            (backup["destination"], *_offsite_reads(config)),
            RESTORE_CAPABILITIES,
        ),
    ]
    vault = backup["vault"]
    if vault["pull_from"] is not None and vault["interval"] is not None:  # a vault host (hello/backup/vault_pull.py)
        reads = tuple(path for path in (vault["identity"], vault["known_hosts"]) if path)
        pull = "the pull of production's archives (backup_script.py pull)"
        calendar = every_calendar(vault["interval"])
        found.append(Job("pull", pull, calendar, True, (run_dir, vault["store"]), reads, RESTORE_CAPABILITIES))
    for target, description, interval in (
        ("validate", "the validation of the live system (validation_test.py)", config["validation"]["interval"]),
        ("update", "the update protocol (update_protocol.py)", config["update"]["interval"]),
    ):
        if interval is not None:
            writes = (run_dir,) if target == "validate" else (run_dir, backup["destination"])  # update: backup_first
            found.append(Job(target, description, every_calendar(interval), False, writes))
    return found


def _under(paths: list[str], folders: tuple[str, ...]) -> bool:
    return any(Path(path) == Path(top) or Path(top) in Path(path).parents for path in paths for top in folders)


def _quoted(path: str | Path) -> str:
    """A path as a systemd command-line word (quoted when it holds spaces; % and $ escaped)."""
    text = str(path).replace("%", "%%").replace("$", "$$")
    return f'"{text}"' if re.search(r"\s", text) else text


def _command_line(checkout: Checkout, script: str, *args: str) -> str:
    """An Exec*= line running one of the checkout's commands (a script of scripts/: as a module, from the
    WorkingDirectory= of _common, the checkout)."""
    return " ".join(_quoted(word) for word in [*command_argv(checkout.python, checkout.repo, script), *args])


def _lines(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"{key}={value}\n" for key, value in pairs if value is not None)


def _common(config: dict[str, Any], checkout: Checkout, environ: dict[str, str]) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [("WorkingDirectory", _quoted(checkout.repo)), ("User", config["server"]["user"])]
    if environ.get("HELLO_CONFIG"):
        pairs.append(("Environment", _quoted(f"HELLO_CONFIG={config['config_file']}")))
    return pairs + [("Environment", "PYTHONDONTWRITEBYTECODE=1"), ("Environment", "PYTHONUNBUFFERED=1")]


# Every unit: what none of the kit's work needs (issue 20.7; `systemd-analyze security` lists each).
BASE_SANDBOX = (
    ("NoNewPrivileges", "yes"),
    ("PrivateMounts", "yes"),  # implied by the others on a host; said, so the offline rating equals the live one
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("SystemCallArchitectures", "native"),
)
# The units that run only the kit's own Python and its tools (not the update, which runs the tests and pip).
CONFINED = (
    ("ProtectProc", "invisible"),  # other users' processes are not even listed
    ("RestrictNamespaces", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallErrorNumber", "EPERM"),
    ("UMask", "0077"),
)
FAMILIES = "AF_UNIX AF_INET AF_INET6"  # sd_notify and the local sockets; TCP


def _filesystem(
    checkout: Checkout, writes: tuple[str, ...], reads: tuple[str, ...], strict: bool = True
) -> list[tuple[str, Any]]:
    """strict: the whole file system read-only but `writes`; else (the update, which moves the checkout and
    rebuilds .venv) only /usr, /boot and /etc, with the checkout writable even under a read-only /home.

    A writable folder carries `-`: missing, it does not stop the sandbox from being set up (226/NAMESPACE);
    the ExecStartPre= lines create the kit's own. ProtectHome= and PrivateTmp= would hide the checkout, the
    venv's interpreter (pyenv keeps it under the home) or the data where they live there: then they are
    read-only (the home) or off (/tmp), which `systemd-analyze security` counts.
    """
    if not strict:
        writes = (str(checkout.repo), *writes)
    seen = [str(checkout.repo), str(checkout.python), str(checkout.python.resolve()), *writes, *reads]
    return [
        ("PrivateTmp", "no" if _under(seen, TMP_DIRS) else "yes"),
        ("ProtectSystem", "strict" if strict else "full"),
        *[("ReadWritePaths", "-" + _quoted(path)) for path in dict.fromkeys(writes)],
        ("ProtectHome", "read-only" if _under(seen, HOME_DIRS) else "yes"),
    ]


def _capabilities(config: dict[str, Any], needed: tuple[str, ...]) -> list[tuple[str, Any]]:
    """The bounding set: only `needed` (empty: none at all); as another user they are also granted (ambient)."""
    pairs: list[tuple[str, Any]] = [("CapabilityBoundingSet", " ".join(needed))]
    if config["server"]["user"]:
        pairs += [("AmbientCapabilities", " ".join(needed) or None), ("RemoveIPC", "yes")]
    return pairs


def _make_dirs(config: dict[str, Any], paths: tuple[str, ...]) -> list[tuple[str, Any]]:
    """ExecStartPre= lines creating the writable folders (as root: '+'), owned by User= when set.

    A fresh clone has no run/, and `make clean` removes it; '+' runs outside the sandbox, and the '-' of
    ReadWritePaths= lets that sandbox be set up before the folder exists.
    """
    owner = f"-o {config['server']['user']} " if config["server"]["user"] else ""
    return [("ExecStartPre", f"+/usr/bin/install -d -m 0700 {owner}{_quoted(path)}") for path in dict.fromkeys(paths)]


def _header(config: dict[str, Any]) -> str:
    return f"# GENERATED by scripts/systemd.py (make systemd) from {config['config_file']}: edit that, not this.\n"


def server_unit(config: dict[str, Any], checkout: Checkout, environ: dict[str, str]) -> str:
    server = config["server"]
    repo = checkout.repo
    low_port = server["port"] < PRIVILEGED_PORTS
    loopback = server["host"] in LOOPBACK
    service = [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        *_common(config, checkout, environ),
        *_make_dirs(config, (config["run_dir"],)),
        ("ExecStart", _command_line(checkout, "hello_world.py")),
        # SIGHUP, then it waits for the supervisor's verdict: `systemctl reload` fails when the new code was refused.
        ("ExecReload", _command_line(checkout, "scripts/service.py", "reload")),
        ("KillSignal", "SIGTERM"),
        ("KillMode", "mixed"),  # SIGTERM to the supervisor only: it drains its workers itself
        ("TimeoutStartSec", f"{round(server['reload_timeout']) + 30}s"),
        ("TimeoutStopSec", f"{round(server['drain_timeout']) + 5 + STOP_MARGIN}s"),
        ("Restart", "on-failure"),
        ("RestartSec", "1s"),
        *BASE_SANDBOX,
        *CONFINED,
        ("SystemCallFilter", "~@privileged @resources"),
        *_filesystem(checkout, (config["run_dir"],), ()),
        *_capabilities(config, ("CAP_NET_BIND_SERVICE",) if low_port else ()),
        # Other users' files are nobody's to it; not with a port below 1024 (the capability is the host's).
        ("PrivateUsers", None if low_port else "yes"),
        ("RestrictAddressFamilies", FAMILIES),
        # It only answers; bound to the loopback, only local peers can reach it anyway.
        ("IPAddressDeny", "any" if loopback else None),
        ("IPAddressAllow", "localhost" if loopback else None),
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


def _job_sandbox(config: dict[str, Any], checkout: Checkout, job: Job) -> list[tuple[str, Any]]:
    if job.target == "update":  # runs the tests, pip and git, and moves the checkout: the kernel stays off-limits
        return [*BASE_SANDBOX, *_filesystem(checkout, job.writes, job.reads, strict=False)]
    root_only = () if config["server"]["user"] else job.root_capabilities
    return [
        *BASE_SANDBOX,
        *CONFINED,
        *_filesystem(checkout, job.writes, job.reads),
        *_capabilities(config, root_only),
        ("RestrictAddressFamilies", f"{FAMILIES} AF_NETLINK"),  # rclone (Go) asks the interfaces over netlink
    ]


def job_units(config: dict[str, Any], checkout: Checkout, job: Job, environ: dict[str, str]) -> dict[str, str]:
    name = f"{PREFIX}-{job.target}"
    command = " ".join(_quoted(word) for word in job_argv(checkout.python, checkout.repo, job.target))
    service = [
        ("Type", "oneshot"),
        *_common(config, checkout, environ),
        # Never the plain-path remote: an unmounted disk must fail the backup, not fill the root file system.
        *_make_dirs(config, tuple(path for path in job.writes if path != offsite_folder(config))),
        ("ExecStart", command),  # the script itself: its exit code (75: lock held) reaches systemd
        ("Nice", "10"),
        *_job_sandbox(config, checkout, job),
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


def prometheus_is_local(config: dict[str, Any]) -> bool:
    """Prometheus is to run on this host (its url is on the loopback): the kit runs the monitoring stack."""
    url = config["monitoring"]["prometheus"]["url"]
    return bool(url) and urlsplit(url).hostname in LOOPBACK


# Debian's own units of the monitoring packages (install refuses while they are enabled or running).
DEBIAN_UNITS = {
    "prometheus": "prometheus.service",
    "alertmanager": "prometheus-alertmanager.service",
    "pushgateway": "prometheus-pushgateway.service",
    "node_exporter": "prometheus-node-exporter.service",
}


def monitoring_unit_name(program: str) -> str:
    return f"{PREFIX}-{program.replace('_', '-')}.service"


def monitoring_units(config: dict[str, Any], checkout: Checkout, environ: dict[str, str]) -> dict[str, str]:
    """Prometheus, Alertmanager, the Pushgateway and node_exporter as the kit's own units, with the argv of
    `make monitor` (hello/monitoring/stack.py) and its configs, rendered before each start: one source for both.

    Not Debian's units: they read /etc/default/* and /etc/prometheus, listen on every address and keep their
    data elsewhere; pointing them at the kit's files would need a drop-in replacing each ExecStart= anyway.
    install refuses while Debian's are enabled or running (they would take the ports).
    """
    if not prometheus_is_local(config):
        return {}
    directory = stack.monitor_dir(config)
    names = stack.wanted(config)
    render = _command_line(checkout, "scripts/monitor.py", "render", "configs")
    folders = (config["run_dir"], str(directory), str(stack.textfile_dir(config)))
    units = {}
    for name, url, argv in stack.services(config, directory, stack.binary_paths(names)):
        others = [monitoring_unit_name(other) for other in names if other != name] + [SERVICE]
        reloads = name in ("prometheus", "alertmanager")  # both re-read their config on SIGHUP
        service = [
            ("Type", "simple"),
            *_common(config, checkout, environ),
            *_make_dirs(config, folders),
            ("ExecStartPre", render if name != "node_exporter" else None),  # configs, the login's files
            ("ExecStart", " ".join(_quoted(word) for word in argv)),
            ("ExecReload", "/bin/kill -HUP $MAINPID" if reloads else None),
            ("Restart", "on-failure"),
            ("RestartSec", "1s"),
            *BASE_SANDBOX,
            *CONFINED,
            *_filesystem(checkout, (str(directory),), (str(stack.textfile_dir(config)),)),
            *_capabilities(config, ()),
            ("RestrictAddressFamilies", f"{FAMILIES} AF_NETLINK"),  # Go asks the interfaces over netlink
        ]
        after = " ".join(others) if name == "prometheus" else SERVICE  # Prometheus last: its targets are up
        units[monitoring_unit_name(name)] = (
            _header(config)
            + f"[Unit]\nDescription=Python Hello Printer: {name} of the monitoring stack at {url}\n"
            + f"After=network-online.target {after}\nWants=network-online.target\n"
            + "StartLimitIntervalSec=60s\nStartLimitBurst=5\n"
            + "\n[Service]\n"
            + _lines(service)
            + "\n[Install]\nWantedBy=multi-user.target\n"
        )
    return units


VAULT_SERVE = f"{PREFIX}-serve-vault.service"


def vault_serve_units(config: dict[str, Any], checkout: Checkout, environ: dict[str, str]) -> dict[str, str]:
    """Production's read-only SFTP for the vault (backup_script.py serve-vault), when system.backup.vault.listen is
    set: it reads the archives and the vault's public key, and writes only its host key in run_dir."""
    vault, backup = config["backup"]["vault"], config["backup"]
    if vault["listen"] is None:
        return {}
    command = _command_line(checkout, "backup_script.py", "serve-vault")
    reads = (backup["destination"], *((vault["authorized_keys"],) if vault["authorized_keys"] else ()))
    service = [
        ("Type", "simple"),
        *_common(config, checkout, environ),
        *_make_dirs(config, (config["run_dir"],)),
        ("ExecStart", command),
        ("KillSignal", "SIGTERM"),  # it stops rclone and exits 0
        ("Restart", "on-failure"),
        ("RestartSec", "5s"),
        *BASE_SANDBOX,
        *CONFINED,
        *_filesystem(checkout, (config["run_dir"],), reads),
        *_capabilities(config, ("CAP_DAC_READ_SEARCH",) if not config["server"]["user"] else ()),  # 0600 archives
        ("RestrictAddressFamilies", f"{FAMILIES} AF_NETLINK"),  # rclone (Go) asks the interfaces over netlink
    ]
    return {
        VAULT_SERVE: _header(config)
        + "[Unit]\nDescription=Python Hello Printer: the archives, read-only over SFTP for the vault\n"
        + "After=network-online.target\nWants=network-online.target\n"
        + "\n[Service]\n"
        + _lines(service)
        + "\n[Install]\nWantedBy=multi-user.target\n"
    }


def render_units(config: dict[str, Any], checkout: Checkout, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Every unit's file name and text for this checkout and config (environ: where HELLO_CONFIG is read)."""
    environ = dict(os.environ if environ is None else environ)
    units = {SERVICE: server_unit(config, checkout, environ)}
    for job in jobs(config):
        units.update(job_units(config, checkout, job, environ))
    units.update(monitoring_units(config, checkout, environ))
    units.update(vault_serve_units(config, checkout, environ))
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
    script = " ".join(_quoted(word) for word in command_argv("python", repo, JOBS[target][0])[1:])
    runs_here = re.search(rf"^ExecStart=.* {re.escape(script)}( |$)", service, re.MULTILINE)
    if script.startswith("-m "):  # a module of scripts/: this checkout's when it runs there
        runs_here = runs_here and re.search(rf"^WorkingDirectory={re.escape(_quoted(repo))}$", service, re.MULTILINE)
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


def exposure_limit(name: str) -> float:
    """The highest `systemd-analyze security` exposure make lint accepts for a unit."""
    return UPDATE_EXPOSURE_LIMIT if name == f"{PREFIX}-update.service" else EXPOSURE_LIMIT


def exposure(path: Path) -> float:
    """`systemd-analyze security --offline=true` of a unit file: its overall exposure (0 best, 10 worst).

    Offline, it reads the file as written; `systemd-analyze security NAME` on a host rates the loaded unit.
    """
    done = _run([analyze_binary(), "security", "--offline=true", "--no-pager", str(path)])
    return parse_exposure(done.stdout, path.name, done.stderr)


def parse_exposure(output: str, name: str, errors: str = "") -> float:
    """The figure of 'Overall exposure level for NAME: 1.6 OK' in systemd-analyze security's output."""
    match = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+\.\d+)", output)
    if not match:
        detail = (errors.strip().splitlines() or ["no overall exposure level in its output"])[-1]
        raise UnitsError(f"{ANALYZE} security {name}: {detail}")
    return float(match.group(1))


def check_units(units: dict[str, str], rated: dict[str, float] | None = None) -> list[str]:
    """Every problem systemd-analyze finds in these units (verify, calendar for each timer, and each
    service's exposure above its limit); rated: filled with each service's exposure."""
    with tempfile.TemporaryDirectory(prefix="hello-units-") as scratch:
        directory = Path(scratch)
        for name, text in units.items():
            (directory / name).write_text(text)
        problems = [line.replace(scratch + "/", "") for line in verify_units(directory)]
        levels: dict[str, float] = {}
        for path in sorted(directory.glob("*.service")):
            try:
                levels[path.name] = exposure(path)
            except UnitsError as exc:  # a unit it cannot even rate (a broken file): verify says why
                problems.append(str(exc))
        if rated is not None:
            rated.update(levels)
        for name, level in levels.items():
            if level > exposure_limit(name):
                problems.append(
                    f"{name}: systemd-analyze security rates it {level:.1f}, above the limit "
                    f"{exposure_limit(name):.1f}: restore its sandbox (hello/platform/units.py)"
                )
    for timer, spec in calendars(units).items():
        reason = check_calendar(spec)
        if reason:
            problems.append(f"{timer}: OnCalendar={spec}: {reason}")
    return problems
