"""Restoring an archive into a folder while changing nothing outside it, whatever the archive holds.

    from hello.backup.restore import restore
    done = restore(lambda: open_tar_stream(path), Path("restored"), run_dir=run, label=str(path), force=False)
    done.members, done.kept       # member count; where the archive's own .hello-backup/ folder went (or None)
    done = restore_archive(config, path, "restored", force=False, keep_setid=False)   # checksum first, errors
                                  # as the backup's (UsageError, BackupError): what `backup_script.py restore` runs

How the promise is kept: members are written one by one into a new folder (0700) beside the target, through
folder file descriptors, with checks against what is on disk rather than a model of it:

- every folder on a member's way is opened with O_NOFOLLOW | O_DIRECTORY from the one before it, so a symbolic
  link (from the archive or planted) is never followed while writing: a member below a link is refused;
- files are created with O_CREAT | O_EXCL | O_NOFOLLOW and their attributes set through that descriptor;
  symbolic links, fifos and hard links are made with the *at calls (linkat without AT_SYMLINK_FOLLOW), so
  a hard link can only name something already in the private folder, reached without following a link;
- a hard link carries no attributes of its own (it names a file restored before it, which has them);
- absolute names, `..` in a name or a hard link, devices and unknown member types are refused;
- once every member is written, the finished tree is walked: every symbolic link is followed on disk, step
  by step as the kernel would, and must stay inside the folder at every step (so also after the rename);
  every multiply linked file must have all its names inside;
- setuid and setgid bits are dropped unless keep_setid (`restore --keep-setuid`); owners are restored only
  when running as root.

The tree comes back as it was: the archive's own folder (MANIFEST_DIR: the manifest, what the backup hooks
wrote) is written apart, into <run_dir>/restore/<key>.backup, not into the target.

Only then does the new folder take the target's place: renamed over a missing or empty target or, with force,
swapped in by two renames (target -> `.<name>.replaced-*`, new folder -> target).

What a restore reads back lives in the private <run_dir>/restore (0700, ours; hello.base.files.private_dir), named by
a hash of the target's resolved path (State): the lock, and the journal, which records each folder the restore
makes beside the target (a random name, recorded before the folder exists, then its device and inode) and which
folder the target was. A restore killed between the two renames leaves the target missing; the next restore
into that target (`recover`, run first under the same lock) completes it and says so. Recovery touches only a
folder the journal names, with a name a restore makes, and only while lstat shows it is that folder (ours, same
device and inode): nothing planted beside the target is ever read, followed, changed or deleted. Trees are
deleted through folder descriptors (O_NOFOLLOW), never through a link.

Written against Python 3.11's tarfile (TarFile.next, extractfile, TarInfo): its extraction (and the PEP 706
filters, which had bypasses of this very kind before 3.11.13) is not used.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import hashlib
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import string
import tarfile
import tempfile
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hello.backup.archive import open_tar_stream
from hello.backup.manifest import MANIFEST_DIR
from hello.backup.naming import BackupError, UsageError, check_checksum
from hello.base.files import NotPrivate, fsync_dir, private_dir, write_atomically
from hello.base.locks import job_lock

log = logging.getLogger("restore")

SETID = stat.S_ISUID | stat.S_ISGID
MAX_LINK_HOPS = 40  # Linux follows at most 40 symbolic links in one lookup: a longer chain leads nowhere
CHUNK = 1 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FIFO_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC  # opening a fifo to read never blocks so

STATE_FOLDER = "restore"  # in run_dir: the journals, locks and kept manifests of restores
JOURNAL_FORMAT = 2
OpenArchive = Callable[[], AbstractContextManager[tarfile.TarFile]]


class RestoreError(Exception):
    """The restore failed and the target was left as it was (exit 1); str() says what and where."""


class Refused(Exception):
    """A member that must not be restored; str() says why."""


class TargetError(Exception):
    """The target cannot be restored into as asked (exit 2): not a folder, or not empty without force."""


# --- names ---


def _name_parts(name: str, what: str) -> tuple[str, ...]:
    """The components of a name inside the target; Refused for absolute names and any '..'."""
    if name.startswith("/"):
        raise Refused(f"{what} is an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise Refused(f"{what} has '..' in it")
    return parts


# --- extraction into the private folder ---


@functools.lru_cache(maxsize=256)
def _uid(name: str, fallback: int) -> int:
    try:
        return pwd.getpwnam(name).pw_uid if name else fallback
    except KeyError:
        return fallback


@functools.lru_cache(maxsize=256)
def _gid(name: str, fallback: int) -> int:
    try:
        return grp.getgrnam(name).gr_gid if name else fallback
    except KeyError:
        return fallback


def _lstat_at(name: str, folder: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None


class Extractor:
    """Writes members one by one below root, never following a symbolic link, refusing what is unsafe."""

    def __init__(self, tar: tarfile.TarFile, root: Path, *, keep_setid: bool) -> None:
        self.tar, self.root, self.keep_setid = tar, root, keep_setid
        self.as_root = os.geteuid() == 0
        self.folders: dict[tuple[str, ...], tarfile.TarInfo | None] = {}  # None: made for a member below it
        self.cached: tuple[tuple[str, ...], int] | None = None  # the last folder used, kept open

    def close(self) -> None:
        if self.cached is not None:
            os.close(self.cached[1])
            self.cached = None

    @contextlib.contextmanager
    def folder(self, parts: tuple[str, ...], *, create: bool) -> Iterator[int]:
        """An fd of root/parts reached one O_NOFOLLOW step at a time; missing folders are made if create."""
        fd = os.open(self.root, DIR_FLAGS)
        try:
            for depth, part in enumerate(parts):
                try:
                    inner = os.open(part, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise Refused(f"{'/'.join(parts[: depth + 1])!r} was not restored before it") from None
                    os.mkdir(part, 0o700, dir_fd=fd)
                    self.folders.setdefault(parts[: depth + 1], None)
                    inner = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    info = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a folder"
                    raise Refused(f"its folder {'/'.join(parts[: depth + 1])!r} is {kind}") from None
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    def parent_of(self, parts: tuple[str, ...]) -> int:
        """The (cached) fd of the folder holding parts; folders are never replaced, so a cached fd stays right."""
        folder = parts[:-1]
        if self.cached is not None and self.cached[0] == folder:
            return self.cached[1]
        with self.folder(folder, create=True) as fd:
            kept = os.dup(fd)
        self.close()
        self.cached = (folder, kept)
        return kept

    def add(self, member: tarfile.TarInfo) -> None:
        """Write one member; raise Refused if it must not be restored."""
        if member.ischr() or member.isblk():
            raise Refused("device files are not restored")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk() or member.isfifo()):
            raise Refused(f"unsupported member type {member.type!r}")
        parts = _name_parts(member.name, "its name")
        if not parts:
            if member.isdir():
                return  # the target itself: it keeps the attributes of the folder it replaces
            raise Refused("it has no name")
        if member.islnk():
            self.hard_link(member, parts)
            return
        folder, name = self.parent_of(parts), parts[-1]
        self.make_room(folder, name, for_folder=member.isdir())
        if member.isdir():
            if _lstat_at(name, folder) is None:
                os.mkdir(name, 0o700, dir_fd=folder)  # attributes last (finish), so it can be filled first
            self.folders[parts] = member
        elif member.isreg():
            fd = os.open(name, FILE_FLAGS, 0o600, dir_fd=folder)
            try:
                source = self.tar.extractfile(member)
                with open(fd, "wb", closefd=False) as out:
                    shutil.copyfileobj(source, out, CHUNK)
                self.set_attrs(fd, member)
            finally:
                os.close(fd)
        elif member.issym():
            if member.linkname.startswith("/"):
                raise Refused(f"symbolic link to an absolute path {member.linkname!r}")
            os.symlink(member.linkname, name, dir_fd=folder)
            if self.as_root:
                os.chown(name, self.uid(member), self.gid(member), dir_fd=folder, follow_symlinks=False)
            os.utime(name, (member.mtime, member.mtime), dir_fd=folder, follow_symlinks=False)
        else:  # fifo
            os.mkfifo(name, 0o600, dir_fd=folder)
            fd = os.open(name, FIFO_FLAGS, dir_fd=folder)
            try:
                self.set_attrs(fd, member)
            finally:
                os.close(fd)

    def make_room(self, folder: int, name: str, *, for_folder: bool) -> None:
        """A later member replaces an earlier one of that name (as tar does), but never a folder."""
        info = _lstat_at(name, folder)
        if info is None or (for_folder and stat.S_ISDIR(info.st_mode)):
            return
        if stat.S_ISDIR(info.st_mode):
            raise Refused("it would replace a folder restored before it")
        os.unlink(name, dir_fd=folder)

    def hard_link(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        """A second name for a file restored before it, reached without following any link."""
        source = _name_parts(member.linkname, f"its hard link target {member.linkname!r}")
        if not source:
            raise Refused(f"hard link to {member.linkname!r}")
        with self.folder(source[:-1], create=False) as source_folder:
            info = _lstat_at(source[-1], source_folder)
            if info is None:
                raise Refused(f"hard link to {member.linkname!r}, which was not restored before it")
            if stat.S_ISDIR(info.st_mode):
                raise Refused(f"hard link to the folder {member.linkname!r}")
            if source == parts:
                return  # a link to itself: nothing to do
            folder = self.parent_of(parts)
            self.make_room(folder, parts[-1], for_folder=False)
            # follow_symlinks=False: linkat without AT_SYMLINK_FOLLOW, so a link to a symbolic link is a
            # second symbolic link (checked with all others in check_tree), never the file it points to.
            os.link(source[-1], parts[-1], src_dir_fd=source_folder, dst_dir_fd=folder, follow_symlinks=False)

    def uid(self, member: tarfile.TarInfo) -> int:
        return _uid(member.uname, member.uid)

    def gid(self, member: tarfile.TarInfo) -> int:
        return _gid(member.gname, member.gid)

    def mode(self, member: tarfile.TarInfo) -> int:
        mode = stat.S_IMODE(member.mode)
        return mode if self.keep_setid else mode & ~SETID

    def set_attrs(self, fd: int, member: tarfile.TarInfo) -> None:
        if self.as_root:
            os.fchown(fd, self.uid(member), self.gid(member))  # before chmod: chown clears setuid bits
        os.fchmod(fd, self.mode(member))
        os.utime(fd, (member.mtime, member.mtime))

    def finish(self) -> None:
        """Folder attributes, deepest first (so read-only folders could be filled), after check_tree."""
        self.close()
        umask = os.umask(0)
        os.umask(umask)
        for parts in sorted(self.folders, key=len, reverse=True):
            member = self.folders[parts]
            with self.folder(parts, create=False) as fd:
                if member is None:
                    os.fchmod(fd, 0o777 & ~umask)  # as mkdir would have made it
                else:
                    self.set_attrs(fd, member)


def leads_inside(root: Path, link: tuple[str, ...]) -> bool:
    """Whether the symbolic link root/link, followed on disk step by step as the kernel would, stays inside root
    at every step and ends (a loop does not). Past a missing name the rest is judged by its name alone (stricter
    than the kernel)."""
    target = os.readlink(os.path.join(root, *link))
    if target.startswith("/"):
        return False
    resolved = list(link[:-1])
    pending = deque(target.split("/"))
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return False
            resolved.pop()
            continue
        try:
            info = os.lstat(os.path.join(root, *resolved, part))
        except OSError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(info.st_mode):
            resolved.append(part)
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            return False  # the kernel gives up here (ELOOP): refused, so every restored link resolves inside
        inner = os.readlink(os.path.join(root, *resolved, part))
        if inner.startswith("/"):
            return False
        pending.extendleft(reversed(inner.split("/")))
    return True


def _raise(exc: OSError) -> None:
    raise exc


def check_tree(root: Path, *, keep_setid: bool) -> None:
    """Raise Refused unless, on disk under root: every symbolic link stays inside, every multiply linked file has
    all its names inside, and no file is setuid or setgid (unless keep_setid)."""
    names: Counter[tuple[int, int]] = Counter()
    links: dict[tuple[int, int], tuple[int, str]] = {}
    for folder, dirs, files in os.walk(root, onerror=_raise):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                if not leads_inside(root, tuple(rel.split("/"))):
                    raise Refused(f"symbolic link {rel!r} -> {os.readlink(path)!r} leads outside the target or loops")
                continue
            if not keep_setid and info.st_mode & SETID:
                raise Refused(f"{rel!r} is setuid or setgid")  # never: Extractor drops those bits
            if not stat.S_ISDIR(info.st_mode) and info.st_nlink > 1:
                inode = (info.st_dev, info.st_ino)
                names[inode] += 1
                links[inode] = (info.st_nlink, rel)
    for inode, count in names.items():
        nlink, rel = links[inode]
        if count != nlink:
            raise Refused(f"{rel!r} has {nlink} names, only {count} of them in the target")


def extract(
    tar: tarfile.TarFile, root: Path, *, keep_setid: bool = False, apart: Path | None = None
) -> tuple[int, int]:
    """Write every member of tar into the new, empty, private folder root and check the result; with apart, the
    members in the archive's own folder (MANIFEST_DIR) go below apart instead. Return the member count and how
    many went apart. Raise Refused (naming the member) for anything that must not be restored."""
    extractors = [Extractor(tar, root, keep_setid=keep_setid)]
    if apart is not None:
        extractors.append(Extractor(tar, apart, keep_setid=keep_setid))
    count = kept = 0
    try:
        while (member := tar.next()) is not None:
            tar.members.clear()  # memory stays flat however many members there are
            count += 1
            try:
                own = apart is not None and _name_parts(member.name, "its name")[:1] == (MANIFEST_DIR,)
                kept += own
                extractors[own].add(member)
            except Refused as exc:
                raise Refused(f"member {member.name!r}: {exc}") from None
            except (OverflowError, ValueError) as exc:
                raise Refused(f"member {member.name!r}: {exc}") from None
    finally:
        for extractor in extractors:
            extractor.close()
    for extractor in extractors:
        check_tree(extractor.root, keep_setid=keep_setid)
    for extractor in extractors:
        extractor.finish()
    return count, kept


# --- deleting a tree without following a link ---


def _open_folder_at(folder: int, name: str) -> int:
    """An fd of the folder name in folder, never through a symbolic link (ELOOP/ENOTDIR); a folder this user
    cannot read (mode 0) is made 0700 first, through an O_PATH descriptor of that very folder."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=folder)
    except PermissionError:
        pass
    path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    try:
        os.chmod(f"/proc/self/fd/{path_fd}", 0o700)  # the inode the descriptor holds: no name is looked up again
    finally:
        os.close(path_fd)
    return os.open(name, DIR_FLAGS, dir_fd=folder)


