"""backup_script.py with real trees, real gzip tar archives, real locks, signals and a real Pushgateway."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import signal
import stat
import subprocess
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import PYTHON, free_port, http_get, require_tool, start_pushgateway, wait_until, write_config
from hello.backup import hooks
from hello.backup.archive import verify_archive
from hello.backup.naming import Archive, BackupError
from hello.backup.restore import restore_archive
from hello.backup.retention import plan_retention
from hello.base.config import load_config
from hello.base.locks import job_lock
from tests.support.backups import SCRIPT, archives, backup, make_tree, snapshot
from tests.support.hooks import all_gone, hook_pids, kill_leftovers, spawning_hook

# --- helpers ---


def config_for(tmp_path: Path, source: Path, destination: Path, **backup) -> Path:
    overrides = {
        "monitoring": {"pushgateway": {"url": backup.pop("pushgateway", None)}},
        "backup": {
            "source": str(source),
            "destination": str(destination),
            "timezone": "UTC",
            "exclude": [".git", "__pycache__", "*.log"],
            **backup,
        },
    }
    return write_config(tmp_path / "cfg", overrides)


def write_sidecar(archive: Path) -> None:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    archive.with_name(archive.name + ".sha256").write_text(f"{digest}  {archive.name}\n")


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(source, destination inside the source, config)."""
    source = tmp_path / "src"
    source.mkdir()
    make_tree(source)
    destination = source / "backups"
    return source, destination, config_for(tmp_path, source, destination)


# --- create, verify, list, restore ---


def test_round_trip_restores_byte_for_byte_with_modes_and_links(tree, tmp_path: Path) -> None:
    source, destination, config = tree
    before = snapshot(source, skip=("backups",))
    result = backup(config)  # no argument: create
    assert result.returncode == 0, result.stderr
    (archive,) = archives(destination)
    assert str(archive) in result.stdout and "bytes" in result.stdout and " s" in result.stdout
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert stat.S_IMODE(archive.with_name(archive.name + ".sha256").stat().st_mode) == 0o600
    assert stat.S_IMODE(destination.stat().st_mode) == 0o700
    assert sorted(p.name for p in destination.iterdir()) == [archive.name, archive.name + ".sha256"]

    check = subprocess.run([require_tool("sha256sum", "coreutils"), "-c", archive.name + ".sha256"], cwd=destination)
    assert check.returncode == 0
    names = subprocess.run([require_tool("tar"), "tzf", str(archive)], capture_output=True, text=True, check=True)
    members = set(names.stdout.split())
    assert "hello.py" in members and "sub/data.bin" in members
    assert not any(m.startswith(("backups", ".git", "__pycache__")) or m.endswith((".log", ".pyc")) for m in members)

    target = tmp_path / "restored"
    result = backup(config, "restore", str(archive), "--target", str(target))
    assert result.returncode == 0, result.stderr
    expected = {k: v for k, v in before.items() if not re.search(r"(^|/)(\.git|__pycache__)(/|$)|\.log$", k)}
    assert snapshot(target) == expected, "the tree as it was: the archive's own .hello-backup/ is kept apart"
    kept = re.search(r"kept apart from the tree: (\S+)", result.stdout)
    assert kept and (Path(kept.group(1)) / ".hello-backup" / "manifest.json").is_file(), result.stdout
    restored = target / "sub" / "hardlink-to-hello"
    assert restored.stat().st_ino == (target / "hello.py").stat().st_ino, "hard link restored as a hard link"

    assert backup(config, "verify").returncode == 0
    listing = backup(config, "list", "--json")
    assert '"checksum_ok": true' in listing.stdout


def test_restore_and_verify_take_the_name_list_prints_and_name_a_sidecar_given_instead(tree, tmp_path: Path) -> None:
    source, destination, config = tree
    assert backup(config).returncode == 0
    (archive,) = archives(destination)
    listed = backup(config, "list")
    assert listed.stdout.split()[0] == archive.name
    # backup() runs in the repository, not in the destination: the bare name is looked up there
    verified = backup(config, "verify", archive.name)
    assert verified.returncode == 0 and f"OK   {archive}" in verified.stdout, verified.stderr
    target = tmp_path / "by-name"
    restored = backup(config, "restore", archive.name, "--target", str(target))
    assert restored.returncode == 0, restored.stderr
    assert (target / "hello.py").read_text() == (source / "hello.py").read_text()
    for command in (
        ["verify", f"{archive.name}.sha256"],
        ["restore", f"{archive}.sha256", "--target", str(tmp_path / "x")],
    ):
        result = backup(config, *command)
        assert result.returncode == 2, result.stderr
        assert f"the checksum sidecar of {archive.name}; give the archive itself" in result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
    missing = backup(config, "verify", "hello-world-20000101T000000Z.tar.gz")
    assert missing.returncode == 2 and f"no such archive (neither a file nor an archive name in {destination})" in (
        missing.stderr
    )
    assert not (tmp_path / "x").exists()


