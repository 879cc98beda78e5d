"""scripts/cron.py: the crontab lines derived from real config files (`make cron`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from hello.base.checkout import CHECKOUT
from hello.base.config import EXIT_LOCKED, RunFiles, load_config
from hello.base.locks import job_lock
from hello.base.proc import free_port
from tests.support.configs import write_config
from tests.support.tools import PYTHON


def cron(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    argv = [PYTHON, "-m", "scripts.cron", *args]
    return subprocess.run(argv, cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=30)


KEEP_UP = ("-m scripts.service", "-m scripts.monitor")  # the lines that bring the service back (tests below)
VENV_PYTHON = CHECKOUT / ".venv" / "bin" / "python"


def job_lines(output: str) -> list[str]:
    """The periodic jobs (backup, validate, update), not the lines that keep the service up."""
    lines = [line for line in output.splitlines() if line and line[0] in "0123456789*"]
    return [line for line in lines if not any(script in line for script in KEEP_UP)]


def test_repo_config_gives_backup_at_two_and_validation_every_15_minutes(tmp_path: Path) -> None:
    result = cron(write_config(tmp_path))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    expected_tail = f"&& mkdir -p {run_dir} && {VENV_PYTHON} {CHECKOUT}/{{}} >> {run_dir}/cron.log 2>&1"
    assert job_lines(result.stdout) == [
        f"0 2 * * * cd {CHECKOUT} " + expected_tail.format("backup_script.py create"),
        f"*/15 * * * * cd {CHECKOUT} " + expected_tail.format("validation_test.py"),
        f"0 3 * * 0 cd {CHECKOUT} " + expected_tail.format("backup_script.py drill"),  # weekly, after the backup
    ]
    assert not [line for line in job_lines(result.stdout) if "make " in line]  # make turns every failure into 2
    path_line = next(line for line in result.stdout.splitlines() if line.startswith("PATH="))
    assert "/usr/bin" in path_line.split("=", 1)[1].split(":")
    assert f"HELLO_CONFIG={tmp_path / 'config.yaml'}" in result.stdout
    assert "CRON_TZ" not in result.stdout


@pytest.mark.parametrize(("written", "schedule"), [("02:00", "0 2 * * *"), ("23:30", "30 23 * * *")])
def test_seed_config_with_unquoted_time(tmp_path: Path, written: str, schedule: str) -> None:
    config = tmp_path / "config.yaml"  # the seed's config.yaml, time unquoted (YAML 1.1 reads 23:30 as 1410)
    config.write_text(
        "system:\n  monitoring:\n    prometheus:\n      scrape_interval: 15s\n    grafana:\n"
        f"      dashboard: hello-world-dashboard\n  backup:\n    schedule: daily\n    time: {written}\n"
        "  update:\n    protocol: update_protocol.py\n"
    )
    result = cron(config)
    assert result.returncode == 0, result.stderr
    assert job_lines(result.stdout)[0].startswith(f"{schedule} cd {CHECKOUT} && ")
    assert job_lines(result.stdout)[0].endswith(f"backup_script.py create >> {tmp_path / 'run' / 'cron.log'} 2>&1")


def test_timezone_intervals_and_json(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "backup": {"time": "03:45", "timezone": "Europe/Berlin"},
            "validation": {"interval": None},
            "update": {"interval": "6h"},
        },
    )
    result = cron(config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "CRON_TZ=Europe/Berlin" in lines
    assert lines.index("CRON_TZ=Europe/Berlin") < lines.index(job_lines(result.stdout)[0])
    schedules = [line.split(" cd ")[0] for line in job_lines(result.stdout)]
    assert schedules == ["45 3 * * *", "0 */6 * * *", "45 4 * * 0"]
    assert "validation_test.py" not in result.stdout and "update_protocol.py" in result.stdout

    data = json.loads(cron(config, "--json").stdout)
    assert data["timezone"] == "Europe/Berlin"
    assert [(e["target"], e["schedule"]) for e in data["entries"] if e["target"] not in ("start", "monitor")] == [
        ("backup", "45 3 * * *"),
        ("update", "0 */6 * * *"),
        ("drill", "45 4 * * 0"),
    ]


@pytest.mark.parametrize(("interval", "schedule"), [("1m", "* * * * *"), ("1h", "0 * * * *"), ("24h", "0 0 * * *")])
def test_interval_edges(tmp_path: Path, interval: str, schedule: str) -> None:
    result = cron(write_config(tmp_path, {"validation": {"interval": interval}}))
    assert job_lines(result.stdout)[1].startswith(f"{schedule} cd ")


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    result = cron(write_config(tmp_path, {"backup": {"time": "25:00"}}))
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.strip().count("\n") == 0
    assert "system.backup.time" in result.stderr


def test_start_at_reboot_and_every_minute_when_down(tmp_path: Path) -> None:
    result = cron(write_config(tmp_path))
    assert result.returncode == 0, result.stderr
    log = tmp_path / "run" / "cron.log"
    prefix = f"cd {CHECKOUT} && mkdir -p {tmp_path / 'run'} && "
    start = f"{VENV_PYTHON} -m scripts.service start --quiet >> {log} 2>&1"  # in the checkout: the cd before
    lines = result.stdout.splitlines()
    assert f"@reboot {prefix}{start}" in lines
    assert f"* * * * * {prefix}{start}" in lines
    # The repo's config has Prometheus on 127.0.0.1: monitoring comes back the same way.
    monitor = f"{VENV_PYTHON} -m scripts.monitor start >> {log} 2>&1"
    assert f"@reboot {prefix}{monitor}" in lines
    guard = f"{VENV_PYTHON} -m scripts.monitor status >/dev/null 2>&1"
    assert f"* * * * * {prefix}{{ {guard} || {monitor}; }}" in lines


@pytest.mark.parametrize("url", [None, "http://prometheus.example:9090"])
def test_no_monitor_lines_when_prometheus_is_not_local(tmp_path: Path, url: str | None) -> None:
    result = cron(write_config(tmp_path, {"monitoring": {"prometheus": {"url": url}}}))
    assert result.returncode == 0, result.stderr
    assert "scripts.monitor" not in result.stdout
    assert "@reboot" in result.stdout and "-m scripts.service start --quiet" in result.stdout


def test_every_minute_line_is_quiet_and_exit_0_while_running(tmp_path: Path, processes) -> None:
    """The every-minute line, run by a real shell in cron's bare environment, against a running server."""
    port = free_port()
    config = write_config(tmp_path, {"server": {"port": port}})
    line = next(
        line for line in cron(config).stdout.splitlines() if line.startswith("* * * * *") and "scripts.service" in line
    )
    command = line.removeprefix("* * * * * ").replace(r"\%", "%")
    env = {"PATH": "/usr/bin:/bin", "HELLO_CONFIG": str(config)}
    first = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    files = RunFiles(tmp_path / "run")
    pid = files.running_pid()
    if pid:
        processes.adopt(pid)
    assert first.returncode == 0 and pid, (tmp_path / "run" / "cron.log").read_text()
    assert "started: pid" in (tmp_path / "run" / "cron.log").read_text()
    size = (tmp_path / "run" / "cron.log").stat().st_size
    again = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "run" / "cron.log").stat().st_size == size  # nothing said while it runs
    assert files.running_pid() == pid
    stop = subprocess.run([PYTHON, "-m", "scripts.service", "stop"], cwd=CHECKOUT, env=env, timeout=60)
    assert stop.returncode == 0