def _empty(fd: int) -> None:
    """Delete everything in the folder fd, depth first, by names relative to folder descriptors only."""
    if os.geteuid() != 0 and stat.S_IMODE(os.fstat(fd).st_mode) & 0o700 != 0o700:
        os.fchmod(fd, 0o700)  # its entries can be listed and deleted (root needs no bits)
    for entry in list(os.scandir(fd)):
        if not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.name, dir_fd=fd)
            continue
        try:
            inner = _open_folder_at(fd, entry.name)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            os.unlink(entry.name, dir_fd=fd)  # replaced by a link meanwhile: the link goes, not what it names
            continue
        try:
            _empty(inner)
        finally:
            os.close(inner)
        os.rmdir(entry.name, dir_fd=fd)


def _identity(info: os.stat_result) -> list[int]:
    return [info.st_dev, info.st_ino]


def _remove_at(parent: int, name: str, expect: list[int] | None = None) -> bool:
    """Delete the folder name in parent and all it holds, never following a link; with expect, only if it is
    still that folder (device, inode). Return whether it was deleted (False: missing or another folder)."""
    try:
        fd = _open_folder_at(parent, name)
    except FileNotFoundError:
        return False
    try:
        if expect is not None and _identity(os.fstat(fd)) != expect:
            log.warning("%s is not the folder the restore made: left alone", name)
            return False
        _empty(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)
    return True


