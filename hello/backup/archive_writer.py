"""Writing an archive: the source tree, the hooks' staging folder and the manifest streamed into one gzip tar.

    digest, size = write_archive(source, temp, patterns, skip, Progress(show), staging, head)

Entries are walked depth first in name order without following a link; excluded names (fnmatch, any depth)
are skipped with all they contain, and so is every entry in `skip` (by device and inode: the destination, the
secret files config.yaml names). Compression is
gzip-compatible, by ISA-L (python-isal) in background threads. SIGTERM while writing is deferred (Termination).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import grp
import hashlib
import logging
import os
import pwd
import stat
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from isal import igzip_threaded

from hello.backup.manifest import MANIFEST_DIR, STAGING_NAME, HashingReader, ManifestWriter, folder_member
from hello.backup.naming import CHUNK, BackupError

log = logging.getLogger("backup")

COMPRESS_LEVEL = 2  # ISA-L level 0-3; 2 compresses about as well as gzip -6 at many times its speed (bench_backup)
COMPRESS_THREADS = 2  # compressor threads beside the reading thread: faster than one even on 2 cores (bench_backup)
PROGRESS_AFTER = 1.0  # seconds before progress appears on a terminal, so quick runs stay quiet


class Terminated(Exception):
    """SIGTERM during a one-shot command: clean up and exit 1."""


class Termination:
    """SIGTERM raised as Terminated: at once, except while isal's threaded compressor runs.

    An exception raised between the steps of its queue bookkeeping leaves its close() waiting forever in
    Queue.join (seen: a SIGTERMed backup that never ended). While the archive is written the signal is only
    noted, and raised at the next read of the source or between members (raise_if_terminated): in the main
    thread, outside isal, so the compressor is closed cleanly and the partial file removed.
    """

    def __init__(self) -> None:
        self.deferring = False
        self.pending = False

    def handler(self, _signum: int, _frame: object) -> None:
        if self.deferring:
            self.pending = True
            return
        raise Terminated("terminated by SIGTERM")

    def raise_if_terminated(self) -> None:
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
        self.raise_if_terminated()


TERMINATION = Termination()


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
    skipped_inodes = {inode for _device, inode in skip}  # DirEntry.inode() costs no system call

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
                info = entry.stat(follow_symlinks=False) if entry.inode() in skipped_inodes else None
            except FileNotFoundError:
                continue
            if info is not None and (info.st_dev, info.st_ino) in skip:
                log.debug("skipping %s: the backup destination or a secret file", path)
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
    TERMINATION.raise_if_terminated()
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
            reader = HashingReader(handle, before_read=TERMINATION.raise_if_terminated)
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
