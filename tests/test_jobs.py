"""hello/base/locks.py and job_metrics.py: the job lock across real processes, and job metrics as a textfile and on a
real Pushgateway."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hello.base.checkout import CHECKOUT
from hello.base.files import NotPrivate, private_dir
from hello.base.http_client import http_request
from hello.base.job_metrics import record_job
from hello.base.locks import LockHeld, job_lock
from hello.base.proc import free_port
from tests.support.monitoring import start_pushgateway

pytestmark = pytest.mark.fast  # the in-process tier (make test-fast)

# Run in the checkout (cwd), whose root is then on sys.path.
HOLDER = """
import sys, time
from hello.base.locks import job_lock
with job_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _values(path: Path) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(path.read_text()) for s in f.samples}


def test_lock_is_exclusive_across_processes_and_released(tmp_path: Path, processes) -> None:
    lock = tmp_path / "run" / "job.lock"
    holder = processes.start([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True, cwd=CHECKOUT)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockHeld) as caught, job_lock(lock):
        pass
    assert caught.value.pid == holder.pid
    holder.kill()
    holder.wait(timeout=10)
    with job_lock(lock):  # the kernel dropped the dead holder's flock: taken over
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists(), "released and removed on exit"


def test_dead_pid_lock_is_taken_over_with_a_warning(tmp_path: Path, caplog) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "job.lock"
    lock.write_text(f"{dead.pid}\n")
    with caplog.at_level(logging.WARNING, logger="hello_jobs"), job_lock(lock):
        pass
    assert f"stale lock {lock} of PID {dead.pid}" in caplog.text


def test_live_pid_without_flock_still_holds_unless_the_pid_was_reused(tmp_path: Path, processes) -> None:
    lock = tmp_path / "job.lock"
    sleeper = processes.start(["sleep", "60"])
    lock.write_text(f"{sleeper.pid}\n")
    with pytest.raises(LockHeld) as caught, job_lock(lock):
        pass
    assert caught.value.pid == sleeper.pid
    old = time.time() - 3600
    os.utime(lock, (old, old))  # written before the sleeper existed: its PID is a reused one
    with job_lock(lock):
        pass


def test_a_lock_that_is_a_symbolic_link_is_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("victim\n")
    before = victim.stat()
    lock = tmp_path / "run" / "job.lock"
    lock.parent.mkdir()
    lock.symlink_to(victim)
    with pytest.raises(OSError, match="Too many levels of symbolic links"), job_lock(lock):
        pass
    assert victim.read_text() == "victim\n" and victim.stat().st_mtime_ns == before.st_mtime_ns
    assert lock.is_symlink(), "the link is left as it was"


def test_private_dir_is_ours_and_0700_and_refuses_links_and_other_users(tmp_path: Path) -> None:
    folder = private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.geteuid()
    (tmp_path / "wide").mkdir(mode=0o777)
    (tmp_path / "wide").chmod(0o777)
    assert stat.S_IMODE(private_dir(tmp_path / "wide", readable=True).stat().st_mode) == 0o755
    assert stat.S_IMODE(private_dir(tmp_path / "wide").stat().st_mode) == 0o700
    (tmp_path / "link").symlink_to(folder)
    with pytest.raises(NotPrivate, match="not a folder"):
        private_dir(tmp_path / "link")
    if os.geteuid() == 0:
        (tmp_path / "theirs").mkdir()
        os.chown(tmp_path / "theirs", 65534, 65534)
        with pytest.raises(NotPrivate, match="belongs to uid 65534"):
            private_dir(tmp_path / "theirs")


def test_record_job_textfile_keeps_last_success_across_a_failure(tmp_path: Path) -> None:
    config = {"run_dir": str(tmp_path / "run"), "monitoring": {"pushgateway": {"url": None}}}
    path = record_job(config, "hello_world_update", success=False, started=90.0, finished=100.0)
    assert path == tmp_path / "run" / "metrics" / "hello_world_update.prom"
    values = _values(path)
    assert values == {"hello_world_update_last_run_timestamp_seconds": 100.0, "hello_world_update_success": 0.0}

    record_job(
        config,
        "hello_world_backup",
        success=True,
        started=1.0,
        finished=200.0,
        extra={"hello_world_backup_size_bytes": 1234, "hello_world_backup_duration_seconds": 2.5},
    )
    record_job(config, "hello_world_backup", success=False, started=290.0, finished=300.0)
    values = _values(tmp_path / "run" / "metrics" / "hello_world_backup.prom")
    assert values["hello_world_backup_success"] == 0.0
    assert values["hello_world_backup_last_run_timestamp_seconds"] == 300.0
    assert values["hello_world_backup_last_success_timestamp_seconds"] == 200.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["hello_world_backup.prom", "hello_world_update.prom"]


def test_record_job_pushes_to_a_real_pushgateway_and_a_dead_one_only_warns(tmp_path: Path, processes, caplog) -> None:
    url = start_pushgateway(processes, tmp_path / "pushgateway")
    config = {"run_dir": str(tmp_path / "run"), "monitoring": {"pushgateway": {"url": url}}}
    record_job(config, "hello_world_update", success=True, started=1.0, finished=2.0)
    body = http_request(url + "/metrics")[2].decode()
    assert 'hello_world_update_success{instance="",job="hello_world_update"} 1' in body
    assert 'hello_world_update_last_success_timestamp_seconds{instance="",job="hello_world_update"} 2' in body

    config["monitoring"]["pushgateway"]["url"] = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="hello_jobs"):
        path = record_job(config, "hello_world_update", success=True, started=1.0, finished=3.0)
    assert "could not push hello_world_update metrics" in caplog.text
    assert _values(path)["hello_world_update_last_run_timestamp_seconds"] == 3.0