def test_backup_line_exits_75_while_another_backup_holds_the_lock(tmp_path: Path) -> None:
    """The scheduler sees the script's own exit code: 75 (lock held), not make's 2 for every failure."""
    config = write_config(tmp_path)
    line = next(line for line in cron(config).stdout.splitlines() if "backup_script.py create" in line)
    command = line.split(" ", 5)[5].replace(r"\%", "%")  # after the five schedule fields, as cron's shell gets it
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "HELLO_CONFIG": str(config)}  # cron's bare environment
    run_dir = Path(load_config(config)["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    with job_lock(run_dir / "backup.lock"):  # another backup runs
        held = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    assert held.returncode == EXIT_LOCKED, (held.returncode, (run_dir / "cron.log").read_text())
    assert "lock" in (run_dir / "cron.log").read_text()


def test_make_cron_prints_crontab_lines_only_on_a_fresh_clone(tmp_path: Path) -> None:
    """`make cron | crontab -` on a fresh clone: the venv's creation says nothing on stdout."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(CHECKOUT), str(clone)], check=True, timeout=120)
    changed = subprocess.run(
        ["git", "-C", str(CHECKOUT), "ls-files", "-z", "-m", "-o", "--exclude-standard"], capture_output=True, text=True
    ).stdout
    for name in filter(None, changed.split("\0")):  # this working tree's uncommitted changes, under test
        if (CHECKOUT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            (clone / name).write_bytes((CHECKOUT / name).read_bytes())
    env = {k: v for k, v in os.environ.items() if k not in ("HELLO_CONFIG", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(["make", "-s", "cron"], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (clone / ".venv" / "bin" / "python").exists()  # it did make the venv
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# Python Hello Printer jobs") and lines[1].startswith("PATH=")
    schedule = re.compile(r"^(@reboot|[0-9*/,-]+( [0-9*/,-]+){4}) ")
    assert all(line.startswith(("#", "PATH=", "CRON_TZ=", "HELLO_CONFIG=")) or schedule.match(line) for line in lines)
