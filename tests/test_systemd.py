"""The systemd units (hello/platform/units.py, scripts/systemd.py) checked with the real systemd-analyze, installed
under a scratch root with the real systemctl, and the supervisor's sd_notify messages received on a real unix socket.

systemd is not PID 1 here: `systemd-analyze verify` and `systemctl --root` work without it; nothing is started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from hello.base.checkout import CHECKOUT
from hello.base.config import RunFiles, load_config
from hello.base.http_client import http_request
from hello.base.proc import free_port, wait_until
from hello.monitoring import stack
from hello.platform.units import (
    EXPOSURE_LIMIT,
    RESTORE_CAPABILITIES,
    SERVICE,
    Checkout,
    calendars,
    check_units,
    enabled_timer,
    every_calendar,
    exposure_limit,
    render_units,
)
from hello.server import restarts, sdnotify
from tests.support.configs import write_config
from tests.support.processes import ProcessRegistry
from tests.support.tools import PYTHON, require_tool

SCRIPT = ["-m", "scripts.systemd"]  # run in the checkout (cwd=CHECKOUT)
PYTHON_OF_UNITS = CHECKOUT / ".venv" / "bin" / "python"


@pytest.fixture
def analyze() -> str:
    return require_tool("systemd-analyze", "systemd")


def units_for(tmp_path: Path, overrides: dict | None = None, environ: dict | None = None) -> dict[str, str]:
    config = load_config(write_config(tmp_path, overrides))
    return render_units(config, Checkout.here(), environ or {})


def systemd_py(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    return subprocess.run([PYTHON, *SCRIPT, *args], cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=120)


def setting(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def test_default_units_verify(tmp_path: Path, analyze: str) -> None:
    config = write_config(tmp_path)
    result = systemd_py(config, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    written = systemd_py(config, "render", "--destdir", str(tmp_path / "units"))
    assert written.returncode == 0, written.stderr
    assert sorted(path.name for path in (tmp_path / "units").iterdir()) == [
        "hello-world-alertmanager.service",  # the monitoring stack: Prometheus's url is on this host
        "hello-world-backup.service",
        "hello-world-backup.timer",
        "hello-world-drill.service",
        "hello-world-drill.timer",
        "hello-world-node-exporter.service",
        "hello-world-prometheus.service",
        "hello-world-pushgateway.service",
        "hello-world-validate.service",
        "hello-world-validate.timer",
        "hello-world.service",
    ]
    printed = systemd_py(config)  # no command: print, as `make systemd` does
    assert printed.returncode == 0 and "# --- hello-world.service" in printed.stdout


@pytest.mark.parametrize(
    ("unit", "old", "new", "expected"),
    [
        (SERVICE, "KillMode=mixed", "KillMode=mixed\nRestartSecs=1s", "Unknown key"),
        (SERVICE, "[Service]", "[Sevrice]", "Unknown section"),
        ("hello-world-backup.timer", "OnCalendar=*-*-* 02:00:00", "OnCalendar=*-*-* 25:00:00", "calendar"),
        ("hello-world-backup.service", "ExecStart=/", "ExecStart=/nonexistent/bin/", "not executable"),
        (SERVICE, "KillMode=mixed", "KillMode=sideways", "kill mode"),
    ],
)
def test_broken_units_fail(tmp_path: Path, analyze: str, unit: str, old: str, new: str, expected: str) -> None:
    units = units_for(tmp_path)
    assert old in units[unit]
    units[unit] = units[unit].replace(old, new, 1)
    problems = check_units(units)
    assert any(expected in problem for problem in problems), problems


def test_server_unit_follows_config(tmp_path: Path, analyze: str) -> None:
    overrides = {"server": {"user": "hello", "drain_timeout": "40s"}, "backup": {"destination": str(tmp_path / "b")}}
    units = units_for(tmp_path, overrides, environ={"HELLO_CONFIG": str(tmp_path / "config.yaml")})
    service = units[SERVICE]
    assert setting(service, "Type") == ["notify"] and setting(service, "NotifyAccess") == ["main"]
    assert setting(service, "User") == ["hello"]
    assert setting(service, "KillSignal") == ["SIGTERM"] and setting(service, "KillMode") == ["mixed"]
    assert int(setting(service, "TimeoutStopSec")[0].removesuffix("s")) > 40 + 5  # above the supervisor's own drain
    assert setting(service, "Restart") == ["on-failure"]
    assert setting(service, "ExecReload") == [f"{CHECKOUT}/.venv/bin/python -m scripts.service reload"]
    assert setting(service, "WorkingDirectory") == [str(CHECKOUT)]  # where the module form runs
    assert setting(service, "ExecStart") == [f"{CHECKOUT}/.venv/bin/python {CHECKOUT}/hello_world.py"]
    assert setting(service, "ProtectSystem") == ["strict"] and setting(service, "NoNewPrivileges") == ["yes"]
    assert setting(service, "ReadWritePaths") == [f"-{tmp_path / 'run'}"]  # '-': missing, no 226/NAMESPACE
    assert setting(service, "ExecStartPre") == [f"+/usr/bin/install -d -m 0700 -o hello {tmp_path / 'run'}"]
    assert f"HELLO_CONFIG={tmp_path / 'config.yaml'}" in setting(service, "Environment")
    assert setting(service, "CapabilityBoundingSet") == [""] and setting(service, "AmbientCapabilities") == []
    backup = units["hello-world-backup.service"]
    assert setting(backup, "ReadWritePaths") == [f"-{tmp_path / 'run'}", f"-{tmp_path / 'b'}"]
    assert setting(backup, "User") == ["hello"]
    assert setting(backup, "ExecStart") == [f"{CHECKOUT}/.venv/bin/python {CHECKOUT}/backup_script.py create"]
    assert setting(backup, "CapabilityBoundingSet") == [""]  # as hello it reads what hello may read
    assert check_units(units) == []


def test_timers_follow_config(tmp_path: Path, analyze: str) -> None:
    overrides = {
        "backup": {"time": "03:45", "timezone": "Europe/Berlin"},
        "validation": {"interval": None},
        "update": {"interval": "6h"},
    }
    units = units_for(tmp_path, overrides)
    assert calendars(units) == {
        "hello-world-backup.timer": "*-*-* 03:45:00 Europe/Berlin",
        "hello-world-drill.timer": "Sun *-*-* 04:45:00 Europe/Berlin",  # weekly, an hour after the backup
        "hello-world-update.timer": "*-*-* 00/6:00:00",
    }
    assert setting(units["hello-world-backup.timer"], "Persistent") == ["true"]
    assert setting(units["hello-world-drill.timer"], "Persistent") == ["true"]
    assert setting(units["hello-world-update.timer"], "Persistent") == []
    assert setting(units["hello-world-update.service"], "ExecStart") == [
        f"{PYTHON_OF_UNITS} {CHECKOUT}/update_protocol.py"
    ]
    assert setting(units["hello-world-drill.service"], "ExecStart") == [
        f"{PYTHON_OF_UNITS} {CHECKOUT}/backup_script.py drill"
    ]
    assert not any("validate" in name for name in units)
    assert check_units(units) == []


INTERVALS = [m * 60 for m in range(1, 61) if 60 % m == 0] + [h * 3600 for h in range(1, 25) if 24 % h == 0]


def test_every_interval_is_a_calendar_with_that_period(analyze: str) -> None:
    """Each interval config.yaml accepts becomes an OnCalendar= whose elapses are that far apart."""
    env = {**os.environ, "TZ": "UTC"}  # no DST step between two elapses
    for seconds in INTERVALS:
        spec = every_calendar(seconds)
        done = subprocess.run(
            [analyze, "calendar", "--iterations=3", spec], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, (spec, done.stderr)
        elapses = [
            line.split(": ", 1)[1] for line in done.stdout.splitlines() if "Next elapse" in line or "Iter." in line
        ]
        times = [
            int(subprocess.run(["date", "-d", text, "+%s"], capture_output=True, text=True, env=env).stdout)
            for text in elapses
        ]
        assert len(times) == 3 and {b - a for a, b in zip(times, times[1:], strict=False)} == {seconds}, (spec, times)


def test_root_user_is_refused(tmp_path: Path) -> None:
    result = systemd_py(write_config(tmp_path, {"server": {"user": "root"}}))
    assert result.returncode == 2 and "system.server.user" in result.stderr and result.stdout == ""


def test_install_and_uninstall_under_a_root(tmp_path: Path, analyze: str) -> None:
    require_tool("systemctl", "systemd")
    root = tmp_path / "root"
    unit_dir = root / "etc" / "systemd" / "system"
    foreign = unit_dir / "hello-world-mine.service"  # not written by us: left alone
    foreign.parent.mkdir(parents=True)
    foreign.write_text("[Service]\nExecStart=/bin/true\n")

    with_update = write_config(tmp_path / "a", {"update": {"interval": "1h"}})
    result = systemd_py(with_update, "install", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert (unit_dir / "multi-user.target.wants" / SERVICE).is_symlink()
    timers = sorted(path.name for path in (unit_dir / "timers.target.wants").iterdir())
    assert timers == [
        "hello-world-backup.timer",
        "hello-world-drill.timer",
        "hello-world-update.timer",
        "hello-world-validate.timer",
    ]
    assert oct((unit_dir / SERVICE).stat().st_mode & 0o777) == "0o644"
    # What validation's "a scheduler exists" finds: the enabled backup timer of this checkout.
    assert enabled_timer(CHECKOUT, "backup", root) == unit_dir / "hello-world-backup.timer"
    assert enabled_timer(CHECKOUT / "elsewhere", "backup", root) is None

    # Installing a config without the update interval removes the update units it no longer asks for.
    without = write_config(tmp_path / "b")
    assert systemd_py(without, "install", "--root", str(root)).returncode == 0
    assert not (unit_dir / "hello-world-update.timer").exists()
    assert not (unit_dir / "timers.target.wants" / "hello-world-update.timer").exists()
    assert str(tmp_path / "b" / "run") in (unit_dir / SERVICE).read_text()

    removed = systemd_py(without, "uninstall", "--root", str(root))
    assert removed.returncode == 0, removed.stderr
    assert sorted(path.name for path in unit_dir.rglob("*") if not path.is_dir()) == [foreign.name]
    assert enabled_timer(CHECKOUT, "backup", root) is None


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here: install would really install")
def test_install_without_systemd_refuses_and_writes_nothing(tmp_path: Path) -> None:
    result = systemd_py(write_config(tmp_path), "install")
    assert result.returncode == 1 and "systemd is not running" in result.stderr
    assert "make cron" in result.stderr


# --- sd_notify: the test plays systemd on a real unix datagram socket ---


@pytest.fixture
def notify_socket(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(60)  # generous: a busy machine
    yield sock, path
    sock.close()


def receive(sock: socket.socket) -> dict[str, str]:
    message = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in message.splitlines())


def test_supervisor_tells_systemd_ready_reloading_stopping(
    tmp_path: Path, processes: ProcessRegistry, notify_socket
) -> None:
    sock, path = notify_socket
    port = free_port()
    config = write_config(tmp_path, {"server": {"port": port, "workers": 2}})
    env = {**os.environ, "HELLO_CONFIG": str(config), sdnotify.ENV: str(path)}
    proc = processes.start([PYTHON, str(CHECKOUT / "hello_world.py")], cwd=CHECKOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    ready = receive(sock)
    assert ready["READY"] == "1" and url in ready["STATUS"]
    assert http_request(url + "/readyz")[0] == 200  # READY=1 comes once every worker serves

    proc.send_signal(signal.SIGHUP)
    reloading = receive(sock)
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert receive(sock)["READY"] == "1"
    wait_until(lambda: RunFiles(tmp_path / "run").read_state().get("reloads") == 1, 60, "the reload recorded")

    proc.send_signal(signal.SIGTERM)
    assert receive(sock) == {"STOPPING": "1"}
    assert proc.wait(timeout=60) == 0
    assert restarts.STOPPED in RunFiles(tmp_path / "run").read_state()


def test_notify_abstract_socket_and_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"hello-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv(sdnotify.ENV, "@" + name)
        assert sdnotify.notify(sdnotify.READY, sdnotify.status("a\nb"))
        assert sock.recv(4096) == b"READY=1\nSTATUS=a b"
    monkeypatch.setenv(sdnotify.ENV, "/nonexistent/notify.sock")
    assert sdnotify.notify(sdnotify.READY) is False  # a failed send is logged, never raised
    monkeypatch.delenv(sdnotify.ENV)
    assert sdnotify.notify(sdnotify.READY) is False


def test_home_is_read_only_when_the_checkout_is_there(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"update": {"interval": "1h"}}))
    for repo, expected in ((Path("/home/hello/app"), "read-only"), (Path("/srv/hello"), "yes")):
        units = render_units(config, Checkout(repo, repo / ".venv/bin/python", "/usr/bin/make"), {})
        assert {setting(text, "ProtectHome")[0] for name, text in units.items() if name.endswith(".service")} == {
            expected
        }
        update = units["hello-world-update.service"]
        assert setting(update, "ProtectSystem") == ["full"] and f"-{repo}" in setting(update, "ReadWritePaths")


# --- the sandbox (issue 20.7): systemd-analyze security, offline on the rendered files ---


def rated(units: dict[str, str]) -> dict[str, float]:
    levels: dict[str, float] = {}
    problems = check_units(units, levels)
    assert not problems, problems
    return levels


@pytest.mark.parametrize("user", [None, "hello"])
def test_every_unit_rates_within_its_limit(tmp_path: Path, analyze: str, user: str | None) -> None:
    levels = rated(units_for(tmp_path, {"server": {"user": user}, "update": {"interval": "1h"}}))
    jobs = ("", "-backup", "-drill", "-validate", "-update", "-prometheus", "-alertmanager", "-pushgateway")
    assert set(levels) == {f"hello-world{job}.service" for job in (*jobs, "-node-exporter")}
    assert levels[SERVICE] <= EXPOSURE_LIMIT == 4.0
    assert all(level <= exposure_limit(name) for name, level in levels.items()), levels
    assert max(level for name, level in levels.items() if "update" not in name) <= EXPOSURE_LIMIT


@pytest.mark.parametrize("dropped", ["CapabilityBoundingSet", "SystemCallFilter", "ProtectSystem", "PrivateUsers"])
def test_lint_fails_a_server_unit_above_the_limit(tmp_path: Path, analyze: str, dropped: str) -> None:
    """Each loosening alone may pass; together they must not: drop the named setting and the rest of the set."""
    units = units_for(tmp_path)
    loose = {"CapabilityBoundingSet", "SystemCallFilter", "ProtectSystem", "PrivateUsers", "RestrictAddressFamilies"}
    loose |= {"RestrictNamespaces", "ProtectKernelTunables", "ProtectKernelModules", "PrivateDevices", dropped}
    units[SERVICE] = "".join(line for line in units[SERVICE].splitlines(True) if line.split("=")[0] not in loose)
    problems = check_units(units)
    assert any(f"{SERVICE}: systemd-analyze security rates it" in problem for problem in problems), problems
    result = subprocess.run(
        [PYTHON, *SCRIPT, "check", "--json"], cwd=CHECKOUT, capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert result.returncode == 0, result.stdout + result.stderr  # the real units of this checkout pass
    assert json.loads(result.stdout)["exposure"][SERVICE] <= EXPOSURE_LIMIT


def test_low_port_gets_only_the_bind_capability(tmp_path: Path, analyze: str) -> None:
    for user, ambient in ((None, []), ("hello", ["CAP_NET_BIND_SERVICE"])):
        service = units_for(tmp_path, {"server": {"port": 80, "user": user}})[SERVICE]
        assert setting(service, "CapabilityBoundingSet") == ["CAP_NET_BIND_SERVICE"]
        assert setting(service, "AmbientCapabilities") == ambient
        assert setting(service, "PrivateUsers") == []  # the capability must be the host's, not a namespace's
    service = units_for(tmp_path, {"server": {"host": "0.0.0.0"}})[SERVICE]
    assert setting(service, "IPAddressDeny") == []  # answers anyone when bound to every address
    assert setting(units_for(tmp_path)[SERVICE], "IPAddressDeny") == ["any"]


def test_plain_path_remote_is_writable_for_the_backup_and_read_by_the_drill(tmp_path: Path, analyze: str) -> None:
    remote = "/mnt/usb/hello"
    units = units_for(tmp_path, {"backup": {"offsite": {"remote": remote}}})
    backup, drill = units["hello-world-backup.service"], units["hello-world-drill.service"]
    assert f"-{remote}" in setting(backup, "ReadWritePaths")
    # Never created by the unit: an unmounted disk fails the backup instead of filling the root file system.
    assert not any(remote in line for line in setting(backup, "ExecStartPre"))
    assert f"-{remote}" not in setting(drill, "ReadWritePaths")
    assert setting(drill, "CapabilityBoundingSet") == [" ".join(RESTORE_CAPABILITIES)]  # restores owners as root
    rated(units)
    # An rclone remote with rclone's default config (in root's home): the home stays readable.
    rclone = units_for(tmp_path, {"backup": {"offsite": {"remote": "offsite:hello"}}})
    assert setting(rclone["hello-world-backup.service"], "ProtectHome") == ["read-only"]


def test_tmp_and_home_layouts_render_units_that_see_them(tmp_path: Path) -> None:
    """PrivateTmp= would hide a checkout under /tmp; ProtectHome=yes a venv whose python is pyenv's (in /root)."""
    config = load_config(write_config(tmp_path))  # run_dir under /tmp (pytest's tmp_path)
    srv = Checkout(Path("/srv/hello"), Path("/srv/hello/.venv/bin/python"), "/usr/bin/make")
    service = render_units(config, srv, {})[SERVICE]
    assert setting(service, "PrivateTmp") == ["no"] and setting(service, "ProtectHome") == ["yes"]
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to("/root/.pyenv/versions/3.11.7/bin/python3.11")
    elsewhere = {**config, "run_dir": "/srv/hello/run"}
    service = render_units(elsewhere, Checkout(Path("/srv/hello"), venv / "python", "/usr/bin/make"), {})[SERVICE]
    assert setting(service, "ProtectHome") == ["read-only"]
    assert setting(service, "PrivateTmp") == ["no"]  # the venv itself is under /tmp here


def test_monitoring_units_run_what_make_monitor_runs(tmp_path: Path, analyze: str) -> None:
    """One source: each unit's ExecStart= is stack.services()'s argv; no units when Prometheus is remote."""
    config = load_config(write_config(tmp_path, {"monitoring": {"node_exporter": {"url": None}}}))
    units = render_units(config, Checkout.here(), {})
    directory = stack.monitor_dir(config)
    names = stack.wanted(config)
    assert names == ["prometheus", "pushgateway", "alertmanager"]
    for name, _, argv in stack.services(config, directory, stack.binary_paths(names)):
        unit = units[f"hello-world-{name}.service"]
        assert setting(unit, "ExecStart") == [" ".join(argv)]
        assert setting(unit, "Restart") == ["on-failure"]
        assert f"-{directory}" in setting(unit, "ReadWritePaths")
    render = setting(units["hello-world-prometheus.service"], "ExecStartPre")[-1]
    assert render.endswith(" -m scripts.monitor render configs")
    assert "hello-world-node-exporter.service" not in units
    remote = units_for(tmp_path, {"monitoring": {"prometheus": {"url": "http://prometheus.example:9090"}}})
    assert not [name for name in remote if "prometheus" in name or "alertmanager" in name]