def _members(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return set(tar.getnames())


def test_secret_files_stay_out_of_archives_unless_the_operator_opts_in(tmp_path: Path) -> None:
    source, destination = tmp_path / "src", tmp_path / "backups"
    (source / "deploy" / "keys").mkdir(parents=True)
    (source / "hello.py").write_text("print('hi')\n")
    secrets = {  # README tells operators to put these here; the last is named only by config.yaml
        ".env": "GF_ADMIN_PASSWORD=hunter2\n",
        "deploy/alerting.env": "HELLO_SMTP_PASSWORD=hunter2\n",
        "deploy/keys/id_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
        "deploy/rclone.conf": "[offsite]\npass = hunter2\n",
        "deploy/webhook-token": "HELLO_ALERT_WEBHOOK_URL=https://ntfy.example/hunter2\n",
    }
    for name, text in secrets.items():
        (source / name).write_text(text)
    (source / ".env.example").write_text("GF_ADMIN_PASSWORD=\n")  # a template holds no secret
    named = {"monitoring": {"alertmanager": {"secrets_file": str(source / "deploy/webhook-token")}}}
    config = write_config(
        tmp_path / "cfg", {**named, "backup": {"source": str(source), "destination": str(destination)}}
    )
    assert backup(config).returncode == 0
    (archive,) = archives(destination)
    members = _members(archive)
    assert "hello.py" in members and ".env.example" in members
    assert not members & set(secrets), f"secrets archived: {sorted(members & set(secrets))}"
    with tarfile.open(archive) as tar:  # not in the manifest either, nor anywhere in the bytes
        assert all(b"hunter2" not in tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())

    opted_in = {**named, "backup": {"source": str(source), "destination": str(destination), "exclude_secrets": []}}
    config = write_config(tmp_path / "cfg", opted_in)
    assert backup(config).returncode == 0
    assert set(secrets) <= _members(archives(destination)[-1])


def test_a_create_whose_second_is_taken_waits_for_a_free_name(tree) -> None:
    _source, destination, config = tree
    destination.mkdir(mode=0o700)
    now = datetime.now(UTC)
    taken = [f"hello-world-{now + timedelta(seconds=delta):%Y%m%dT%H%M%SZ}.tar.gz" for delta in (0, 1)]
    for name in taken:  # this second and the next already have archives (e.g. two runs in a row)
        (destination / name).write_bytes(b"an earlier archive\n")
        write_sidecar(destination / name)
    result = backup(config)
    assert result.returncode == 0, result.stderr
    created = Path(re.search(r"created (\S+)", result.stdout).group(1))
    assert created.name not in taken and created.name > max(taken)
    assert backup(config, "verify", str(created)).returncode == 0


def test_one_byte_corruption_fails_verify_and_restore(tree, tmp_path: Path) -> None:
    _source, destination, config = tree
    assert backup(config).returncode == 0
    (archive,) = archives(destination)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))

    result = backup(config, "verify", str(archive))
    assert result.returncode == 1 and "checksum mismatch" in result.stdout
    assert '"checksum_ok": false' in backup(config, "list", "--json").stdout
    target = tmp_path / "target"
    result = backup(config, "restore", str(archive), "--target", str(target))
    assert result.returncode == 1 and "checksum mismatch" in result.stderr
    assert not target.exists() or not any(target.iterdir())

    # A matching checksum over a damaged stream: the full read catches it.
    write_sidecar(archive)
    result = backup(config, "verify")
    assert result.returncode == 1 and "unreadable archive" in result.stdout

    archive.with_name(archive.name + ".sha256").unlink()
    result = backup(config, "verify")
    assert result.returncode == 1 and "no checksum file" in result.stdout


def _tar_member(tar: tarfile.TarFile, name: str, *, kind: bytes = tarfile.REGTYPE, link: str = "", data=b"x"):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


