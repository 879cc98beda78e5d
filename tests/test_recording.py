"""Every failed backup or update run is recorded, even on a full disk (issue 9, part 4).

Real full filesystems (a small tmpfs filled to the last page), a real Pushgateway, the real commands.
"""

from __future__ import annotations

import errno
import os
import random
import re
import subprocess
from pathlib import Path

import pytest

import backup_script
from conftest import PYTHON, REPO, free_port, http_get, start_pushgateway, write_config
from hello.backup.naming import sidecar_path
from hello.base.config import load_config
from tests.support.backups import archives

PAGE = 4096


def fill(mount: Path, leave_pages: int = 0) -> None:
    """Fill the filesystem at mount to its last page, then free leave_pages pages again."""
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 16, PAGE):
            try:
                while os.write(fd, b"\0" * block):
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        size = os.fstat(fd).st_size
        os.ftruncate(fd, size - size % PAGE - leave_pages * PAGE)
    finally:
        os.close(fd)


def pushed(url: str, job: str) -> dict[str, float]:
    """The job's gauges on the Pushgateway: name -> value."""
    body = http_get(url + "/metrics")[2].decode()
    found = re.findall(rf'^({job}_\w+)\{{[^}}]*job="{job}"[^}}]*\}} (\S+)$', body, re.M)
    return {name: float(value) for name, value in found}


