"""Comes back by itself: a supervisor SIGKILLed under load is started again by cron's every-minute line,
its start history says it crashed, and validation reports that restart once.

The restart time is measured by `make bench-restart` (scripts/bench_restart.py); here only a generous deadline.
The round both run is tests/support/restart.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from hello.base.checkout import CHECKOUT
from hello.base.config import RunFiles
from hello.base.proc import free_port, wait_until
from hello.server import restarts
from tests.support import restart
from tests.support.processes import ProcessRegistry
from tests.support.tools import PYTHON

VALIDATION = str(CHECKOUT / "validation_test.py")
CHECK = "no restart after a crash since the last run"


def restart_check(config: Path) -> dict:
    """The result of validation's restart check, run as `make validate` would."""
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    done = subprocess.run(
        [PYTHON, VALIDATION, "--only", "restarts", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    return next(result for result in json.loads(done.stdout) if result["check"] == CHECK)


def test_sigkilled_supervisor_comes_back_through_crons_line(tmp_path: Path, processes: ProcessRegistry) -> None:
    port = free_port()
    config = restart.scratch_config(tmp_path, port, workers=2)
    files = RunFiles(tmp_path / "run")
    command = restart.every_minute_start(config)

    first = restart.run_cron_line(command, config)
    assert first.returncode == 0, first.stderr
    first_pid = files.running_pid()
    assert first_pid
    processes.adopt(first_pid)
    assert [entry["after"] for entry in files.read_state()[restarts.STARTS]] == [restarts.FIRST]
    assert restart_check(config)["status"] == "PASS"

    load = restart.Load(port, clients=4)
    try:
        wait_until(lambda: load.ok > 200, 60, "load answered before the kill")
        result = restart.kill_and_restart(tmp_path, port, command, config, load)
    finally:
        load.stop()
    new_pid = files.running_pid()
    assert new_pid and new_pid != first_pid
    processes.adopt(new_pid)
    assert result.kill_to_ready < restart.READY_TIMEOUT and result.ok_after > 100

    state = files.read_state()
    assert [entry["after"] for entry in state[restarts.STARTS]] == [restarts.FIRST, restarts.AFTER_CRASH]
    assert state["pid"] == new_pid

    crashed = restart_check(config)
    assert crashed["status"] == "FAIL" and "1 after a crash" in crashed["detail"], crashed
    again = restart_check(config)  # reported once: the next run looks only at what came after
    assert again["status"] == "PASS" and "not restarted since" in again["detail"], again

    # A clean stop and start is a restart, not a crash.
    stop = subprocess.run([PYTHON, str(CHECKOUT / "scripts" / "service.py"), "stop"], env=restart.cron_env(config))
    assert stop.returncode == 0 and restarts.STOPPED in files.read_state()
    assert restart.run_cron_line(command, config).returncode == 0
    processes.adopt(files.running_pid())
    assert files.read_state()[restarts.STARTS][-1]["after"] == restarts.AFTER_STOP
    clean = restart_check(config)
    assert clean["status"] == "PASS" and "after a clean stop" in clean["detail"], clean


def test_history_is_bounded_and_survives_a_bad_state_file() -> None:
    state: dict = {}
    for number in range(restarts.HISTORY + 5):
        state = {"started": float(number), restarts.STARTS: restarts.starts_after(state, float(number), number)}
    assert len(state[restarts.STARTS]) == restarts.HISTORY
    assert state[restarts.STARTS][-1]["after"] == restarts.AFTER_CRASH  # no `stopped` written: a crash
    assert restarts.starts_after({restarts.STARTS: "garbage", "started": 5.0, restarts.STOPPED: 6.0}, 7.0, 1) == [
        {"at": 7.0, "pid": 1, "after": restarts.AFTER_STOP}
    ]


def test_two_starts_at_once_take_turns(tmp_path: Path, processes: ProcessRegistry) -> None:
    """Cron's @reboot and every-minute lines fire in the same second at boot: one server, both exit 0."""
    config = restart.scratch_config(tmp_path, free_port(), workers=1)
    files = RunFiles(tmp_path / "run")
    command = restart.every_minute_start(config)
    env = restart.cron_env(config)
    starts = [processes.start(["/bin/sh", "-c", command], env=env) for _ in range(2)]
    codes = [proc.wait(timeout=restart.READY_TIMEOUT) for proc in starts]
    pid = files.running_pid()
    assert pid
    processes.adopt(pid)
    assert codes == [0, 0], (tmp_path / "run" / "cron.log").read_text()
    log = (tmp_path / "run" / "cron.log").read_text()
    assert log.count("started: pid") == 1 and "start failed" not in log, log
    assert len(files.read_state()[restarts.STARTS]) == 1
