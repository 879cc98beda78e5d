"""Backups that restore: daily gzip tar archives of the system, checked, pruned and restorable.

    python backup_script.py [create]                   one backup now (make backup, what cron calls)
    python backup_script.py verify [ARCHIVE]           checksum, then a full read (default: every archive)
    python backup_script.py list [--json]              name, time, size, checksum verified
    python backup_script.py restore ARCHIVE --target DIR [--force] [--keep-setuid]
    python backup_script.py prune [--dry-run]          apply system.backup.keep
    python backup_script.py schedule [--at HH:MM[:SS] | --every SECONDS]   the daily loop (make backup-schedule)
    python backup_script.py drill                      restore the newest archive into a scratch folder, compare
    python backup_script.py list|verify [NAME] --offsite, restore NAME --offsite --target DIR   the off-host copies

Settings come from config.yaml (system.backup, run_dir, monitoring.pushgateway) via hello_config.py.
Exit codes: 0 done; 1 the job failed (nothing partial left); 2 bad usage or config; 75 another run holds
<run_dir>/backup.lock (for restore: another restore into that target holds .<target>.restore.lock).

A restore (hello/restore.py) changes nothing outside its target, whatever the archive holds: members are
written into a private folder beside the target without ever following a symbolic link, checked on disk,
and the folder then takes the target's place. Setuid/setgid bits are dropped unless --keep-setuid. A
`restore --force` killed between its two renames is completed by the next restore into that target.

Archives are <destination>/hello-world-<UTC YYYYmmddTHHMMSSZ>.tar.gz (mode 0600, destination 0700), each
with a sidecar <archive>.sha256 that `sha256sum -c` accepts. An archive is streamed to a dot-named
`.hello-world-....partial` file, fsynced, then its sidecar is written (temporary name, fsync, rename), and
only then the archive is renamed to its final name and the directory fsynced: a final name always means a
complete archive whose sidecar already exists. Leftovers of a killed run are removed by the next create.
Two creates within one second: the second waits for the next second, so names never collide.

Excluded: the destination itself (compared by device and inode, so also when it lies inside the source
under another spelling), and every file or directory whose name matches a system.backup.exclude pattern
(fnmatch: `.git`, `*.pyc`) at any depth; an excluded directory is skipped with all it contains.
Symbolic links are stored as links. Compression is gzip-compatible, by ISA-L (python-isal) in a
background thread, so `tar xzf` and `gzip -t` read the archives.

Each archive ends with its manifest (.hello-backup/manifest.json, hello/manifest.py): every member's name, type,
size, mode and sha256, the commit being served and the config used; what system.backup.hooks.before wrote to
$HELLO_BACKUP_STAGING is under .hello-backup/staging/ (hello/backup_hooks.py). A failing hook, or a destination with
less free space than the last archive's size plus a margin (hello/disk_guard.py), fails the run before anything is
written. With system.backup.offsite.remote set, create then copies every archive the remote lacks (hello/offsite.py,
through rclone: temporary name, checksum checked there, rename) and prunes the remote by the same plan; a failed
copy keeps the local archives, records hello_world_backup_offsite_success 0 and exits 1. `drill` verifies the newest
archive (off-host when configured), restores it into <run_dir>/drill/ and compares it with its manifest
(hello/drill.py), recording hello_world_backup_drill_success.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import grp
import hashlib
import json
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

from isal import igzip_threaded

from hello import offsite, restore
from hello.backup_hooks import HookFailed, staged
from hello.disk_guard import NoRoom, check_room
from hello.drill import DrillFailed, Steps, drill
from hello.manifest import MANIFEST_DIR, STAGING_NAME, HashingReader, ManifestWriter, folder_member, header
from hello_config import EXIT_CONFIG, EXIT_FAILED, EXIT_LOCKED, EXIT_OK, ConfigError, load_config
from hello_jobs import LockHeld, fsync_dir, job_lock, record_job

log = logging.getLogger("backup")

JOB = "hello_world_backup"
OFFSITE_JOB = "hello_world_backup_offsite"  # its own Pushgateway group: a push replaces the whole group
DRILL_JOB = "hello_world_backup_drill"
PREFIX, SUFFIX, SIDECAR, PARTIAL = "hello-world-", ".tar.gz", ".sha256", ".partial"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
ARCHIVE_RE = re.compile(r"^hello-world-(\d{8}T\d{6}Z)\.tar\.gz$")
SIDECAR_RE = re.compile(r"^hello-world-\d{8}T\d{6}Z\.tar\.gz\.sha256$")
PARTIAL_RE = re.compile(r"^\.hello-world-\d{8}T\d{6}Z\.tar\.gz(\.sha256)?\.partial$")
CHECKSUM_LINE_RE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")

COMPRESS_LEVEL = 2  # ISA-L level 0-3; 2 compresses about as well as gzip -6 at many times its speed (bench_backup)
COMPRESS_THREADS = 2  # compressor threads beside the reading thread: faster than one even on 2 cores (bench_backup)
CHUNK = 1 << 20
PROGRESS_AFTER = 1.0  # seconds before progress appears on a terminal, so quick runs stay quiet


class BackupError(Exception):
    """The job failed (exit 1); str() says what and where."""


class UsageError(Exception):
    """Bad arguments or settings (exit 2)."""


class Terminated(Exception):
    """SIGTERM during a one-shot command: clean up and exit 1."""


class Termination:
    """SIGTERM raised as Terminated: at once, except while isal's threaded compressor runs.

    An exception raised between the steps of its queue bookkeeping leaves its close() waiting forever in
    Queue.join (seen: a SIGTERMed backup that never ended). While the archive is written the signal is only
    noted, and raised at the next read of the source or between members (check): in the main thread, outside
    isal, so the compressor is closed cleanly and the partial file removed.
    """

    def __init__(self) -> None:
        self.deferring = False
        self.pending = False

    def handler(self, _signum: int, _frame: object) -> None:
        if self.deferring:
            self.pending = True
            return
        raise Terminated("terminated by SIGTERM")

    def check(self) -> None:
        if self.pending:
            self.pending = False
            raise Terminated("terminated by SIGTERM")

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        self.check()


TERMINATION = Termination()


@dataclass(frozen=True)
class Archive:
    path: Path
    created: datetime  # UTC, from the name


# --- archives on disk ---


def archive_name(when: datetime) -> str:
    return f"{PREFIX}{when.astimezone(UTC).strftime(STAMP_FORMAT)}{SUFFIX}"


def sidecar_path(archive: Path) -> Path:
    """The checksum file beside an archive: <archive>.sha256."""
    return archive.with_name(archive.name + SIDECAR)


def parse_archive(path: Path) -> Archive | None:
    """The Archive for a path following the naming, else None (other files are never touched)."""
    match = ARCHIVE_RE.match(path.name)
    if not match:
        return None
    try:
        created = datetime.strptime(match.group(1), STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return Archive(path, created)


def find_archives(destination: Path) -> list[Archive]:
    """Archives in destination, oldest first."""
    if not destination.is_dir():
        return []
    found = [parse_archive(destination / name) for name in os.listdir(destination)]
    return sorted((a for a in found if a is not None and a.path.is_file()), key=lambda a: a.created)


def _unlink_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_leftovers(destination: Path) -> None:
    """Delete what a killed create left: dot-named partial files and sidecars without their archive."""
    for name in os.listdir(destination):
        path = destination / name
        orphan = SIDECAR_RE.match(name) and not path.with_name(name.removesuffix(SIDECAR)).exists()
        if PARTIAL_RE.match(name) or orphan:
            log.warning("removing %s, left by an interrupted backup", path)
            _unlink_quietly(path)


# --- checksums and reading ---


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def check_checksum(path: Path) -> str:
    """Raise BackupError unless path's sidecar exists, names it, and matches its bytes; return the digest."""
    sidecar = sidecar_path(path)
    try:
        line = sidecar.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise BackupError(f"{path}: no checksum file {sidecar.name}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"{sidecar}: cannot read: {exc}") from None
    match = CHECKSUM_LINE_RE.match(line)
    if not match or match.group(2) != path.name:
        raise BackupError(f"{sidecar}: expected '<sha256>  {path.name}', got {line[:100]!r}")
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise BackupError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if actual != match.group(1).lower():
        raise BackupError(f"{path}: checksum mismatch (sidecar {match.group(1)[:12]}..., file {actual[:12]}...)")
    return actual


class _ForwardReader:
    """A forward-only seekable view of a stream, so tarfile's plain (non-"|") mode can read it.

    tarfile's own stream mode re-slices its buffer on every read and write, which is quadratic in the
    chunk size; its plain mode only ever seeks forward when members are read in order.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset if whence == os.SEEK_SET else self.pos + offset
        if target < self.pos or whence == os.SEEK_END:
            raise OSError(f"cannot seek back in a compressed stream (to {target} from {self.pos})")
        while self.pos < target:
            if not self.read(min(CHUNK, target - self.pos)):
                break
        return self.pos


class _TellWriter:
    """A write-only stream that knows its position, as tarfile's plain "w" mode needs."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.pos = 0

    def write(self, data: bytes) -> int:
        self.stream.write(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos


@contextlib.contextmanager
def open_tar_stream(path: Path) -> Iterator[tarfile.TarFile]:
    """A tar reader over the gzip file at path, decompressed in a background thread, read front to back."""
    with open(path, "rb") as raw, igzip_threaded.open(raw, "rb") as gz:
        with tarfile.open(fileobj=_ForwardReader(gz), mode="r:", copybufsize=CHUNK) as tar:
            yield tar
        while gz.read(CHUNK):  # read to the end, so the gzip trailer (CRC, length) is checked too
            pass


def iter_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members one by one, forgetting each, so memory stays flat however many there are."""
    while (member := tar.next()) is not None:
        yield member
        tar.members.clear()


def read_fully(path: Path) -> int:
    """Read every member's data (checks the gzip CRC and the tar structure); return the member count."""
    count = 0
    try:
        with open_tar_stream(path) as tar:
            for member in iter_members(tar):
                count += 1
                if member.isreg():
                    data = tar.extractfile(member)
                    while data and data.read(CHUNK):
                        pass
    except BackupError:
        raise
    except Exception as exc:  # noqa: BLE001 - gzip, tar and I/O errors all mean: unreadable
        raise BackupError(f"{path}: unreadable archive: {exc}") from None
    return count


def verify_archive(path: Path) -> int:
    """Checksum, then a full read; raise BackupError on the first problem; return the member count."""
    check_checksum(path)
    return read_fully(path)


# --- create ---


class _HashingWriter:
    """The archive file: every byte written is hashed and counted on the way to disk."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        self.handle.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.handle.flush()


class Progress:
    """A one-line progress report on stderr, only on a terminal and only once a run takes a while."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.shown_at = 0.0
        self.files = 0
        self.bytes = 0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        now = time.monotonic()
        if self.enabled and now - self.started > PROGRESS_AFTER and now - self.shown_at > 0.5:
            self.shown_at = now
            rate = self.bytes / (now - self.started) / 1e6
            sys.stderr.write(f"\r  {self.files} files, {self.bytes / 1e6:.1f} MB read, {rate:.1f} MB/s ")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.shown_at:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


def _excluded(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def walk_source(source: Path, patterns: list[str], skip: set[tuple[int, int]]) -> Iterator[tuple[str, str]]:
    """(path, archive name) of everything to archive, depth first in name order, never following links."""

    def walk(directory: str, prefix: str) -> Iterator[tuple[str, str]]:
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            raise BackupError(f"cannot read directory {directory}: {exc.strerror or exc}") from None
        for entry in entries:
            if _excluded(entry.name, patterns):
                continue
            path = entry.path  # str, not Path: this loop runs once per file
            arcname = prefix + entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                info = entry.stat(follow_symlinks=False) if is_dir else None
            except FileNotFoundError:
                continue
            if info is not None and (info.st_dev, info.st_ino) in skip:
                log.debug("skipping %s: it is the backup destination", path)
                continue
            yield path, arcname
            if is_dir:
                yield from walk(path, arcname + "/")

    yield from walk(str(source), "")


@functools.lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.lru_cache(maxsize=256)
def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


_TYPES = {stat.S_IFDIR: tarfile.DIRTYPE, stat.S_IFIFO: tarfile.FIFOTYPE, stat.S_IFLNK: tarfile.SYMTYPE}


def tar_info(path: str, arcname: str, info: os.stat_result, seen: dict[tuple[int, int], str]):
    """The TarInfo for an lstat result, as tarfile.gettarinfo makes it, with owner names cached and whole-second
    mtimes (as GNU tar stores them: no pax header per file); None for sockets and devices (never archived)."""
    member = tarfile.TarInfo(arcname)
    kind = stat.S_IFMT(info.st_mode)
    if kind == stat.S_IFREG:
        inode = (info.st_dev, info.st_ino)
        if info.st_nlink > 1 and inode in seen:
            member.type, member.linkname = tarfile.LNKTYPE, seen[inode]
        else:
            member.type, member.size = tarfile.REGTYPE, info.st_size
            if info.st_nlink > 1:
                seen[inode] = arcname  # only multiply linked files are remembered: memory stays flat
    elif kind in _TYPES:
        member.type = _TYPES[kind]
        if kind == stat.S_IFLNK:
            member.linkname = os.readlink(path)
    else:
        return None
    member.mode = stat.S_IMODE(info.st_mode)
    member.uid, member.gid = info.st_uid, info.st_gid
    member.uname, member.gname = _user_name(info.st_uid), _group_name(info.st_gid)
    member.mtime = int(info.st_mtime)
    return member


def _add(
    tar: tarfile.TarFile, path: str, arcname: str, seen: dict[tuple[int, int], str], manifest: ManifestWriter
) -> int:
    """Add one entry (and its manifest entry); return the bytes of file data read."""
    TERMINATION.check()
    try:
        info = tar_info(path, arcname, os.lstat(path), seen)
    except FileNotFoundError:
        log.warning("%s vanished while the backup ran; not archived", path)
        return 0
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    if info is None:
        log.warning("skipping %s: sockets and device files are not archived", path)
        return 0
    if not info.isreg():
        tar.addfile(info)
        manifest.add(info, None)
        return 0
    try:
        # O_NOFOLLOW: a file swapped for a symlink since the lstat above is refused, never followed.
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as handle:
            reader = HashingReader(handle, before_read=TERMINATION.check)
            tar.addfile(info, reader)
            manifest.add(info, reader.hexdigest())
    except FileNotFoundError:
        log.warning("%s vanished while the backup ran; not archived", path)
        return 0
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    return info.size


def write_archive(
    source: Path,
    temp: Path,
    patterns: list[str],
    skip: set[tuple[int, int]],
    progress: Progress,
    staging: Path | None = None,
    head: dict[str, Any] | None = None,
):
    """Stream the tree (then the hooks' staging folder, then the manifest) into temp (created 0600, fsynced);
    return (sha256 hex, size in bytes)."""
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with TERMINATION.deferred(), open(fd, "wb", buffering=CHUNK) as handle:
        os.fchmod(fd, 0o600)
        writer = _HashingWriter(handle)
        gz = igzip_threaded.open(writer, "wb", compresslevel=COMPRESS_LEVEL, threads=COMPRESS_THREADS)
        try:
            stream = _TellWriter(gz)
            with tarfile.open(fileobj=stream, mode="w:", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:
                seen: dict[tuple[int, int], str] = {}
                manifest = ManifestWriter()
                trees = [(source, "")]
                for folder in (MANIFEST_DIR, STAGING_NAME) if staging is not None else (MANIFEST_DIR,):
                    tar.addfile(folder_member(folder))
                    manifest.add(folder_member(folder), None)
                if staging is not None:
                    trees.append((staging, STAGING_NAME + "/"))
                for tree, prefix in trees:
                    for path, arcname in walk_source(tree, [*patterns, MANIFEST_DIR] if not prefix else [], skip):
                        progress.add(_add(tar, path, prefix + arcname, seen, manifest))
                        tar.members.clear()  # tarfile keeps every TarInfo otherwise: memory would grow per file
                info, data = manifest.finish(head or {})
                with data:
                    tar.addfile(info, data)
        finally:
            gz.close()
        handle.flush()
        os.fsync(fd)
    return writer.digest.hexdigest(), writer.size


def prepare_destination(destination: Path) -> None:
    try:
        destination.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(destination, 0o700)
    except OSError as exc:
        raise BackupError(f"cannot use the destination {destination}: {exc.strerror or exc}") from None


def _free_name(destination: Path) -> Path:
    """The final path for a new archive; waits for the next second if this second's name is taken."""
    while True:
        now = datetime.now(UTC)
        final = destination / archive_name(now)
        if not final.exists() and not sidecar_path(final).exists():
            return final
        time.sleep(1.02 - now.microsecond / 1e6)


def create(config: dict[str, Any], *, progress: Progress) -> tuple[Archive, int]:
    """Write one archive (the caller holds the lock); return it and its size."""
    backup = config["backup"]
    source, destination = Path(backup["source"]), Path(backup["destination"])
    if not source.is_dir():
        raise UsageError(f"system.backup.source: {source} is not a directory")
    if source.resolve() == destination.resolve():
        raise UsageError("system.backup.destination: must not be the source directory itself")
    hooks = backup["hooks"]["before"]
    prepare_destination(destination)
    remove_leftovers(destination)
    try:
        check_room(destination, expected_size(destination, source, backup["exclude"], None))  # at once
        with staged(hooks, cwd=Path(config["config_file"]).parent, parent=Path(config["run_dir"])) as staging:
            if staging is not None:  # and again with what the hooks staged
                check_room(destination, expected_size(destination, source, backup["exclude"], staging))
            return _write(config, source, destination, progress, staging, header(config, hooks))
    except (HookFailed, NoRoom) as exc:
        raise BackupError(str(exc)) from None


def expected_size(destination: Path, source: Path, patterns: list[str], staging: Path | None) -> int:
    """What the next archive may take: the last archive's size, else the source's (plus the hooks' output)."""
    found = find_archives(destination)
    trees = ([] if found else [source]) + ([staging] if staging else [])
    total = found[-1].path.stat().st_size if found else 0
    for tree in trees:
        for path, _arcname in walk_source(tree, patterns if tree == source else [], set()):
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def _write(config: dict[str, Any], source: Path, destination: Path, progress: Progress, staging, head):
    """Write the archive: partial file, sidecar, rename (see the module docstring)."""
    patterns = config["backup"]["exclude"]
    dest_stat = destination.stat()
    final = _free_name(destination)
    sidecar = sidecar_path(final)
    temp = final.with_name(f".{final.name}{PARTIAL}")
    temp_sidecar = final.with_name(f".{sidecar.name}{PARTIAL}")
    writing = temp
    try:
        skip = {(dest_stat.st_dev, dest_stat.st_ino)}
        digest, size = write_archive(source, temp, patterns, skip, progress, staging, head)
        # The sidecar gets its final name first: then every final-named archive has one.
        writing = temp_sidecar
        fd = os.open(temp_sidecar, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(f"{digest}  {final.name}\n")
            handle.flush()
            os.fsync(fd)
        os.rename(temp_sidecar, sidecar)
        fsync_dir(destination)
        writing = final
        os.rename(temp, final)
        fsync_dir(destination)
    except OSError as exc:
        raise BackupError(f"writing {writing}: {exc.strerror or exc}") from None
    finally:
        # Whatever stopped us (an error, SIGTERM, Ctrl-C), leave no partial file; a sidecar goes only
        # when its archive never got its final name.
        _unlink_quietly(temp, temp_sidecar, *(() if final.exists() else (sidecar,)))
        progress.done()
    archive = parse_archive(final)
    assert archive is not None  # final was built by archive_name()
    return archive, size


def run_create(config: dict[str, Any], *, show_progress: bool = False) -> int:
    """One backup under the lock, then its metrics, then prune; return the exit code.

    Every run that fails, whatever step failed (taking the lock, say on a full disk; the archive; its sidecar;
    the prune), is recorded as failed: the textfile attempted, the Pushgateway pushed when configured. A run
    is recorded as soon as its archive is written; a prune failing after that fails the run (exit 1) and is
    recorded again: success 0, but the last success is that archive's (it exists and is good).
    """
    started = time.time()
    lock = Path(config["run_dir"]) / "backup.lock"
    extra: dict[str, float] = {}
    written: float | None = None  # when the archive got its final name
    try:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(job_lock(lock))
            except OSError as exc:
                raise BackupError(f"cannot take the lock {lock}: {exc.strerror or exc}") from None
            # rclone (when a remote is configured) starts beside the archive's writing, ready when the copy begins.
            remote = stack.enter_context(_session(config, show_progress))
            archive, size = create(config, progress=Progress(show_progress))
            written = time.time()
            extra = {f"{JOB}_size_bytes": float(size), f"{JOB}_duration_seconds": written - started}
            print(f"created {archive.path}")
            print(f"  size {size} bytes ({size / 1e6:.1f} MB), took {written - started:.2f} s")
            record_job(config, JOB, success=True, started=started, finished=written, extra=extra)
            copied = copy_offsite(config, remote, fresh=archive.path)
            try:
                prune(config, dry_run=False, known_good=archive.path)
            except Terminated:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever stopped the prune, the archive stands
                failed = f"backup {archive.path} was written, but pruning old archives failed"
                raise BackupError(f"{failed}: {exc}") from None
    except LockHeld as exc:
        log.error("another backup run holds %s (PID %s); not starting", exc.path, exc.pid)
        return EXIT_LOCKED
    except BaseException:
        finished = time.time()
        extra[f"{JOB}_duration_seconds"] = finished - started
        record_job(config, JOB, success=False, started=started, finished=finished, extra=extra, last_success=written)
        raise
    return EXIT_OK if copied else EXIT_FAILED


# --- off-host copies (hello/offsite.py does the rclone part) ---


def _sidecar_digest(text: str, name: str) -> str:
    """The sha256 a sidecar's text gives for the archive name; ValueError when it is not such a line."""
    match = CHECKSUM_LINE_RE.match(text.strip())
    if not match or match.group(2) != name:
        raise ValueError(f"expected '<sha256>  {name}', got {text.strip()[:100]!r}")
    return match.group(1).lower()


NAMING = offsite.Naming(
    created=lambda name: archive.created if (archive := parse_archive(Path(name))) else None,
    sidecar=lambda name: name + SIDECAR,
    temp=lambda name: f".{name}{PARTIAL}",
    is_temp=lambda name: bool(PARTIAL_RE.match(name)),
    sidecar_digest=_sidecar_digest,
)


def configured_remote(
    config: dict[str, Any], *, show_progress: bool = False
) -> contextlib.AbstractContextManager[offsite.Remote] | None:
    """`with` it for the remote of system.backup.offsite (None when there is none)."""
    settings = config["backup"]["offsite"]
    if not settings["remote"]:
        return None
    return offsite.connect(settings["remote"], settings["rclone_config"], progress=show_progress)


def _require_remote(config: dict[str, Any]) -> contextlib.AbstractContextManager[offsite.Remote]:
    remote = configured_remote(config, show_progress=sys.stderr.isatty())
    if remote is None:
        raise UsageError("--offsite: system.backup.offsite.remote is null in the config (no off-host copies)")
    return remote


def _keep(config: dict[str, Any]) -> offsite.Keep:
    """The retention plan of system.backup.keep over archive names (the same plan as for local archives)."""

    def keep(archives: dict[str, datetime]) -> set[str]:
        found = [Archive(Path(name), created) for name, created in archives.items()]
        return {path.name for path in plan_retention(found, config["backup"]["keep"], _zone(config))}

    return keep


def _session(config: dict[str, Any], show_progress: bool) -> contextlib.AbstractContextManager[offsite.Remote | None]:
    return configured_remote(config, show_progress=show_progress) or contextlib.nullcontext(None)


def copy_offsite(config: dict[str, Any], remote: offsite.Remote | None, *, fresh: Path | None = None) -> bool:
    """Copy the archives the remote lacks, then prune it; record the outcome; False when it failed.

    No remote configured (None): nothing to do (True, and no offsite metrics). A failure leaves every local
    archive; the next run retries what is missing."""
    if remote is None:
        return True
    started = time.time()
    spec = remote.spec
    try:
        local = [a.path for a in find_archives(Path(config["backup"]["destination"]))]
        uploaded = offsite.sync(remote, local, NAMING, _keep(config), fresh=fresh)
        files = remote.files()
        newest = list(offsite.archives_on(files, NAMING))[-1]
        offsite.prune(remote, NAMING, _keep(config), dry_run=False, files=files)
    except (offsite.OffsiteError, BackupError, IndexError) as exc:
        problem = "no archive reached the remote" if isinstance(exc, IndexError) else str(exc)
        record_job(config, OFFSITE_JOB, success=False, started=started, finished=time.time())
        print(f"backup_script.py: off-host copy to {spec} failed: {problem}", file=sys.stderr)
        print("  the local archives are kept; the next run copies what the remote lacks", file=sys.stderr)
        return False
    size = files[newest]
    extra = {f"{OFFSITE_JOB}_size_bytes": float(size)}
    record_job(config, OFFSITE_JOB, success=True, started=started, finished=time.time(), extra=extra)
    print(
        f"off-host: copied {len(uploaded)} archive(s) to {spec} in {time.time() - started:.2f} s; "
        f"newest there {newest} ({size} bytes)"
    )
    return True


def run_list_offsite(config: dict[str, Any], as_json: bool) -> int:
    with _require_remote(config) as remote:
        files = remote.files()
    rows = [
        {
            "name": name,
            "path": remote.path(name),
            "time": created.isoformat(),
            "size": files[name],
            "has_checksum": NAMING.sidecar(name) in files,
        }
        for name, created in offsite.archives_on(files, NAMING).items()
    ]
    status = {True: "sidecar ok", False: "NO SIDECAR"}
    return _print_listing(rows, as_json, lambda row: status[row["has_checksum"]], f"no archives on {remote.spec}")


def run_verify_offsite(config: dict[str, Any], name: str | None) -> int:
    with _require_remote(config) as remote:
        names = [name] if name else list(offsite.archives_on(remote.files(), NAMING))
        if not names:
            log.error("no archives on %s to verify", remote.spec)
            return EXIT_FAILED
        failed = 0
        for each in names:
            started = time.monotonic()
            try:
                offsite.verify(remote, each, NAMING)
            except offsite.OffsiteError as exc:
                failed += 1
                print(f"FAIL {exc}")
            else:
                print(f"OK   {remote.path(each)} (every byte matches its sidecar, {time.monotonic() - started:.2f} s)")
    return EXIT_FAILED if failed else EXIT_OK


@contextlib.contextmanager
def fetched(config: dict[str, Any], remote: offsite.Remote, name: str) -> Iterator[Path]:
    """An off-host archive downloaded with its sidecar into a private folder under run_dir, checked, then removed."""
    if parse_archive(Path(name)) is None or "/" in name:
        raise UsageError(f"--offsite {name}: not an archive name (hello-world-<UTC YYYYmmddTHHMMSSZ>.tar.gz)")
    run_dir = Path(config["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="offsite-download-", dir=run_dir))  # 0700: nobody else reads it
    try:
        path = offsite.fetch(remote, name, folder, NAMING)
        check_checksum(path)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_restore_offsite(config: dict[str, Any], name: str, target: str, force: bool, keep_setid: bool) -> int:
    with _require_remote(config) as remote, fetched(config, remote, name) as path:
        return run_restore(str(path), target, force, keep_setid)


def run_prune_offsite(config: dict[str, Any], dry_run: bool) -> None:
    connection = configured_remote(config)
    if connection is not None:
        with connection as remote:
            doomed = offsite.prune(remote, NAMING, _keep(config), dry_run=dry_run)
        print(f"prune: {'would delete' if dry_run else 'deleted'} {len(doomed)} archive(s) on {remote.spec}")


# --- the restore drill (hello/drill.py) ---


def _drill_restore(archive: Path, target: Path) -> None:
    run_restore(str(archive), str(target), False)


def run_drill(config: dict[str, Any]) -> int:
    """Restore the newest archive (off-host when configured) into a scratch folder and compare it with its manifest."""
    run_dir = Path(config["run_dir"])
    try:
        with job_lock(run_dir / "backup.lock"):  # no prune deletes the archive under the drill
            started = time.time()
            try:
                result = _drill_newest(config, run_dir)
            except (BackupError, offsite.OffsiteError, DrillFailed, OSError, tarfile.TarError) as exc:
                record_job(config, DRILL_JOB, success=False, started=started, finished=time.time())
                raise BackupError(f"drill failed: {exc}") from None
            record_job(config, DRILL_JOB, success=True, started=started, finished=time.time())
    except LockHeld as exc:
        log.error("another backup run holds %s (PID %s); no drill now", exc.path, exc.pid)
        return EXIT_LOCKED
    print(
        f"drill passed: {result.archive.name} restored {result.entries} entries exactly as its manifest lists "
        f"(commit {result.commit[:12]}) in {result.seconds:.2f} s"
    )
    return EXIT_OK


def _drill_newest(config: dict[str, Any], run_dir: Path):
    connection = configured_remote(config)
    scratch = run_dir / "drill"
    # Checksum first; the full read of `verify` would be done twice: the restore reads every byte (scan, extract).
    steps = Steps(verify=check_checksum, restore=_drill_restore, remove_tree=restore.remove_tree)
    if connection is None:
        found = find_archives(Path(config["backup"]["destination"]))
        if not found:
            raise BackupError(f"no archives in {config['backup']['destination']} to drill")
        return drill(found[-1].path, scratch, steps)
    with connection as remote:
        names = list(offsite.archives_on(remote.files(), NAMING))
        if not names:
            raise BackupError(f"no archives on {remote.spec} to drill")
        with fetched(config, remote, names[-1]) as path:
            return drill(path, scratch, steps)


# --- verify and list ---


def _archive_arg(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"{value}: no such archive")
    return path


def run_verify(config: dict[str, Any], archive: str | None) -> int:
    paths = (
        [_archive_arg(archive)] if archive else [a.path for a in find_archives(Path(config["backup"]["destination"]))]
    )
    if not paths:
        log.error("no archives in %s to verify", config["backup"]["destination"])
        return EXIT_FAILED
    failed = 0
    for path in paths:
        started = time.monotonic()
        try:
            members = verify_archive(path)
        except BackupError as exc:
            failed += 1
            print(f"FAIL {exc}")
        else:
            print(f"OK   {path} ({members} members, {time.monotonic() - started:.2f} s)")
    return EXIT_FAILED if failed else EXIT_OK


def run_list(config: dict[str, Any], as_json: bool) -> int:
    rows = []
    destination = config["backup"]["destination"]
    for archive in find_archives(Path(destination)):
        try:
            check_checksum(archive.path)
            verified, problem = True, None
        except BackupError as exc:
            verified, problem = False, str(exc)
        rows.append(
            {
                "name": archive.path.name,
                "path": str(archive.path),
                "time": archive.created.isoformat(),
                "size": archive.path.stat().st_size,
                "checksum_ok": verified,
                "problem": problem,
            }
        )
    status = {True: "checksum ok", False: "checksum BAD"}
    return _print_listing(rows, as_json, lambda row: status[row["checksum_ok"]], f"no archives in {destination}")


def _print_listing(rows: list[dict[str, Any]], as_json: bool, status, nothing: str) -> int:
    """list's output: JSON, or one line per archive (name, time, size, status), or what says there is none."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        print(f"{row['name']}  {row['time']}  {row['size']:>12}  {status(row)}")
    if not rows:
        print(nothing)
    return EXIT_OK


# --- restore (hello/restore.py: what is written where, and the checks) ---


def run_restore(archive: str, target: str, force: bool, keep_setid: bool = False) -> int:
    path = _archive_arg(archive)
    started = time.monotonic()
    check_checksum(path)
    try:
        count = restore.restore(
            functools.partial(open_tar_stream, path), Path(target), label=str(path), force=force, keep_setid=keep_setid
        )
    except restore.TargetError as exc:
        raise UsageError(str(exc)) from None
    except restore.RestoreError as exc:
        raise BackupError(str(exc)) from None
    except LockHeld as exc:
        log.error("another restore into %s holds %s (PID %s); not starting", target, exc.path, exc.pid)
        return EXIT_LOCKED
    print(f"restored {count} members of {path} into {target} in {time.monotonic() - started:.2f} s")
    return EXIT_OK


# --- prune ---


def _zone(config: dict[str, Any]) -> tzinfo | None:
    name = config["backup"]["timezone"]
    return ZoneInfo(name) if name else None  # None: the host's local time


def plan_retention(archives: list[Archive], keep: dict[str, int], zone: tzinfo | None) -> dict[Path, list[str]]:
    """Archives to keep -> why: the newest archive of each of the last N days, ISO weeks and months.

    Like restic's --keep-daily/weekly/monthly: each rule walks from the newest archive back and keeps the
    newest archive of each calendar bucket (in the configured time zone) until it has N buckets.
    """
    buckets = {
        "daily": lambda t: t.date(),
        "weekly": lambda t: t.isocalendar()[:2],
        "monthly": lambda t: (t.year, t.month),
    }
    kept: dict[Path, list[str]] = {}
    newest_first = sorted(archives, key=lambda a: a.created, reverse=True)
    for rule, bucket_of in buckets.items():
        seen: set[Any] = set()
        for archive in newest_first:
            if len(seen) >= keep[rule]:
                break
            bucket = bucket_of(archive.created.astimezone(zone))
            if bucket not in seen:
                seen.add(bucket)
                kept.setdefault(archive.path, []).append(rule)
    return kept


def newest_good(archives: list[Archive], known_good: Path | None) -> Path | None:
    """The newest archive that verifies (checksum and full read), newest first; known_good is trusted."""
    for archive in sorted(archives, key=lambda a: a.created, reverse=True):
        if known_good is not None and archive.path == known_good:
            return archive.path
        try:
            verify_archive(archive.path)
        except BackupError as exc:
            log.warning("not a good archive: %s", exc)
            continue
        return archive.path
    return None


def prune(config: dict[str, Any], *, dry_run: bool, known_good: Path | None = None) -> list[Path]:
    """Delete the archives system.backup.keep does not keep; return what was (or would be) deleted."""
    archives = find_archives(Path(config["backup"]["destination"]))
    kept = plan_retention(archives, config["backup"]["keep"], _zone(config))
    good = newest_good(archives, known_good)
    if good is not None:
        kept.setdefault(good, []).append("newest good")
    doomed = [a.path for a in archives if a.path not in kept]
    for archive in archives:
        if archive.path in kept:
            log.debug("keeping %s (%s)", archive.path.name, ", ".join(kept[archive.path]))
    for path in doomed:
        if dry_run:
            print(f"would delete {path}")
            continue
        # The archive goes first, its sidecar after: a final-named archive never lacks its sidecar.
        _unlink_quietly(path)
        _unlink_quietly(sidecar_path(path))
        log.info("pruned %s", path)
    if doomed and not dry_run:
        fsync_dir(Path(config["backup"]["destination"]))
    return doomed


def run_prune(config: dict[str, Any], dry_run: bool) -> int:
    try:
        with job_lock(Path(config["run_dir"]) / "backup.lock"):
            doomed = prune(config, dry_run=dry_run)
            run_prune_offsite(config, dry_run)
    except LockHeld as exc:
        log.error("another backup run holds %s (PID %s); not pruning", exc.path, exc.pid)
        return EXIT_LOCKED
    verb = "would delete" if dry_run else "deleted"
    print(f"prune: {verb} {len(doomed)} archive(s)")
    return EXIT_OK


# --- schedule ---


def _scheduled_run(config: dict[str, Any]) -> None:
    """One scheduled backup: failures are logged (and recorded as metrics), never raised into the loop."""
    log.info("scheduled backup starting")
    try:
        code = run_create(config)
    except (BackupError, UsageError) as exc:
        log.error("scheduled backup failed: %s", exc)
    except Exception:
        log.exception("scheduled backup failed unexpectedly")
    else:
        if code == EXIT_LOCKED:
            log.warning("scheduled backup skipped: another run holds the lock")
        elif code == EXIT_FAILED:
            log.warning("scheduled backup done, but its off-host copy failed (the next run retries it)")
        else:
            log.info("scheduled backup done")


def run_schedule(config: dict[str, Any], at: str | None, every: float | None) -> int:
    import schedule  # only the loop needs it

    zone_name = config["backup"]["timezone"]
    scheduler = schedule.Scheduler()
    if every is not None:
        if every <= 0:
            raise UsageError(f"--every {every:g}: expected a number of seconds above 0")
        job = scheduler.every(every).seconds.do(_scheduled_run, config)
        what = f"every {every:g} s"
    else:
        when = at or config["backup"]["time"]
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?", when):
            raise UsageError(f"--at {when}: expected HH:MM or HH:MM:SS")
        try:
            job = scheduler.every().day.at(when, zone_name).do(_scheduled_run, config)
        except ImportError:
            raise UsageError("system.backup.timezone needs the pytz package: pip install -r requirements.txt") from None
        what = f"daily at {when} {zone_name or 'local time'}"
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received: stopping after the current run", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("backup schedule: %s; next run at %s (host local time)", what, job.next_run)
    last_run = job.last_run
    while not stop.is_set():
        scheduler.run_pending()
        if job.last_run != last_run:
            last_run = job.last_run
            log.info("next run at %s (host local time)", job.next_run)
        idle = scheduler.idle_seconds or 1.0
        stop.wait(min(max(idle, 0.05), 1.0))
    log.info("backup schedule stopped")
    return EXIT_OK


# --- command line ---


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="backup_script.py", description="Backups that restore (see the module docstring and README)."
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("create", help="one backup now, then prune (the default)")
    verify = commands.add_parser("verify", help="check the checksum, then read the whole archive")
    verify.add_argument("archive", nargs="?", help="one archive (default: every archive in the destination)")
    verify.add_argument("--offsite", action="store_true", help="download and check the copies on the remote")
    listing = commands.add_parser("list", help="archives with time, size and checksum status")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--offsite", action="store_true", help="the copies on system.backup.offsite.remote")
    restore_cmd = commands.add_parser("restore", help="restore an archive into a directory")
    restore_cmd.add_argument("archive", help="a local archive path, or with --offsite an archive name on the remote")
    restore_cmd.add_argument("--offsite", action="store_true", help="download ARCHIVE from the remote, check, restore")
    restore_cmd.add_argument("--target", required=True, help="the directory to restore into")
    restore_cmd.add_argument("--force", action="store_true", help="restore into a non-empty directory")
    restore_cmd.add_argument(
        "--keep-setuid", action="store_true", help="keep setuid/setgid bits of restored files (dropped by default)"
    )
    prune_cmd = commands.add_parser("prune", help="delete archives beyond system.backup.keep")
    prune_cmd.add_argument("--dry-run", action="store_true", help="print what would be deleted")
    commands.add_parser("drill", help="restore the newest archive into a scratch folder and compare its manifest")
    sched = commands.add_parser("schedule", help="the loop: one backup a day at system.backup.time")
    when = sched.add_mutually_exclusive_group()
    when.add_argument("--at", metavar="HH:MM[:SS]", help="another time of day than system.backup.time")
    when.add_argument("--every", type=float, metavar="SECONDS", help="run every SECONDS instead (for tests)")
    args = parser.parse_args(argv or ["create"])
    args.command = args.command or "create"
    return args


def dispatch(args: argparse.Namespace) -> int:
    config = load_config()
    if args.command == "create":
        return run_create(config, show_progress=sys.stderr.isatty())
    if args.command == "verify":
        return run_verify_offsite(config, args.archive) if args.offsite else run_verify(config, args.archive)
    if args.command == "list":
        return run_list_offsite(config, args.json) if args.offsite else run_list(config, args.json)
    if args.command == "restore" and args.offsite:
        return run_restore_offsite(config, args.archive, args.target, args.force, args.keep_setuid)
    if args.command == "restore":
        return run_restore(args.archive, args.target, args.force, args.keep_setuid)
    if args.command == "drill":
        return run_drill(config)
    if args.command == "prune":
        return run_prune(config, args.dry_run)
    return run_schedule(config, args.at, args.every)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s backup %(levelname)s %(message)s", stream=sys.stderr)
    if args.command != "schedule":
        signal.signal(signal.SIGTERM, TERMINATION.handler)
    try:
        return dispatch(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as exc:
        print(f"backup_script.py: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (BackupError, offsite.OffsiteError) as exc:
        print(f"backup_script.py: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, tarfile.TarError) as exc:  # one line naming the problem, never a traceback
        print(f"backup_script.py: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (Terminated, KeyboardInterrupt):
        print("backup_script.py: interrupted; nothing partial was left", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