MALICIOUS = {
    "dot-dot": [("../evil.txt", tarfile.REGTYPE, "")],
    "nested-dot-dot": [("ok/../../evil.txt", tarfile.REGTYPE, "")],
    "absolute": [("{outside}/evil.txt", tarfile.REGTYPE, "")],
    "symlink-escape-then-file": [("esc", tarfile.SYMTYPE, ".."), ("esc/outside/evil.txt", tarfile.REGTYPE, "")],
    "symlink-absolute-then-file": [("esc", tarfile.SYMTYPE, "{outside}"), ("esc/evil.txt", tarfile.REGTYPE, "")],
    "symlink-chain": [("here", tarfile.SYMTYPE, "."), ("up", tarfile.SYMTYPE, "here/../..")],
    "symlink-via-later-link": [("a/b", tarfile.SYMTYPE, "../x"), ("a", tarfile.SYMTYPE, ".")],
    "hardlink-escape": [("hard", tarfile.LNKTYPE, "../outside/victim.txt")],
    "hardlink-absolute": [("hard", tarfile.LNKTYPE, "{outside}/victim.txt")],
    "device": [("dev", tarfile.CHRTYPE, "")],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archives_are_refused_before_anything_is_written(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("original\n")
    config = config_for(tmp_path, tmp_path, tmp_path / "backups")
    archive = tmp_path / "evil" / "hello-world-20250101T000000Z.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        _tar_member(tar, "harmless.txt")  # comes first: must not be written either
        for name, kind, link in MALICIOUS[case]:
            _tar_member(tar, name.format(outside=outside), kind=kind, link=link.format(outside=outside))
    write_sidecar(archive)
    target = tmp_path / "target"
    result = backup(config, "restore", str(archive), "--target", str(target))
    assert result.returncode == 1, result.stderr
    assert "refusing to restore" in result.stderr
    assert not target.exists() or not any(target.iterdir()), "nothing written into the target"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert (outside / "victim.txt").read_text() == "original\n"
    assert not (tmp_path / "evil.txt").exists()


def test_restore_refuses_non_empty_target_and_existing_links_out(tree, tmp_path: Path) -> None:
    source, destination, config = tree
    assert backup(config).returncode == 0
    (archive,) = archives(destination)
    target = tmp_path / "target"
    target.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / "sub").symlink_to(outside)  # planted: the archive's sub/ would be written through it
    result = backup(config, "restore", str(archive), "--target", str(target))
    assert result.returncode == 2 and "not empty" in result.stderr
    (target / "stale.txt").write_text("not in the archive\n")
    # --force replaces the contents whole: the planted link is replaced, never written through.
    result = backup(config, "restore", str(archive), "--target", str(target), "--force")
    assert result.returncode == 0, result.stderr
    assert list(outside.iterdir()) == []
    assert (target / "sub").is_dir() and not (target / "sub").is_symlink()
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "no temporary folders left"

    (target / "hello.py").write_text("old content\n")
    result = backup(config, "restore", str(archive), "--target", str(target), "--force")
    assert result.returncode == 0, result.stderr
    assert (target / "hello.py").read_text() == (source / "hello.py").read_text()


def _failing_archive(folder: Path) -> Path:
    """An archive whose sidecar verifies and whose members all pass the safety scan, but whose third member
    cannot be extracted (its folder 'a' is a file): the restore fails part way."""
    archive = folder / "hello-world-20250101T000000Z.tar.gz"
    folder.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        _tar_member(tar, "harmless.txt")
        _tar_member(tar, "a")
        _tar_member(tar, "a/b")
    write_sidecar(archive)
    return archive


@pytest.mark.parametrize("before", ["missing", "empty", "non-empty --force"])
def test_a_restore_failing_part_way_leaves_the_target_as_it_was(tmp_path: Path, before: str) -> None:
    config = config_for(tmp_path / "cfg", tmp_path, tmp_path / "backups")
    archive = _failing_archive(tmp_path / "evil")
    place = tmp_path / "place"
    place.mkdir()
    target = place / "target"
    force = ["--force"] if "force" in before else []
    if before != "missing":
        target.mkdir(mode=0o751)
    if force:
        (target / "keep.txt").write_text("old contents\n")
        (target / "harmless.txt").write_text("not the archive's\n")
        (target / "folder").mkdir(mode=0o700)
        (target / "folder" / "inner.txt").write_text("inner\n")
        (target / "link").symlink_to("keep.txt")
    state = snapshot(place)
    result = backup(config, "restore", str(archive), "--target", str(target), *force)
    assert result.returncode == 1, result.stderr
    assert "was left as it was" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert snapshot(place) == state, "the target (and its folder) exactly as before"
    if before == "missing":
        assert not target.exists()


def test_a_failing_final_rename_puts_the_old_target_back(tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "good" / "hello-world-20250101T000000Z.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        _tar_member(tar, "new.txt", data=b"new\n")
    write_sidecar(archive)
    place = tmp_path / "place"
    target = place / "target"
    (target / "sub").mkdir(parents=True)
    (target / "old.txt").write_text("old\n")
    (target / "sub" / "deep.txt").write_text("deep\n")
    state = snapshot(place)
    real_rename = os.rename

    def rename(src, dst, **kwargs):
        if Path(src).name.startswith(".target.restoring-"):
            raise OSError(5, "Input/output error (simulated)")
        return real_rename(src, dst, **kwargs)

    config = load_config(write_config(tmp_path / "cfg"))
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(BackupError, match="was left as it was"):
        restore_archive(config, archive, str(target), force=True, keep_setid=False)
    monkeypatch.undo()
    assert snapshot(place) == state, "the old contents are back, and nothing else is left beside them"
    assert restore_archive(config, archive, str(target), force=True, keep_setid=False).members
    assert sorted(p.name for p in place.iterdir()) == ["target"]
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


# --- failures leave nothing partial ---


def _unprivileged(args: list[str]) -> list[str]:
    """args run without the power to read what file modes forbid (root: drop the DAC capabilities)."""
    if os.geteuid() != 0:
        return args
    setpriv = require_tool("setpriv", "util-linux")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all", "--", *args]


def test_an_os_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", {"run_dir": str(tmp_path / "a-file")})
    (tmp_path / "a-file").write_text("where the run folder should be\n")
    result = backup(config, "prune")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert "a-file" in result.stderr


def test_unreadable_file_fails_naming_it_and_leaves_nothing(tree) -> None:
    source, destination, config = tree
    unreadable = source / "sub" / "no-access.txt"
    unreadable.write_text("hidden\n")
    unreadable.chmod(0)
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    result = subprocess.run(_unprivileged([PYTHON, SCRIPT, "create"]), env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert str(unreadable) in result.stderr and "Permission denied" in result.stderr
    assert list(destination.iterdir()) == []
    assert "hello_world_backup_success 0.0" in (config.parent / "run/metrics/hello_world_backup.prom").read_text()


def test_full_filesystem_fails_and_leaves_nothing_partial(tmp_path: Path, small_fs: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "small.txt").write_text("small\n")
    destination = small_fs / "backups"
    config = config_for(tmp_path, source, destination)
    assert backup(config).returncode == 0  # a small last archive: the disk guard expects a small one again
    first = set(destination.iterdir())
    (source / "big.bin").write_bytes(random.Random(2).randbytes(3_000_000))
    result = backup(config)
    assert result.returncode == 1
    assert "No space left on device" in result.stderr
    assert set(destination.iterdir()) == first


def _mixed_tree(source: Path, rng: random.Random) -> None:
    for index in range(300):  # many small files and two large ones
        folder = source / f"d{index // 50}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index}.txt").write_text(f"line {index}\n" * rng.randint(10, 2000))
    (source / "big1.bin").write_bytes(rng.randbytes(8_000_000))
    (source / "big2.bin").write_bytes(rng.randbytes(8_000_000))


@dataclass
class Interrupted:
    """A mixed tree backed up once, to be interrupted at random moments of further runs."""

    config: Path
    env: dict[str, str]
    destination: Path
    lock: Path
    took: float  # how long a run holds its lock, about


def _interrupted(tmp_path: Path, rng: random.Random) -> Interrupted:
    source = tmp_path / "src"
    _mixed_tree(source, rng)
    destination = tmp_path / "backups"
    config = config_for(tmp_path, source, destination)
    first = backup(config)
    assert first.returncode == 0
    took = float(re.search(r"took (\S+) s", first.stdout).group(1))
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    return Interrupted(config, env, destination, config.parent / "run" / "backup.lock", took)


def test_sigterm_at_random_moments_ends_the_run_promptly_and_leaves_nothing_partial(tmp_path: Path) -> None:
    """SIGTERM raised inside isal's threaded compressor once left its close() waiting forever."""
    rng = random.Random(5)
    run = _interrupted(tmp_path, rng)
    env, destination, lock, took = run.env, run.destination, run.lock, run.took
    for _ in range(8):
        proc = subprocess.Popen([PYTHON, SCRIPT, "create"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        wait_until(lambda p=proc: p.poll() is not None or _holder(lock) == p.pid, 20, "the run to take its lock")
        time.sleep(rng.uniform(0, took))
        proc.terminate()
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("a SIGTERMed backup did not end within 60 s") from None
        # 1: stopped and cleaned up; 0: it had finished; -SIGTERM: it was exiting, past its handler
        assert proc.returncode in (0, 1, -signal.SIGTERM), err
        assert [p.name for p in destination.iterdir() if not p.name.startswith("hello-world-")] == []
        for archive in archives(destination):
            verify_archive(archive)


def test_kill_9_at_random_moments_never_leaves_an_incomplete_final_archive(tmp_path: Path) -> None:
    rng = random.Random(4)
    run = _interrupted(tmp_path, rng)
    config, env, destination, lock, took = run.config, run.env, run.destination, run.lock, run.took
    for _ in range(8):
        proc = subprocess.Popen(
            [PYTHON, SCRIPT, "create"], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        # Kill at a random moment of the run proper: from taking the lock to a little past the usual end.
        wait_until(lambda p=proc: p.poll() is not None or _holder(lock) == p.pid, 20, "the run to take its lock")
        time.sleep(rng.uniform(0, took * 1.2))
        proc.kill()
        proc.wait(timeout=10)
        for archive in archives(destination):  # every final-named archive is complete, with its sidecar
            verify_archive(archive)
    assert archives(destination)
    assert backup(config).returncode == 0  # the next run takes over the lock and removes the leftovers
    leftovers = [p.name for p in destination.iterdir() if not p.name.startswith("hello-world-")]
    assert leftovers == []
    assert all(p.with_name(p.name + ".sha256").exists() for p in archives(destination))
    assert backup(config, "verify").returncode == 0


def _holder(lock: Path) -> int:
    try:
        return int(lock.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


# --- one run at a time ---


def test_second_run_exits_75_while_the_lock_is_held(tree, tmp_path: Path) -> None:
    _source, destination, config = tree
    run_dir = config.parent / "run"
    with job_lock(run_dir / "backup.lock"):
        result = backup(config)
    assert result.returncode == 75, result.stderr
    assert archives(destination) == []

    # Two real runs. The first reads a large sparse file (a window of a second or more) and is frozen
    # with SIGSTOP once its lock is seen: the second must give way while it holds the lock.
    with open(_source / "sparse.bin", "wb") as handle:
        handle.truncate(8 << 30)
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    first = subprocess.Popen([PYTHON, SCRIPT, "create"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = run_dir / "backup.lock"
    try:
        wait_until(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), 20, "the first run's lock")
        os.kill(first.pid, signal.SIGSTOP)
        second = backup(config)
        assert second.returncode == 75, second.stderr
        assert f"PID {first.pid}" in second.stderr
        os.kill(first.pid, signal.SIGTERM)  # delivered on SIGCONT: the run stops and cleans up
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _out, err = first.communicate(timeout=90)  # a busy machine (the nested suite of an update) is slow to stop it
    assert first.returncode == 1 and "nothing partial" in err.decode()
    # (on a busy machine the run may be stopped before it made the destination at all)
    assert not destination.exists() or list(destination.iterdir()) == [], "no partial archive left"
    assert not lock.exists()
    (_source / "sparse.bin").unlink()
    assert backup(config).returncode == 0
    assert backup(config, "verify").returncode == 0


def test_a_dead_runs_lock_is_taken_over(tree) -> None:
    _source, destination, config = tree
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = config.parent / "run" / "backup.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(f"{dead.pid}\n")
    result = backup(config)
    assert result.returncode == 0, result.stderr
    assert f"stale lock {lock} of PID {dead.pid}" in result.stderr
    assert not lock.exists()


# --- hooks end with their run (issue 20) ---


def test_a_hook_timing_out_is_killed_with_everything_it_started(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hooks, "HOOK_TIMEOUT", 1.0)
    pids = tmp_path / "pids"
    try:
        with (
            pytest.raises(hooks.HookFailed, match=r"still running after 1 s; stopped"),
            hooks.staged([spawning_hook(pids)], cwd=tmp_path, parent=tmp_path / "run"),
        ):
            pass
        hook, grandchild = hook_pids(pids)[1:]
        all_gone([hook, grandchild])
        assert not list((tmp_path / "run").iterdir()), "the staging folder is removed"
    finally:
        kill_leftovers(pids)


def test_a_hook_left_running_in_the_background_ends_with_the_hook(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # It exits at once, its child runs on (its output elsewhere: a child holding the hook's pipes would block a read).
    command = f'sleep 100000 >/dev/null 2>&1 & echo $PPID $$ $! > "{pids}"'
    try:
        with hooks.staged([command], cwd=tmp_path, parent=tmp_path / "run") as staging:
            assert staging is not None
        all_gone(hook_pids(pids)[1:])
    finally:
        kill_leftovers(pids)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_killed_backup_takes_its_hook_along_and_the_next_run_sweeps_its_staging(tmp_path: Path, sig: int) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_tree(source)
    pids, armed = tmp_path / "pids", tmp_path / "armed"
    armed.touch()
    config = config_for(tmp_path, source, tmp_path / "backups", hooks={"before": [spawning_hook(pids, armed)]})
    run_dir = config.parent / "run"
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    proc = subprocess.Popen(
        [PYTHON, SCRIPT, "create"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path
    )
    try:
        hook_pids(pids)
        proc.send_signal(sig)  # the backup only: its hook and the hook's child must end with it
        _out, err = proc.communicate(timeout=30)
        all_gone(hook_pids(pids))
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        kill_leftovers(pids)
    left = list(run_dir.glob("backup-staging-*"))
    if sig == signal.SIGTERM:  # the run ends itself: it removes its staging folder, says why and exits 1
        assert proc.returncode == 1 and left == [], err
        return
    (stale,) = left
    armed.unlink()
    result = backup(config)
    assert result.returncode == 0, result.stderr
    assert not stale.exists(), "the next run removes the killed run's staging folder"
    assert f"removing {stale}, left by a backup that did not finish" in result.stderr


def test_a_stale_staging_folder_is_removed_by_the_next_backup_and_not_archived(tree) -> None:
    _source, destination, config = tree
    stale = config.parent / "run" / "backup-staging-k1lled"
    stale.mkdir(parents=True)
    (stale / "dump.sql").write_text("from a run that was killed\n")
    result = backup(config)
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    (archive,) = archives(destination)
    with tarfile.open(archive) as tar:
        assert not [name for name in tar.getnames() if "dump.sql" in name]


# --- retention ---


def test_retention_over_100_days_keeps_exactly_the_expected_set(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a\n")
    destination = tmp_path / "backups"
    config = config_for(tmp_path, source, destination)  # keep daily 7, weekly 4, monthly 6; UTC
    assert backup(config).returncode == 0
    (real,) = archives(destination)
    payload = real.read_bytes()
    for path in destination.iterdir():
        path.unlink()

    last = datetime(2025, 3, 31, 2, 0, tzinfo=UTC)  # a Monday
    stamps = [last - timedelta(days=day) for day in range(100)]
    stamps += [last - timedelta(days=3, hours=-5), last - timedelta(days=20, hours=-3)]  # a 2nd one on 2 days
    for when in stamps:
        archive = destination / f"hello-world-{when:%Y%m%dT%H%M%SZ}.tar.gz"
        archive.write_bytes(payload)
        write_sidecar(archive)
    strangers = ["notes.txt", "hello-world-latest.tar.gz", "hello-world-20250101T000000Z.tar.gz.bak"]
    for name in strangers:
        (destination / name).write_text("not an archive of ours\n")

    expected = {
        *(f"202503{day:02d}T020000Z" for day in range(25, 32) if day != 28),  # daily: the last 7 days
        "20250328T070000Z",  # daily: the newer of two on March 28
        "20250323T020000Z",  # weekly: ISO weeks 12 and 11 (weeks 14 and 13 are daily already)
        "20250316T020000Z",
        "20250228T020000Z",  # monthly: the newest of February, January, December 2024
        "20250131T020000Z",
        "20241231T020000Z",
    }
    before = sorted(p.name for p in destination.iterdir())
    result = backup(config, "prune", "--dry-run")
    assert result.returncode == 0 and "would delete 90 archive(s)" in result.stdout
    assert sorted(p.name for p in destination.iterdir()) == before
    result = backup(config, "prune")
    assert result.returncode == 0, result.stderr
    kept = {p.name[len("hello-world-") : -len(".tar.gz")] for p in archives(destination)}
    assert kept == expected
    sidecars = {p.name for p in destination.glob("*.sha256")}
    assert sidecars == {f"hello-world-{stamp}.tar.gz.sha256" for stamp in expected}
    assert all((destination / name).exists() for name in strangers)


def test_a_second_backup_on_the_same_day_no_longer_prunes_the_first(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a\n")
    destination = tmp_path / "backups"
    config = config_for(tmp_path, source, destination)  # the defaults: keep last 3, daily 7, ...
    assert load_config(config)["backup"]["keep"]["last"] == 3
    for _ in range(4):
        assert backup(config).returncode == 0
    made = archives(destination)
    assert len(made) == 3, "the newest 3 of one day are kept (the oldest goes: daily keeps only the newest)"
    assert backup(config, "prune", "--dry-run").stdout.strip() == "prune: would delete 0 archive(s)"


def _archive_at(stamp: str) -> Archive:
    when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return Archive(Path(f"hello-world-{stamp}.tar.gz"), when)


def test_the_retention_plan_keeps_the_newest_last_whatever_their_bucket() -> None:
    day = [_archive_at(f"20250310T{hour:02d}0000Z") for hour in range(8)]  # eight on one day
    older = [_archive_at("20250301T020000Z"), _archive_at("20250201T020000Z")]
    keep = {"last": 3, "daily": 7, "weekly": 0, "monthly": 0}
    plan = plan_retention(day + older, keep, UTC)
    assert {path.name[12:27]: why for path, why in plan.items()} == {
        "20250310T070000": ["last", "daily"],
        "20250310T060000": ["last"],
        "20250310T050000": ["last"],
        "20250301T020000": ["daily"],
        "20250201T020000": ["daily"],
    }
    assert set(plan_retention(day, {**keep, "last": 0}, UTC)) == {day[-1].path}, "last 0: the buckets alone"
    assert set(plan_retention(day, {"daily": 1, "weekly": 0, "monthly": 0}, UTC)) == {day[-1].path}, "no last: 0"
    assert set(plan_retention(day[:2], {**keep, "last": 5}, UTC)) == {a.path for a in day[:2]}, "fewer than last"


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(st.integers(0, 40 * 24), max_size=30, unique=True),
    st.fixed_dictionaries({rule: st.integers(0, 5) for rule in ("last", "daily", "weekly", "monthly")}),
)
def test_the_retention_plan_by_property(hours: list[int], keep: dict[str, int]) -> None:
    """The newest `last` are always kept; every other kept archive is the newest of its bucket; nothing else."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    found = [Archive(Path(f"a{hour}"), start + timedelta(hours=hour)) for hour in hours]
    plan = plan_retention(found, keep, UTC)
    newest_first = sorted(found, key=lambda a: a.created, reverse=True)
    assert set(plan) <= {a.path for a in found}
    assert {a.path for a in newest_first[: keep["last"]]} <= set(plan)
    buckets = {"daily": lambda t: t.date(), "weekly": lambda t: t.isocalendar()[:2], "monthly": lambda t: t.month}
    for archive in found:
        for rule in plan.get(archive.path, []):
            if rule != "last":
                bucket = buckets[rule](archive.created)
                assert archive == next(a for a in newest_first if buckets[rule](a.created) == bucket)
    for rule, bucket_of in buckets.items():
        assert sum(rule in why for why in plan.values()) == min(keep[rule], len({bucket_of(a.created) for a in found}))


def test_prune_never_deletes_the_newest_good_archive(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a\n")
    destination = tmp_path / "backups"
    config = config_for(tmp_path, source, destination, keep={"daily": 1, "weekly": 0, "monthly": 0})
    assert backup(config).returncode == 0
    (good,) = archives(destination)
    newer = destination / "hello-world-29991231T000000Z.tar.gz"
    newer.write_bytes(b"not gzip at all")
    write_sidecar(newer)
    result = backup(config, "prune")
    assert result.returncode == 0, result.stderr
    assert archives(destination) == [good, newer]  # newer is kept by daily: 1, good as the newest good one


# --- schedule ---


def _start_schedule(processes, config: Path, *args: str, log: Path):
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    with open(log, "wb") as out:
        return processes.start([PYTHON, SCRIPT, "schedule", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def test_schedule_loop_survives_a_failing_run_and_stops_on_sigterm(tmp_path: Path, processes) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a\n")
    destination = tmp_path / "backups"
    destination.write_text("a file where the destination folder should be: the first run fails\n")
    config = config_for(tmp_path, source, destination)
    log = tmp_path / "schedule.log"
    proc = _start_schedule(processes, config, "--every", "1", log=log)
    wait_until(lambda: "scheduled backup failed" in log.read_text(), 20, "a failed scheduled run")
    assert proc.poll() is None, "the loop lives on after a failing run"
    destination.unlink()
    wait_until(lambda: archives(destination), 20, "an archive from a later scheduled run")
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    text = log.read_text()
    assert "backup schedule stopped" in text
    starts = [datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S") for line in text.splitlines() if "starting" in line]
    assert all(b - a >= timedelta(seconds=1) for a, b in zip(starts, starts[1:], strict=False)), "no immediate re-fire"


def test_schedule_at_a_near_time_runs_then_waits_a_day(tmp_path: Path, processes) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a\n")
    destination = tmp_path / "backups"
    config = config_for(tmp_path, source, destination, timezone=None)
    at = datetime.now() + timedelta(seconds=4)  # time enough for the loop to start, even on a busy machine
    log = tmp_path / "schedule.log"
    proc = _start_schedule(processes, config, "--at", f"{at:%H:%M:%S}", log=log)
    wait_until(lambda: "next run at" in log.read_text(), 15, "the next run logged at start")
    assert f"next run at {at:%Y-%m-%d %H:%M:%S}" in log.read_text()
    wait_until(lambda: archives(destination), 20, "the scheduled backup")
    tomorrow = at + timedelta(days=1)
    wait_until(lambda: f"next run at {tomorrow:%Y-%m-%d %H:%M:%S}" in log.read_text(), 10, "tomorrow's run")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize(("written", "shown"), [("02:00", "02:00:00"), ("23:30", "23:30:00")])
def test_seed_config_unquoted_time_schedules_at_that_time(tmp_path: Path, processes, written: str, shown: str) -> None:
    config = tmp_path / "config.yaml"  # the seed's config.yaml, with the time unquoted as it wrote it
    config.write_text(
        "system:\n  monitoring:\n    prometheus:\n      scrape_interval: 15s\n    grafana:\n"
        f"      dashboard: hello-world-dashboard\n  backup:\n    schedule: daily\n    time: {written}\n"
        "  update:\n    protocol: update_protocol.py\n"
    )
    log = tmp_path / "schedule.log"
    proc = _start_schedule(processes, config, log=log)
    wait_until(lambda: "next run at" in log.read_text(), 15, "the next run logged at start")
    assert f"daily at {written} local time" in log.read_text()
    assert re.search(rf"next run at \d{{4}}-\d\d-\d\d {shown}", log.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


# --- metrics and config ---


def test_metrics_pushed_to_a_real_pushgateway(tmp_path: Path, processes) -> None:
    url = start_pushgateway(processes, tmp_path / "pushgateway")
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a\n")
    config = config_for(tmp_path, source, tmp_path / "backups", pushgateway=url)
    result = backup(config)
    assert result.returncode == 0, result.stderr
    body = http_get(url + "/metrics")[2].decode()
    assert re.search(r'^hello_world_backup_success\{[^}]*job="hello_world_backup"[^}]*\} 1$', body, re.M)
    size = re.search(r'^hello_world_backup_size_bytes\{[^}]*job="hello_world_backup"[^}]*\} (\S+)$', body, re.M)
    assert size and float(size.group(1)) == archives(tmp_path / "backups")[0].stat().st_size
    for name in ("last_success_timestamp_seconds", "last_run_timestamp_seconds", "duration_seconds"):
        assert f"hello_world_backup_{name}{{" in body


def test_a_dead_pushgateway_is_only_a_warning(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a\n")
    config = config_for(tmp_path, source, tmp_path / "backups", pushgateway=f"http://127.0.0.1:{free_port()}")
    result = backup(config)
    assert result.returncode == 0, result.stderr
    assert "could not push hello_world_backup metrics" in result.stderr
    textfile = (config.parent / "run" / "metrics" / "hello_world_backup.prom").read_text()
    assert "hello_world_backup_success 1.0" in textfile


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backup": {"time": "25:00"}})
    result = backup(config)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "system.backup.time: expected HH:MM, got '25:00'" in result.stderr
    result = backup(config, "restore", "/nonexistent.tar.gz")  # --target missing: argparse usage error
    assert result.returncode == 2
