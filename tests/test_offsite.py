"""Backups that survive the host (issue 13): off-host copies, the drill, the manifest, hooks and the disk guard.

Everything real: `rclone serve sftp` on 127.0.0.1 with a user and password (started here, once per module), a crypt
remote over it, real archives, kill -9, a small tmpfs, a real Prometheus snapshot, `make start` of a rebuilt host.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from prometheus_client.parser import text_string_to_metric_families

from hello.backup import naming, rclone
from hello.backup.manifest import MANIFEST_NAME
from hello.backup.offsite import configured_remote
from hello.backup.retention import keep_plan, plan_retention
from hello.base.checkout import CHECKOUT
from hello.base.config import load_config
from hello.base.http_client import http_request
from hello.base.proc import free_port, wait_until
from tests.support.backups import archives, backup, make_tree, snapshot
from tests.support.configs import write_config
from tests.support.monitoring import start_alertmanager
from tests.support.processes import ProcessRegistry, kill_group, start_ready
from tests.support.tools import PYTHON, require_tool

MANIFEST_DIR = MANIFEST_NAME.split("/")[0]


# --- the SFTP server and the remotes ---


@dataclass
class Sftp:
    root: Path  # the folder the server serves: what is on the "other host"
    port: int
    rclone_config: Path
    secrets: tuple[str, ...]  # the passwords, plain and obscured: never on any command line


def _obscure(rclone: str, secret: str) -> str:
    """rclone's obscured form of a secret, given on stdin (`-`): no secret on any command line, not even here."""
    return subprocess.run(
        [rclone, "obscure", "-"], input=secret, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def sftp(tmp_path_factory: pytest.TempPathFactory):
    rclone = require_tool("rclone")
    base = tmp_path_factory.mktemp("sftp")
    root = base / "served"
    root.mkdir()
    port = free_port()
    user, password = "hello", "pw-" + os.urandom(6).hex()
    registry = ProcessRegistry()
    with open(base / "serve.log", "wb") as log:
        server = registry.start(
            # --dir-cache-time 0s: the tests change the served folder behind the server's back
            [rclone, "serve", "sftp", str(root), "--addr", f"127.0.0.1:{port}", "--dir-cache-time", "0s"],
            env={**os.environ, "RCLONE_USER": user, "RCLONE_PASS": password},  # not on its command line
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def listening() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"rclone serve sftp exited: {(base / 'serve.log').read_text()[-2000:]}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, 30, f"rclone serve sftp on port {port}")
        config = base / "rclone.conf"
        crypt_password = "crypt-" + password
        obscured, crypt_obscured = _obscure(rclone, password), _obscure(rclone, crypt_password)
        config.write_text(
            f"[offsite]\ntype = sftp\nhost = 127.0.0.1\nport = {port}\nuser = {user}\npass = {obscured}\n\n"
            f"[secret]\ntype = crypt\nremote = offsite:encrypted\npassword = {crypt_obscured}\n\n"
            f"[down]\ntype = sftp\nhost = 127.0.0.1\nport = {free_port()}\nuser = {user}\npass = {obscured}\n"
        )
        config.chmod(0o600)
        yield Sftp(root, port, config, (password, crypt_password, obscured, crypt_obscured))
    finally:
        registry.cleanup()


def setup(tmp_path: Path, sftp: Sftp, remote: str | None, *, source: Path | None = None, **backup) -> dict:
    """A source tree, a destination and a config using the remote; returns the paths."""
    if source is None:
        source = tmp_path / "src"
        source.mkdir()
        make_tree(source)
    destination = tmp_path / "backups"
    overrides = {
        "monitoring": {"pushgateway": {"url": None}},
        "backup": {
            "source": str(source),
            "destination": str(destination),
            "timezone": "UTC",
            "exclude": [".git", "__pycache__", "*.log"],
            "offsite": {"remote": remote, "rclone_config": str(sftp.rclone_config)},
            **backup,
        },
    }
    config = write_config(tmp_path / "cfg", overrides)
    return {"source": source, "destination": destination, "config": config, "run": tmp_path / "cfg" / "run"}


def metrics(run_dir: Path, job: str) -> dict[str, float]:
    text = (run_dir / "metrics" / f"{job}.prom").read_text()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def served(sftp: Sftp, folder: str) -> dict[str, Path]:
    """What the SFTP server holds in a folder: name -> path."""
    directory = sftp.root / folder
    return {p.name: p for p in directory.iterdir()} if directory.is_dir() else {}


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in a process group (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    found.append(int(entry.name))
    return found


def final_names_check_out(files: dict[str, Path]) -> None:
    """Every final-named archive on the server has its sidecar and matches it byte for byte."""
    for name, path in files.items():
        if naming.ARCHIVE_RE.match(name):
            sidecar = files.get(name + ".sha256")
            assert sidecar is not None, f"{name} on the remote without its sidecar"
            expected = sidecar.read_text().split()[0]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == expected, f"{name} on the remote is corrupt"


# --- round trip ---


@pytest.mark.parametrize("kind", ["sftp", "crypt", "path"])
def test_round_trip_create_offsite_restore_is_byte_exact(tmp_path: Path, sftp: Sftp, kind: str) -> None:
    folder = f"trip-{kind}"
    remote = {"sftp": f"offsite:{folder}", "crypt": f"secret:{folder}", "path": str(tmp_path / "usb-disk")}[kind]
    env = setup(tmp_path, sftp, remote)
    before = snapshot(env["source"])
    result = backup(env["config"], "create")
    assert result.returncode == 0, result.stderr
    (archive,) = archives(env["destination"])
    assert f"copied 1 archive(s) to {remote}" in result.stdout

    if kind in ("sftp", "path"):  # a plain path: a second disk, mounted
        on_server = served(sftp, folder) if kind == "sftp" else {p.name: p for p in (tmp_path / "usb-disk").iterdir()}
        assert sorted(on_server) == [archive.name, archive.name + ".sha256"]
        assert on_server[archive.name].read_bytes() == archive.read_bytes()
    else:  # encrypted: neither the names nor the bytes are readable on the server
        stored = [p for p in (sftp.root / "encrypted").rglob("*") if p.is_file()]
        assert len(stored) == 2 and not any("hello-world" in p.name for p in stored)
        assert not any(archive.read_bytes()[:4096] in p.read_bytes() for p in stored)
    offsite_metrics = metrics(env["run"], "hello_world_backup_offsite")
    assert offsite_metrics["hello_world_backup_offsite_success"] == 1
    assert offsite_metrics["hello_world_backup_offsite_size_bytes"] == archive.stat().st_size
    assert offsite_metrics["hello_world_backup_offsite_last_success_timestamp_seconds"] > time.time() - 120

    listing = backup(env["config"], "list", "--offsite", "--json")
    assert listing.returncode == 0, listing.stderr
    assert [(row["name"], row["size"], row["has_checksum"]) for row in json.loads(listing.stdout)] == [
        (archive.name, archive.stat().st_size, True)
    ]
    verified = backup(env["config"], "verify", "--offsite")
    assert verified.returncode == 0 and f"OK   {remote}/{archive.name}" in verified.stdout, verified.stdout

    archive.unlink()  # the host lost its disk: only the remote has it
    archive.with_name(archive.name + ".sha256").unlink()
    target = tmp_path / "restored"
    restored = backup(env["config"], "restore", "--offsite", archive.name, "--target", str(target))
    assert restored.returncode == 0, restored.stderr
    excluded = re.compile(r"(^|/)(\.git|__pycache__)(/|$)|\.log$")
    assert snapshot(target, skip=(MANIFEST_DIR,)) == {k: v for k, v in before.items() if not excluded.search(k)}
    assert not list(env["run"].glob("offsite-download-*")), "the private download folder is removed"


def test_copies_on_a_plain_path_remote_are_private_to_the_kit(tmp_path: Path, sftp: Sftp) -> None:
    runuser = require_tool("runuser", "util-linux")
    # A mounted disk others can look into (0755 down to it, unlike pytest's private tmp_path): a new folder for the
    # copies on it, and a folder an older version filled with a 0644 copy in 0755.
    disk = Path(tempfile.mkdtemp(prefix="usb-disk-"))
    try:
        disk.chmod(0o755)
        old = disk / "old"
        old.mkdir(mode=0o755)
        old.chmod(0o755)
        for remote in (disk / "new" / "hello-backups", old):
            (tmp_path / remote.name).mkdir()
            env = setup(tmp_path / remote.name, sftp, str(remote))
            if remote == old:  # yesterday's copy, as an older version left it
                name = naming.archive_name(datetime.now(UTC) - timedelta(days=1))
                (old / name).write_bytes(b"an archive")
                (old / f"{name}.sha256").write_text(f"{hashlib.sha256(b'an archive').hexdigest()}  {name}\n")
                for path in old.iterdir():
                    path.chmod(0o644)
            result = backup(env["config"])
            assert result.returncode == 0, result.stderr
            copies = sorted(remote.iterdir())
            assert len(copies) == (4 if remote == old else 2), copies
            for path in copies:
                stolen = subprocess.run(
                    [runuser, "-u", "nobody", "--", "cat", str(path)], capture_output=True, timeout=30
                )
                assert stolen.returncode != 0 and not stolen.stdout, f"nobody read {path}"
                assert b"Permission denied" in stolen.stderr, stolen.stderr
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path}: {oct(path.stat().st_mode)}"
            for folder in [remote, *([remote.parent] if remote != old else [])]:
                assert stat.S_IMODE(folder.stat().st_mode) == 0o700, f"{folder}: {oct(folder.stat().st_mode)}"
    finally:
        shutil.rmtree(disk)


def test_restore_offsite_of_a_missing_name_fails_and_changes_nothing(tmp_path: Path, sftp: Sftp) -> None:
    env = setup(tmp_path, sftp, "offsite:missing")
    target = tmp_path / "target"
    result = backup(
        env["config"], "restore", "--offsite", "hello-world-20200101T000000Z.tar.gz", "--target", str(target)
    )
    assert result.returncode == 1 and "no such archive on the remote" in result.stderr
    assert not target.exists()
    bad = backup(env["config"], "restore", "--offsite", "../etc/passwd", "--target", str(target))
    assert bad.returncode == 2 and "not an archive name" in bad.stderr


# --- interruptions and damage ---


def uploading(sftp: Sftp, folder: str) -> bool:
    """Whether an archive is being uploaded to a folder: its dot-named partial is there."""
    return any(naming.PARTIAL_RE.match(name) and name.endswith(".tar.gz.partial") for name in served(sftp, folder))


def bytes_written(pids: list[int]) -> int:
    """What these processes have written so far, sockets included (/proc/PID/io wchar)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
            total += int(fields["wchar"])
    return total


def stop_in_upload(proc: subprocess.Popen, sftp: Sftp, folder: str, least: int, timeout: float) -> None:
    """Let the backup's process group run in short slices until its rclone has sent `least` bytes of an upload.

    The group is looked at only while it is stopped (SIGSTOP), so the upload cannot finish between the look and the
    kill however busy the machine is. Progress is what rclone has sent, not the partial's size on the server: the
    server writes in doubling chunks (128 KiB, 256 KiB, ... seen with rclone 1.60), so a late point never shows there.
    """
    deadline = time.monotonic() + timeout
    while True:
        os.killpg(proc.pid, signal.SIGSTOP)
        rclone = [pid for pid in group_members(proc.pid) if pid != proc.pid]
        if uploading(sftp, folder) and bytes_written(rclone) >= least:
            return
        assert proc.poll() is None, f"the upload finished before rclone sent {least} bytes"
        assert time.monotonic() < deadline, f"no upload reached {least} bytes within {timeout:.0f}s"
        os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.02)


def test_kill_9_during_upload_leaves_no_bad_final_file_and_the_next_run_completes(tmp_path: Path, sftp: Sftp) -> None:
    size = 2_000_000
    source = tmp_path / "src"
    source.mkdir()
    (source / "random.bin").write_bytes(random.Random(13).randbytes(size))  # incompressible: a 2 MB archive
    folder = "killed"
    env = setup(tmp_path, sftp, f"offsite:{folder}", source=source)
    slow = {**os.environ, "HELLO_CONFIG": str(env["config"]), "RCLONE_BWLIMIT": "1M"}  # about 2 s per upload

    for share in (0.0, 0.5, 0.8):  # as the upload starts, half way, late
        proc = subprocess.Popen(
            [PYTHON, str(CHECKOUT / "backup_script.py"), "create"],
            env=slow,
            cwd=CHECKOUT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            stop_in_upload(proc, sftp, folder, int(share * size), 60)
            os.kill(proc.pid, signal.SIGKILL)  # the script only: its rclone must die with it (PR_SET_PDEATHSIG)
            proc.wait()
            os.killpg(proc.pid, signal.SIGCONT)  # a stopped rclone that outlived its parent would hide here
            wait_until(lambda pgid=proc.pid: not group_members(pgid), 30, "rclone to die with the killed backup")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        final_names_check_out(served(sftp, folder))
    local = archives(env["destination"])
    assert len(local) == 3, "each killed run left its local archive"

    result = backup(env["config"], "create")
    assert result.returncode == 0, result.stderr
    files = served(sftp, folder)
    final_names_check_out(files)
    assert not [name for name in files if name.endswith(".partial")], "the leftovers are removed"
    assert {a.name for a in archives(env["destination"])} <= set(files), "the archives the remote lacked are copied"
    assert backup(env["config"], "verify", "--offsite").returncode == 0


def test_one_flipped_byte_on_the_remote_fails_verify_naming_the_file(tmp_path: Path, sftp: Sftp) -> None:
    env = setup(tmp_path, sftp, "offsite:flipped")
    assert backup(env["config"]).returncode == 0
    (archive,) = archives(env["destination"])
    stored = served(sftp, "flipped")[archive.name]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    for args in (("verify", "--offsite"), ("verify", "--offsite", archive.name)):
        result = backup(env["config"], *args)
        assert result.returncode == 1
        assert f"FAIL offsite:flipped/{archive.name}: checksum mismatch" in result.stdout, result.stdout
    assert backup(env["config"], "verify").returncode == 0, "the local archive is fine"


def test_unreachable_remote_keeps_the_local_archive_and_metrics_say_offsite_failed(tmp_path: Path, sftp: Sftp) -> None:
    env = setup(tmp_path, sftp, "down:nowhere")
    environment = {**os.environ, "HELLO_CONFIG": str(env["config"]), "RCLONE_LOW_LEVEL_RETRIES": "1"}
    result = subprocess.run(
        [PYTHON, str(CHECKOUT / "backup_script.py"), "create"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "off-host copy to down:nowhere failed" in result.stderr and "local archives are kept" in result.stderr
    (archive,) = archives(env["destination"])
    assert backup(env["config"], "verify", str(archive)).returncode == 0
    assert metrics(env["run"], "hello_world_backup")["hello_world_backup_success"] == 1
    failed = metrics(env["run"], "hello_world_backup_offsite")
    assert failed["hello_world_backup_offsite_success"] == 0
    assert "hello_world_backup_offsite_last_success_timestamp_seconds" not in failed


# --- retention on the remote ---


def test_retention_on_the_remote_over_100_simulated_days(tmp_path: Path, sftp: Sftp, request) -> None:
    keep = {"daily": 7, "weekly": 4, "monthly": 6}
    env = setup(tmp_path, sftp, "offsite:retention", keep=keep)
    assert backup(env["config"]).returncode == 0
    (real,) = archives(env["destination"])
    config = load_config(env["config"])
    connection = configured_remote(config)
    remote = connection.__enter__()
    request.addfinalizer(lambda: connection.__exit__(None, None, None))
    folder = sftp.root / "retention"
    for path in folder.iterdir():
        path.unlink()
    (folder / "notes.txt").write_text("not ours\n")
    (folder / "hello-world-backup-plan.tar.gz").write_text("not our naming\n")
    start = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    placed: list[naming.Archive] = []
    for day in range(100):
        when = start + timedelta(days=day, minutes=random.Random(day).randint(0, 90))
        name = naming.archive_name(when)
        shutil.copyfile(real, folder / name)  # as a completed upload leaves it
        (folder / f"{name}.sha256").write_text(f"{hashlib.sha256(real.read_bytes()).hexdigest()}  {name}\n")
        placed.append(naming.Archive(Path(name), when))
        rclone.prune(remote, naming.NAMING, keep_plan(config), dry_run=False)
        expected = {p.name for p in plan_retention(placed, keep, UTC)}
        names = {p.name for p in folder.iterdir()}
        assert {n for n in names if naming.ARCHIVE_RE.match(n)} == expected, f"day {day}"
        assert {n + ".sha256" for n in expected} <= names, f"day {day}: a kept archive lost its sidecar"
    assert len(expected) <= 7 + 4 + 6 and name in expected
    assert {"notes.txt", "hello-world-backup-plan.tar.gz"} <= {p.name for p in folder.iterdir()}

    config["backup"]["keep"] = {"daily": 0, "weekly": 0, "monthly": 0}
    rclone.prune(remote, naming.NAMING, keep_plan(config), dry_run=False)
    left = sorted(p.name for p in folder.iterdir() if naming.ARCHIVE_RE.match(p.name))
    assert left == [name], "never the newest good copy"


# --- the drill ---


def _tampered(archive: Path, member: str) -> bytes:
    """The archive with one file's content changed but its manifest as it was."""
    out = io.BytesIO()
    with (
        tarfile.open(archive, "r:gz") as old,
        gzip.GzipFile(fileobj=out, mode="wb") as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as new,
    ):
        for info in old:
            data = old.extractfile(info) if info.isreg() else None
            if info.name == member:
                content = data.read()
                data = io.BytesIO(bytes([content[0] ^ 0x20]) + content[1:])
            new.addfile(info, data)
    return out.getvalue()


def test_drill_passes_then_fails_when_a_restored_file_differs(tmp_path: Path, sftp: Sftp) -> None:
    env = setup(tmp_path, sftp, "offsite:drill")
    assert backup(env["config"]).returncode == 0
    (archive,) = archives(env["destination"])
    passed = backup(env["config"], "drill")
    assert passed.returncode == 0, passed.stderr
    assert f"drill passed: {archive.name}" in passed.stdout
    good = metrics(env["run"], "hello_world_backup_drill")
    assert good["hello_world_backup_drill_success"] == 1
    assert not any((env["run"] / "drill").iterdir()), "the scratch folder is removed"

    # Archive and sidecar changed together (so checksum and restore pass): only the manifest catches it.
    data = _tampered(archive, "hello.py")
    digest = hashlib.sha256(data).hexdigest()
    for folder in (env["destination"], sftp.root / "drill"):
        (folder / archive.name).write_bytes(data)
        (folder / f"{archive.name}.sha256").write_text(f"{digest}  {archive.name}\n")
    assert backup(env["config"], "verify", "--offsite").returncode == 0
    failed = backup(env["config"], "drill")
    assert failed.returncode == 1
    assert "hello.py: content differs (sha256)" in failed.stderr, failed.stderr
    bad = metrics(env["run"], "hello_world_backup_drill")
    assert bad["hello_world_backup_drill_success"] == 0
    assert (
        bad["hello_world_backup_drill_last_success_timestamp_seconds"]
        == good["hello_world_backup_drill_last_success_timestamp_seconds"]
    )
    assert not any((env["run"] / "drill").iterdir())


def test_drill_without_a_remote_uses_the_newest_local_archive(tmp_path: Path, sftp: Sftp) -> None:
    env = setup(tmp_path, sftp, None)
    assert backup(env["config"], "drill").returncode == 1  # nothing to drill yet
    assert backup(env["config"]).returncode == 0
    (archive,) = archives(env["destination"])
    result = backup(env["config"], "drill")
    assert result.returncode == 0 and f"drill passed: {archive.name}" in result.stdout, result.stderr
    assert not (env["run"] / "metrics" / "hello_world_backup_offsite.prom").exists(), "no remote: no offsite metrics"


# --- the manifest, hooks, the disk guard ---


def test_manifest_lists_every_member_the_commit_and_the_config(tmp_path: Path, sftp: Sftp) -> None:
    env = setup(tmp_path, sftp, None)
    git = require_tool("git")
    subprocess.run([git, "init", "-q", str(env["source"])], check=True)
    subprocess.run(
        [
            git,
            "-C",
            str(env["source"]),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
        check=True,
    )
    commit = subprocess.run([git, "-C", str(env["source"]), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert backup(env["config"]).returncode == 0
    (archive,) = archives(env["destination"])
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile(MANIFEST_NAME))
    assert names[-1] == MANIFEST_NAME, "the manifest comes last, after every file was hashed"
    assert manifest["commit"] == commit.stdout.strip()
    assert manifest["config"] == env["config"].read_text() and manifest["config_file"] == str(env["config"])
    listed = {entry["name"]: entry for entry in manifest["entries"]}
    assert set(listed) == set(names) - {MANIFEST_NAME}
    data = listed["sub/data.bin"]
    source_file = env["source"] / "sub" / "data.bin"
    assert (data["type"], data["size"], data["mode"]) == ("file", source_file.stat().st_size, 0o644)
    assert data["sha256"] == hashlib.sha256(source_file.read_bytes()).hexdigest()
    assert listed["link-to-hello"] == {"name": "link-to-hello", "mode": 0o777, "type": "symlink", "target": "hello.py"}


def test_a_failing_hook_fails_the_run_before_anything_is_written(tmp_path: Path, sftp: Sftp) -> None:
    hooks = {"before": ['echo kept > "$HELLO_BACKUP_STAGING/first.txt"', "echo 'dump refused' >&2; exit 3"]}
    env = setup(tmp_path, sftp, None, hooks=hooks)
    result = backup(env["config"])
    assert result.returncode == 1
    assert "system.backup.hooks.before[2] \"echo 'dump refused' >&2; exit 3\" failed (exit 3): dump refused" in (
        result.stderr
    ), result.stderr
    assert not env["destination"].exists() or not list(env["destination"].iterdir())
    assert not list(env["run"].glob("backup-staging-*")), "the staging folder is removed"
    assert metrics(env["run"], "hello_world_backup")["hello_world_backup_success"] == 0


def test_the_disk_guard_refuses_at_once_on_a_small_tmpfs(tmp_path: Path, sftp: Sftp, small_fs: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.bin").write_bytes(random.Random(5).randbytes(3_000_000))
    env = setup(tmp_path, sftp, None, source=source)
    config = yaml.safe_load(env["config"].read_text())
    config["system"]["backup"]["destination"] = str(small_fs / "backups")
    env["config"].write_text(yaml.safe_dump(config))
    result = backup(env["config"])
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "\n" not in line, "one line"
    free = int(line.split(" bytes free")[0].rsplit(" ", 1)[1])
    assert f"{small_fs / 'backups'}: not enough free space" in line and free <= 1 << 20
    assert "needed" in line and int(line.split(" needed")[0].rsplit(" ", 1)[1]) > 3_000_000
    assert list((small_fs / "backups").iterdir()) == []
    assert metrics(env["run"], "hello_world_backup")["hello_world_backup_success"] == 0


def test_readme_hook_puts_a_prometheus_snapshot_and_pushgateway_state_into_the_archive(
    tmp_path: Path, sftp: Sftp, processes
) -> None:
    prometheus_bin = require_tool("prometheus")
    pushgateway_bin = require_tool("prometheus-pushgateway")
    push_port = free_port()
    store = tmp_path / "pushgateway.store"
    push_url = f"http://127.0.0.1:{push_port}"
    start_ready(
        processes,
        [
            pushgateway_bin,
            f"--web.listen-address=127.0.0.1:{push_port}",
            f"--persistence.file={store}",
            "--persistence.interval=1s",
        ],
        push_url,
        tmp_path / "pushgateway.log",
    )
    registry = CollectorRegistry()  # a pushed metric, so the persistence file gets written
    Gauge("hook_test", "pushed by the hook test", registry=registry).set(1)
    push_to_gateway(push_url, job="hooktest", registry=registry)
    wait_until(store.exists, 30, "the Pushgateway's persistence file")
    prom_port = free_port()
    prom_url = f"http://127.0.0.1:{prom_port}"
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [{"job_name": "self", "static_configs": [{"targets": [f"127.0.0.1:{prom_port}"]}]}],
            }
        )
    )
    start_ready(
        processes,
        [
            prometheus_bin,
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--web.enable-admin-api",
        ],
        prom_url,
        tmp_path / "prometheus.log",
    )

    def scraped() -> bool:
        answer = json.loads(http_request(f"{prom_url}/api/v1/query?query=up")[2])
        return bool(answer["data"]["result"])

    wait_until(scraped, 30, "Prometheus to scrape itself")
    hook = f"{PYTHON} {CHECKOUT / 'scripts' / 'backup_hook_monitoring.py'}"
    env = setup(tmp_path, sftp, None, hooks={"before": [hook]})
    config = yaml.safe_load(env["config"].read_text())
    system = load_config(env["config"])
    am_url = start_alertmanager(processes, tmp_path / "alertmanager", system, free_port())
    config["system"]["monitoring"] = {
        "prometheus": {"url": prom_url},
        "pushgateway": {"url": push_url},
        "alertmanager": {"url": am_url},
    }
    env["config"].write_text(yaml.safe_dump(config))
    result = backup(env["config"])
    assert result.returncode == 0, result.stderr
    (archive,) = archives(env["destination"])
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    staged = [n for n in names if n.startswith(".hello-backup/staging/")]
    assert f".hello-backup/staging/pushgateway/{store.name}" in staged
    assert ".hello-backup/staging/alertmanager/silences.json" in staged
    assert any(n.startswith(".hello-backup/staging/prometheus/") and n.endswith("/meta.json") for n in staged), staged
    assert not list((tmp_path / "tsdb" / "snapshots").iterdir()), "the snapshot was moved out of the TSDB folder"
    assert backup(env["config"], "drill").returncode == 0, "the staged files restore as their manifest says"


# --- rebuilding a host ---


def readme_rebuild_commands() -> str:
    """The shell block under README's "Rebuilding a host", as written there."""
    text = (CHECKOUT / "README.md").read_text(encoding="utf-8")
    begin = text.index("```sh\n", text.index("**Rebuilding a host**")) + len("```sh\n")
    return text[begin : text.index("```", begin)]


def test_rebuilding_a_host_from_the_archive_and_the_git_remote(tmp_path: Path, sftp: Sftp, processes) -> None:
    """README "Rebuilding a host", its lines read from README and run by bash: only the placeholders, the paths,
    the port and the venv (this suite's, linked: a real install takes minutes) are replaced; crontab is a stand-in
    that keeps what it is given (root's own crontab is not the test's to change)."""
    git = require_tool("git")
    remote_repo = tmp_path / "origin.git"
    # The commit checked out here as the remote's main: under an update's test step CHECKOUT is a detached worktree,
    # whose HEAD a plain `clone --bare` would not put on any branch.
    subprocess.run([git, "init", "-q", "--bare", "-b", "main", str(remote_repo)], check=True)
    subprocess.run([git, "-C", str(CHECKOUT), "push", "-q", str(remote_repo), "HEAD:refs/heads/main"], check=True)
    old_host = tmp_path / "old-host"
    subprocess.run([git, "clone", "-q", str(remote_repo), str(old_host)], check=True)
    commit = subprocess.run(
        [git, "-C", str(old_host), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    env = setup(
        tmp_path,
        sftp,
        "offsite:rebuild",
        source=old_host,
        exclude=[".git", ".venv", "__pycache__", "backups", "run", ".pytest_cache", ".ruff_cache"],
    )
    assert backup(env["config"]).returncode == 0
    (archive,) = archives(env["destination"])
    shutil.rmtree(old_host)  # the host is gone; the remote and the git remote are left

    new_host, port, venv = tmp_path / "new-host", free_port(), Path(sys.prefix)
    shared_venv = f"ln -s {venv} .venv && touch -r {venv}/.runtime-installed requirements.txt && "
    replacements = {
        "rclone config create ...": "true",  # the test's remote is configured already (setup)
        "<git remote>": str(remote_repo),
        "/tmp/hello-tools": str(tmp_path / "hello-tools"),
        "make .venv/.runtime-installed": shared_venv + "make .venv/.runtime-installed",
        "/tmp/restore.yaml": str(env["config"]),
        "/tmp/restore.out": str(tmp_path / "restore.out"),
        "/srv/hello": str(new_host),
        "hello-world-<stamp>.tar.gz": archive.name,
        "make start ": f"{shared_venv}make start PORT={port} ",
    }
    script = readme_rebuild_commands()
    for placeholder, value in replacements.items():
        assert placeholder in script, f"README's rebuild steps no longer say {placeholder!r}"
        script = script.replace(placeholder, value)
    crontab = tmp_path / "crontab"
    stand_in = f'crontab() {{ if [ "$1" = -l ]; then cat {crontab} 2>/dev/null; else cat > {crontab}; fi; }}\n'
    clean_env = {
        k: v for k, v in os.environ.items() if k not in ("HELLO_CONFIG", "MAKEFLAGS", "MAKELEVEL", "VIRTUAL_ENV")
    }
    try:
        done = subprocess.run(
            # as typed at a prompt: no -e (`crontab -l` exits 1 while there is none); the checks below judge it
            ["bash", "-uo", "pipefail", "-c", stand_in + script],
            cwd=tmp_path,
            env=clean_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        pidfile = new_host / "run" / "hello_world.pid"
        if pidfile.exists():
            processes.adopt(int(pidfile.read_text()))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (new_host / MANIFEST_NAME).exists(), "the tree as it was; its manifest is kept apart"
    status, _, body = http_request(f"http://127.0.0.1:{port}/version")
    assert status == 200 and json.loads(body)["commit"] == commit
    assert "backup_script.py create" in crontab.read_text(), crontab.read_text()
    make = [require_tool("make"), "-C", str(new_host)]
    stopped = subprocess.run([*make, "stop"], env=clean_env, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr


# --- credentials (issue 20) ---


PASSWORD_FLAGS = (b"--rc-pass", b"--pass", b"--password")  # rclone's: a value after one is a secret


class CommandLineWatch:
    """Reads every process's /proc/PID/cmdline over and over on a thread while a block runs.

    Each is kept with its session, so a run started in a session of its own is told apart from the other processes
    of a shared machine. The password of each `rclone rcd` is learnt from its environment (root reads it; other
    users cannot), so the scan looks for the rcd's own password as well as the ones the test configured."""

    def __init__(self) -> None:
        self.command_lines: set[tuple[int, bytes]] = set()  # (session, command line)
        self.rc_passwords: dict[int, set[str]] = {}  # session -> the passwords of its rclone rcds
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CommandLineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    self._look(int(entry.name))
            self.scans += 1

    def _look(self, pid: int) -> None:
        try:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
            session = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
        except (OSError, IndexError, ValueError):
            return
        self.command_lines.add((session, command_line))
        argv = command_line.split(b"\0")
        if len(argv) > 1 and argv[0].endswith(b"rclone") and argv[1] == b"rcd":
            with contextlib.suppress(OSError):
                for variable in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    if variable.startswith(b"RCLONE_RC_PASS="):
                        self.rc_passwords.setdefault(session, set()).add(variable.split(b"=", 1)[1].decode())

    def leaks(self, secrets: tuple[str, ...], session: int) -> list[str]:
        """The command lines holding any of the secrets or the session's rcd passwords (anywhere), or a password
        option (in the session), the secret masked."""
        found = []
        secrets = (*secrets, *self.rc_passwords.get(session, ()))
        for line_session, line in self.command_lines:
            text = line.replace(b"\0", b" ").decode(errors="replace")
            if line_session == session and any(flag in line.split(b"\0") for flag in PASSWORD_FLAGS):
                found.append(text[:300])
            for secret in secrets:
                if secret in text:
                    found.append(text.replace(secret, "<SECRET>")[:300])
        return found


def test_no_secret_on_any_command_line_during_backup_offsite_restore_and_drill(tmp_path: Path, sftp: Sftp) -> None:
    env = setup(tmp_path, sftp, "secret:no-argv")  # crypt over SFTP: two passwords in play, and the rcd's own
    runs = {
        "backup": ("create",),
        "off-host restore": ("restore", "--offsite", None, "--target", str(tmp_path / "restored")),
        "drill": ("drill",),
    }
    environment = {**os.environ, "HELLO_CONFIG": str(env["config"])}
    for what, args in runs.items():
        if None in args:
            (archive,) = archives(env["destination"])
            args = tuple(archive.name if a is None else a for a in args)
        with CommandLineWatch() as watch:
            run = subprocess.Popen(  # in a session of its own: its processes are told apart from the machine's
                [PYTHON, str(CHECKOUT / "backup_script.py"), *args],
                env=environment,
                cwd=CHECKOUT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            try:
                _out, err = run.communicate(timeout=120)
            finally:
                kill_group(run.pid)
                run.wait()
        assert run.returncode == 0, f"{what}: {err}"
        leaks = watch.leaks(sftp.secrets, run.pid)
        assert not leaks, f"{what}: a secret on a command line: {leaks}"
        assert watch.rc_passwords.get(run.pid), (
            f"{what}: no rclone rcd seen with its password in its environment ({watch.scans} scans)"
        )
        assert watch.scans >= 3, f"{what}: only {watch.scans} scans of /proc"


def listening_inode(port: int) -> int | None:
    """The inode of the socket listening on 127.0.0.1:port (/proc/net/tcp), None when there is none."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
            return int(fields[9])
    return None


def socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    return found


def test_a_process_listening_first_never_receives_the_rcd_credentials(tmp_path: Path, monkeypatch) -> None:
    require_tool("rclone")
    # A local user's listener, on the port the daemon would be told to use: the race a port picked here, released,
    # then bound by rclone leaves open (forced: the daemon is handed this port if it asks hello.backup.rclone for one).
    attacker = socket.socket()
    attacker.bind(("127.0.0.1", 0))
    attacker.listen(8)
    attacker.settimeout(0.2)
    port = attacker.getsockname()[1]
    received: list[bytes] = []
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                conn, _ = attacker.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    received.append(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    monkeypatch.setattr(rclone, "free_port", lambda: port, raising=False)
    try:
        with rclone.connect(str(tmp_path)) as remote:
            (tmp_path / "f").write_text("x\n")
            assert remote.files() == {"f": 2}, "answered by rclone, not by the listener"
            daemon = remote.daemon
            rcd_port = int(daemon.url.rsplit(":", 1)[1])
            inode = listening_inode(rcd_port)
            assert inode is not None and inode in socket_inodes(daemon.proc.pid), "the port is rclone's own"
            for host in ("127.0.0.1", "0.0.0.0"):  # and nobody can take it while rclone runs
                with socket.socket() as squatter:
                    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    with pytest.raises(OSError, match="in use"):
                        squatter.bind((host, rcd_port))
            status, _, _ = http_request(f"{daemon.url}/core/version", method="POST")
            assert status == 401, "no answer without the credentials"
            status, _, body = http_request(f"{daemon.url}/[/etc]/passwd", headers={"Authorization": daemon.auth})
            assert b"root:" not in body, "no files served (--rc-serve off), even with the credentials"
    finally:
        stop.set()
        thread.join(timeout=10)
        attacker.close()
    assert not any(b"Authorization" in data for data in received), f"the listener got the credentials: {received}"


# --- rclone itself ---


def test_the_installed_rclone_offers_every_call_offsite_makes(tmp_path: Path) -> None:
    require_tool("rclone")
    with rclone.connect(str(tmp_path)) as remote:
        offered = {command["Path"] for command in remote.daemon.call("rc/list")["commands"]}
        (tmp_path / "f").write_text("x\n")
        assert remote.files() == {"f": 2}
        assert "sha256" in remote.hash_kinds and remote.remote_hash("f", "sha256") == hashlib.sha256(b"x\n").hexdigest()
        assert remote.sha256("f") == hashlib.sha256(b"x\n").hexdigest()  # read through a private download
    missing = set(rclone.RC_COMMANDS) - offered
    assert not missing, f"rclone rcd lacks {sorted(missing)}: hello/backup/rclone.py was written for 1.60"


def test_remote_files_are_read_through_a_private_folder_and_a_dead_runs_is_swept(tmp_path: Path) -> None:
    require_tool("rclone")
    scratch, remote_folder = tmp_path / "run", tmp_path / "remote"
    remote_folder.mkdir()
    (remote_folder / "f").write_text("x\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = scratch / f"offsite-read-{dead.pid}-abc", scratch / f"offsite-read-{os.getpid()}-abc"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "file").write_bytes(b"a half-read archive")
    with rclone.connect(str(remote_folder), scratch=scratch) as remote:
        assert remote.read_text("f") == "x\n"
    assert not stale.exists(), "a dead run's read folder is removed"
    assert live.exists(), "a live one's is left alone"
    assert sorted(scratch.iterdir()) == [live], "the read's own folder is gone"


# --- config ---


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"offsite": {"remote": "relative/path"}}, "system.backup.offsite.remote: expected an rclone remote path"),
        ({"offsite": {"remote": 7}}, "system.backup.offsite.remote: expected an rclone remote path"),
        ({"offsite": {"remtoe": "x:"}}, "system.backup.offsite.remtoe: unknown key (did you mean 'remote'?)"),
        ({"hooks": {"before": "echo hi"}}, "system.backup.hooks.before: expected a list of shell commands"),
        ({"hooks": {"before": [""]}}, "system.backup.hooks.before: expected a list of shell commands"),
    ],
)
def test_bad_offsite_and_hook_settings_exit_2_naming_the_key(tmp_path: Path, overrides: dict, message: str) -> None:
    config = write_config(tmp_path, {"backup": overrides})
    result = backup(config, "create")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_offsite_commands_without_a_remote_are_usage_errors(tmp_path: Path, sftp: Sftp) -> None:
    env = setup(tmp_path, sftp, None)
    for args in (("list", "--offsite"), ("verify", "--offsite"), ("restore", "--offsite", "x", "--target", "t")):
        result = backup(env["config"], *args)
        assert result.returncode == 2 and "system.backup.offsite.remote is null" in result.stderr, result.stderr


def test_offsite_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backup": {"offsite": {"remote": "/mnt/usb/hello", "rclone_config": "rc.conf"}}})
    loaded = load_config(config)["backup"]["offsite"]
    assert loaded == {"remote": "/mnt/usb/hello", "rclone_config": str(tmp_path / "rc.conf"), "immutable": None}