def remove_tree(path: Path) -> None:
    """Delete a folder and all it holds (restored read-only folders included), never following a link in it."""
    parent = os.open(Path(path).parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove_at(parent, Path(path).name)
    finally:
        os.close(parent)


def make_parents(folder: Path) -> list[Path]:
    """mkdir -p folder; return the folders it made, deepest first (to remove them again on failure)."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir()
    return missing


# --- the private state of the restores into one target: <run_dir>/restore/<key>.* ---


@dataclass(frozen=True)
class State:
    """Where a restore into target keeps what it reads back: in the private folder (0700, ours), named by a
    hash of the target's resolved path, never beside the target."""

    folder: Path
    key: str

    @classmethod
    def of(cls, run_dir: Path, target: Path) -> State:
        folder = private_dir(private_dir(Path(run_dir), readable=True) / STATE_FOLDER)
        return cls(folder, hashlib.sha256(os.fsencode(target)).hexdigest()[:32])

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.key}.lock"

    @property
    def journal(self) -> Path:
        return self.folder / f"{self.key}.json"

    @property
    def kept(self) -> Path:
        """The archive's own folder (MANIFEST_DIR: manifest, hooks' output) of the last restore into target."""
        return self.folder / f"{self.key}.backup"

    def incoming(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{self.key}.incoming-", dir=self.folder))

    def sweep(self) -> None:
        """Incoming folders a killed restore left (ours: the folder is private)."""
        for entry in os.scandir(self.folder):
            if entry.name.startswith(f"{self.key}.incoming-") and entry.is_dir(follow_symlinks=False):
                remove_tree(Path(entry.path))


# Staged folders beside the target: a name only a restore makes (the target's name, cut so the whole fits
# NAME_MAX; the kind; 8 random characters), recorded in the journal before it exists.
STAGED_KINDS = ("restoring", "replaced")


def _staged_prefix(target: Path, kind: str) -> str:
    return f".{target.name[:200]}.{kind}-"


def _staged_name(target: Path, kind: str) -> str:
    return _staged_prefix(target, kind) + "".join(
        secrets.choice(string.ascii_lowercase + string.digits) for _ in "8" * 8
    )


def _is_staged_name(name: object, target: Path, kind: str) -> bool:
    return (
        isinstance(name, str)
        and re.fullmatch(re.escape(_staged_prefix(target, kind)) + "[a-z0-9]{8}", name) is not None
    )


class Journal:
    """The journal of one restore into target: which folders it made beside the target (name, device, inode),
    and which folder the target was, written (atomically, 0600) before each step that a kill could interrupt."""

    def __init__(self, state: State, target: Path, parent: int) -> None:
        self.state, self.target, self.parent = state, target, parent
        self.record: dict[str, Any] = {
            "format": JOURNAL_FORMAT,
            "target": str(target),
            "parent": _identity(os.fstat(parent)),
            "uid": os.geteuid(),
        }

    def write(self) -> None:
        write_atomically(self.state.journal, json.dumps(self.record).encode() + b"\n", 0o600)
        fsync_dir(self.state.folder)

    def remove(self) -> None:
        self.state.journal.unlink(missing_ok=True)

    def make_folder(self, kind: str) -> str:
        """A new empty folder beside the target (0700, ours), journaled before and after it is made."""
        for _attempt in range(100):
            name = _staged_name(self.target, kind)
            self.record[kind] = {"name": name, "id": None}
            self.write()
            try:
                os.mkdir(name, 0o700, dir_fd=self.parent)
            except FileExistsError:
                continue  # someone's guess, or ours: another name
            self.record[kind]["id"] = _identity(os.stat(name, dir_fd=self.parent, follow_symlinks=False))
            self.write()
            return name
        raise FileExistsError(errno.EEXIST, f"no free name for a folder beside {self.target}")


def _lstat_name(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _read_journal(state: State, target: Path, parent: int) -> dict[str, Any] | None:
    """The journal of a killed restore into target, checked: only what this kit writes is accepted."""
    try:
        text = state.journal.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RestoreError(f"{state.journal}: unreadable restore journal ({exc}); delete it to restore again") from None
    try:
        record = json.loads(text)
        problem = _journal_problem(record, target, parent)
    except (ValueError, RecursionError):
        problem = "not JSON"
    if problem:
        raise RestoreError(
            f"{state.journal}: not a journal of a restore into {target} ({problem}); check beside "
            f"{target} by hand, then delete it"
        ) from None
    return record


def _is_identity(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(type(v) is int and v >= 0 for v in value)


def _journal_problem(record: object, target: Path, parent: int) -> str | None:
    """What makes record something other than a journal this kit wrote for target, or None."""
    if not isinstance(record, dict) or record.get("format") != JOURNAL_FORMAT:
        return f"not of format {JOURNAL_FORMAT}"
    if record.get("target") != str(target):
        return "another target"
    if not _is_identity(record.get("parent")) or record["parent"] != _identity(os.fstat(parent)):
        return f"{target.parent} is not the folder it was"
    if record.get("uid") != os.geteuid():
        return "written by another user"
    if "restoring" not in record:
        return "no folder recorded"
    for kind in STAGED_KINDS:
        folder = record.get(kind)
        if folder is None and kind == "replaced":
            continue
        if not isinstance(folder, dict) or not _is_staged_name(folder.get("name"), target, kind):
            return f"{kind!r}: not a folder name a restore makes"
        if folder.get("id") is not None and not _is_identity(folder["id"]):
            return f"{kind!r}: not a device and inode"
    if "replaced" in record and not _is_identity(record.get("target_id")):
        return "'target_id': not a device and inode"
    return None


def _matches(info: os.stat_result | None, identity: list[int] | None, *, ours: bool = True) -> bool:
    """info is the folder of that identity (and, if ours, owned by us: a folder we made)."""
    return (
        info is not None
        and identity is not None
        and stat.S_ISDIR(info.st_mode)
        and _identity(info) == identity
        and (not ours or info.st_uid == os.geteuid())
    )


def recover(state: State, target: Path, parent: int) -> list[str]:
    """Finish or undo what a killed restore into target left (the caller holds the lock); return what was done.

    Only what the journal recorded is touched, and only if it still is that folder (lstat: a folder, ours, the
    same device and inode): a name planted beside the target, a link, another folder of that name are left alone.
    """
    state.sweep()
    record = _read_journal(state, target, parent)
    if record is None:
        return []
    new, old = record["restoring"], record.get("replaced")
    name = target.name
    now = _lstat_name(parent, name)
    new_info = _lstat_name(parent, new["name"])
    new_here = _matches(new_info, new["id"])
    target_is_new = _matches(now, new["id"])
    old_info = _lstat_name(parent, old["name"]) if old else None
    old_contents = old is not None and _matches(old_info, record["target_id"], ours=False)
    old_empty = old is not None and _matches(old_info, old["id"])
    done: list[str] = []
    if now is None and new_here and old_contents:
        os.rename(new["name"], name, src_dir_fd=parent, dst_dir_fd=parent)
        os.fsync(parent)
        _remove_at(parent, old["name"], record["target_id"])
        done.append(f"completed the restore into {target} that was killed between its two renames")
    elif now is None and old_contents:
        os.rename(old["name"], name, src_dir_fd=parent, dst_dir_fd=parent)
        done.append(f"undid the restore into {target} that was killed: its old contents are back")
    elif target_is_new:
        if old_contents:
            _remove_at(parent, old["name"], record["target_id"])
            done.append(f"finished the restore into {target} that was killed while deleting its old contents")
    elif old_contents:
        raise RestoreError(
            f"{state.journal}: the old contents of {target} are in {target.parent / old['name']} and {target} holds "
            "something else; check them by hand, then delete the journal"
        )
    else:
        if new_here:
            _remove_at(parent, new["name"], new["id"])
        elif new["id"] is None and new_info is not None and stat.S_ISDIR(new_info.st_mode):
            with contextlib.suppress(OSError):
                os.rmdir(new["name"], dir_fd=parent)  # made just before the kill: empty (rmdir never follows)
        done.append(f"undid the restore into {target} that was killed before its renames: it was never touched")
    made_old = old_empty or (old is not None and old["id"] is None and old_info is not None)
    if made_old and not old_contents and old_info is not None and stat.S_ISDIR(old_info.st_mode):
        with contextlib.suppress(OSError):
            os.rmdir(old["name"], dir_fd=parent)  # only ever an empty folder: never old contents
    os.fsync(parent)
    state.journal.unlink()
    fsync_dir(state.folder)
    return done


# --- one restore ---


class Restored(NamedTuple):
    members: int  # every member of the archive
    kept: Path | None  # where the archive's own folder (MANIFEST_DIR) went instead of the target, if it had one
    kept_members: int  # how many of the members are in it


def _match_folder(parent: int, name: str, identity: list[int], old: os.stat_result | None) -> None:
    """The new folder as the old target was (or as mkdir would make it), not 0700; through its own descriptor."""
    fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    try:
        if _identity(os.fstat(fd)) != identity:
            raise RestoreError(f"{name} beside the target is not the folder the restore made")
        if old is not None:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, old.st_uid, old.st_gid)
            os.fchmod(fd, stat.S_IMODE(old.st_mode))
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o777 & ~umask)
    finally:
        os.close(fd)


def _swap(journal: Journal, new: str, old: os.stat_result) -> None:
    """The target's contents replaced by the new folder's in two renames, journaled so that a kill between them
    is finished by the next restore (recover); any error puts the old contents back."""
    parent, name = journal.parent, journal.target.name
    journal.record["target_id"] = _identity(old)
    aside = journal.make_folder("replaced")
    moved_aside = False
    try:
        os.rename(name, aside, src_dir_fd=parent, dst_dir_fd=parent)  # over the empty folder just made
        moved_aside = True
        os.rename(new, name, src_dir_fd=parent, dst_dir_fd=parent)  # over the now missing target
    except BaseException:
        if moved_aside:
            os.rename(aside, name, src_dir_fd=parent, dst_dir_fd=parent)  # the old contents back in place
        with contextlib.suppress(OSError):
            os.rmdir(aside, dir_fd=parent)  # only ever removes it empty: the folder made, never old contents
        raise
    os.fsync(parent)
    try:
        _remove_at(parent, aside, journal.record["target_id"])
    except OSError as exc:
        log.warning("restored into %s, but could not delete its old contents at %s: %s", journal.target, aside, exc)


def _keep_apart(state: State, incoming: Path, kept_members: int) -> Path | None:
    """The archive's own folder of this restore in place of the last one's."""
    with contextlib.suppress(FileNotFoundError):
        remove_tree(state.kept)
    if not kept_members:
        remove_tree(incoming)
        return None
    os.rename(incoming, state.kept)
    return state.kept


def _restore_into(
    open_archive: OpenArchive, state: State, journal: Journal, *, replace: bool, keep_setid: bool
) -> Restored:
    parent, target = journal.parent, journal.target
    old = _lstat_name(parent, target.name)
    old = old if old is not None and stat.S_ISDIR(old.st_mode) else None
    new, incoming = None, state.incoming()
    try:
        new = journal.make_folder("restoring")
        with open_archive() as tar:
            count, kept_members = extract(tar, target.parent / new, keep_setid=keep_setid, apart=incoming)
        _match_folder(parent, new, journal.record["restoring"]["id"], old)
        if replace and old is not None:
            _swap(journal, new, old)
        else:
            os.rename(new, target.name, src_dir_fd=parent, dst_dir_fd=parent)  # over a missing or empty target
            os.fsync(parent)
    except BaseException:
        if new is not None:
            with contextlib.suppress(OSError):
                _remove_at(parent, new, journal.record["restoring"]["id"])
        with contextlib.suppress(OSError):
            remove_tree(incoming)
        raise
    finally:
        journal.remove()
    try:  # the target is restored: from here a failure costs only the kept manifest, said as such
        kept = _keep_apart(state, incoming, kept_members)
    except OSError as exc:
        log.warning(
            "restored into %s, but could not keep the archive's %s in %s: %s", target, MANIFEST_DIR, state.kept, exc
        )
        with contextlib.suppress(OSError):
            remove_tree(incoming)
        kept = None
    return Restored(count, kept, kept_members)


def restore(
    open_archive: OpenArchive,
    target: Path,
    *,
    run_dir: Path,
    label: str,
    force: bool,
    keep_setid: bool = False,
    say: Callable[[str], None] = print,
) -> Restored:
    """Restore the archive open_archive() reads as target, all or nothing.

    Raises TargetError (target not a folder, or not empty without force), RestoreError (failed or refused; the
    target as it was), hello.base.locks.LockHeld (another restore into target runs), hello.base.files.NotPrivate
    (run_dir cannot hold private state). What recover() finished or undid first is passed to say.
    """
    final = Path(os.path.realpath(target))  # a target given through a link: the folder it names
    if Path(os.path.realpath(run_dir)).is_relative_to(final):
        raise TargetError(f"--target {target}: it holds system.run_dir {run_dir}, where restores keep their state")
    state = State.of(Path(run_dir), final)
    made = make_parents(final.parent)
    done = False
    try:
        with job_lock(state.lock):
            parent = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for note in recover(state, final, parent):
                    say(note)
                now = _lstat_name(parent, final.name)
                if now is not None and not stat.S_ISDIR(now.st_mode):
                    raise TargetError(f"--target {target}: not a directory")
                replace = now is not None and any(os.scandir(final))
                if replace and not force:
                    raise TargetError(f"--target {target}: not empty (add --force to replace its contents)")
                journal = Journal(state, final, parent)
                try:
                    result = _restore_into(open_archive, state, journal, replace=replace, keep_setid=keep_setid)
                except Refused as exc:
                    raise RestoreError(f"{label}: refusing to restore: {exc}; {target} was left as it was") from None
                except (OSError, tarfile.TarError, zlib.error, EOFError) as exc:
                    failed = f"restoring {label} into {target} failed ({exc})"
                    raise RestoreError(f"{failed}; {target} was left as it was") from None
            finally:
                os.close(parent)
            done = True
    finally:
        if not done:
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return result


def restore_archive(config: dict[str, Any], path: Path, target: str, *, force: bool, keep_setid: bool) -> Restored:
    """The checked restore of the project's archive at path (its checksum first); errors as the backup's own:
    UsageError (exit 2) for the target or run_dir, BackupError (exit 1) for a failed restore; LockHeld as is."""
    check_checksum(path)
    try:
        return restore(
            functools.partial(open_tar_stream, path),
            Path(target),
            run_dir=Path(config["run_dir"]),
            label=str(path),
            force=force,
            keep_setid=keep_setid,
        )
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    except RestoreError as exc:
        raise BackupError(str(exc)) from None
    except NotPrivate as exc:
        raise UsageError(f"system.run_dir: {exc}") from None