def run(script: str, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    return subprocess.run(
        [PYTHON, str(REPO / script), *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )


def config_for(folder: Path, source: Path, destination: Path, *, run_dir: Path | None = None, pushgateway=None):
    """A config in folder/cfg; run_dir (locks, metric textfiles) defaults to folder/cfg/run."""
    overrides = {
        "monitoring": {"pushgateway": {"url": pushgateway}},
        "backup": {"source": str(source), "destination": str(destination), "timezone": "UTC"},
    }
    if run_dir is not None:
        overrides["run_dir"] = str(run_dir)
    return write_config(folder / "cfg", overrides)


def source_tree(folder: Path, size: int = 20_000) -> Path:
    folder.mkdir()
    (folder / "data.bin").write_bytes(random.Random(9).randbytes(size))  # random: the archive is as large
    return folder


def small_last_archive(destination: Path) -> None:
    """An old 100-byte archive: the disk guard expects the next one that small, and lets it run into a full disk."""
    destination.mkdir(mode=0o700, exist_ok=True)
    (destination / "hello-world-20200101T000000Z.tar.gz").write_bytes(b"x" * 100)


def new_archives(destination: Path) -> list[str]:
    return sorted(p.name for p in destination.iterdir() if not p.name.startswith("hello-world-2020"))


def test_a_backup_failing_at_its_lock_on_a_full_disk_is_pushed(tmp_path: Path, small_fs: Path, processes) -> None:
    url = start_pushgateway(processes, tmp_path)
    source = source_tree(tmp_path / "src")
    config = config_for(tmp_path, source, tmp_path / "backups", pushgateway=url, run_dir=small_fs)
    fill(small_fs)
    result = run("backup_script.py", config)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert any("cannot take the lock" in line and "No space left on device" in line for line in lines), lines
    (recording,) = [line for line in lines if "metrics" in line]
    assert "could not write hello_world_backup metrics" in recording and f"pushed to {url}" in recording
    assert len(lines) == 2 and "Traceback" not in result.stderr
    assert pushed(url, "hello_world_backup")["hello_world_backup_success"] == 0
    assert archives(tmp_path / "backups") == []


def test_a_backup_failing_at_its_archive_on_a_full_disk_is_pushed(tmp_path: Path, small_fs: Path, processes) -> None:
    url = start_pushgateway(processes, tmp_path)
    small_last_archive(small_fs / "backups")
    config = config_for(tmp_path, source_tree(tmp_path / "src", 200_000), small_fs / "backups", pushgateway=url)
    fill(small_fs, leave_pages=20)  # room enough for the disk guard's estimate, not for the archive
    result = run("backup_script.py", config)
    assert result.returncode == 1 and "No space left on device" in result.stderr, result.stderr
    assert pushed(url, "hello_world_backup")["hello_world_backup_success"] == 0
    textfile = (tmp_path / "cfg" / "run" / "metrics" / "hello_world_backup.prom").read_text()
    assert "hello_world_backup_success 0.0" in textfile
    assert new_archives(small_fs / "backups") == []


def test_a_backup_failing_at_its_sidecar_on_a_full_disk_is_pushed(tmp_path: Path, small_fs: Path, processes) -> None:
    source = source_tree(tmp_path / "src", 100_000)  # its archive is larger than the disk guard's margin
    url = start_pushgateway(processes, tmp_path)
    destination = small_fs / "backups"
    small_last_archive(destination)
    config = config_for(tmp_path, source, destination, pushgateway=url)
    # The same tree and config make an archive of the same size (its manifest too): measure it, remove it.
    assert run("backup_script.py", config).returncode == 0
    (archive,) = [path for path in archives(destination) if path.name in new_archives(destination)]
    pages = -(-archive.stat().st_size // PAGE)
    archive.unlink()
    sidecar_path(archive).unlink()

    fill(small_fs, leave_pages=pages)  # room for the archive, not one page more
    result = run("backup_script.py", config)
    assert result.returncode == 1, result.stderr
    assert re.search(r"writing \S+\.sha256\.partial: No space left on device", result.stderr), result.stderr
    assert pushed(url, "hello_world_backup")["hello_world_backup_success"] == 0
    assert new_archives(destination) == [], "no partial archive or sidecar left"


def test_a_failing_prune_fails_the_run_and_is_pushed(tmp_path: Path, processes, monkeypatch) -> None:
    url = start_pushgateway(processes, tmp_path)
    config = config_for(tmp_path, source_tree(tmp_path / "src"), tmp_path / "backups", pushgateway=url)

    def prune(*_args, **_kwargs):
        raise OSError(5, "Input/output error (simulated)")

    monkeypatch.setattr("hello.backup.create.prune", prune)
    with pytest.raises(backup_script.BackupError, match="was written, but pruning old archives failed"):
        backup_script.run_create(load_config(config))
    (archive,) = archives(tmp_path / "backups")
    gauges = pushed(url, "hello_world_backup")
    assert gauges["hello_world_backup_success"] == 0
    assert gauges["hello_world_backup_size_bytes"] == archive.stat().st_size, "the archive exists: its size stays"
    assert abs(gauges["hello_world_backup_last_success_timestamp_seconds"] - archive.stat().st_mtime) < 60
    assert "hello_world_backup_success 0.0" in (tmp_path / "cfg/run/metrics/hello_world_backup.prom").read_text()


def test_a_full_disk_and_a_dead_pushgateway_are_one_line(tmp_path: Path, small_fs: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = config_for(
        tmp_path, source_tree(tmp_path / "src"), tmp_path / "backups", pushgateway=dead, run_dir=small_fs
    )
    fill(small_fs)
    result = run("backup_script.py", config)
    assert result.returncode == 1
    (recording,) = [line for line in result.stderr.splitlines() if "metrics" in line]
    assert "could not record hello_world_backup metrics: not written to" in recording
    assert f"not pushed to the Pushgateway at {dead}" in recording


def test_an_update_failing_on_a_full_disk_is_pushed(tmp_path: Path, small_fs: Path, processes) -> None:
    url = start_pushgateway(processes, tmp_path)
    config = config_for(tmp_path, tmp_path, tmp_path / "backups", pushgateway=url, run_dir=small_fs)
    fill(small_fs)
    result = run("update_protocol.py", config, "--repo", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot take the lock" in result.stdout and "No space left on device" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert any("could not write hello_world_update metrics" in line and url in line for line in lines), lines
    assert any("could not record the outcome" in line and "No space left" in line for line in lines), lines
    assert "Traceback" not in result.stderr
    assert pushed(url, "hello_world_update")["hello_world_update_success"] == 0
