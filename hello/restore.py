"""Restoring an archive into a folder while changing nothing outside it, whatever the archive holds.

    from hello.restore import restore
    count = restore(lambda: open_tar_stream(path), Path("restored"), label=str(path), force=False)

How the promise is kept: members are written one by one into a private folder (mkdtemp, 0700) beside the
target, through folder file descriptors, with checks against what is on disk rather than a model of it:

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

Only then does the private folder take the target's place: renamed over a missing or empty target or,
with force, swapped in by two renames (target -> `.<name>.replaced-*`, private folder -> target). Before
those two renames a journal `.<name>.restore.json` names both folders; a restore killed between them leaves
the target missing, and the next restore into that target (`recover`, run first under the same lock)
completes it and says so. Other leftovers of a killed restore (a private folder, an empty aside folder) are
removed by the next restore, which holds `.<name>.restore.lock` beside the target while it runs.

Written against Python 3.11's tarfile (TarFile.next, extractfile, TarInfo): its extraction (and the PEP 706
filters, which had bypasses of this very kind before 3.11.13) is not used.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import json
import logging
import os
import pwd
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from hello.jobs import fsync_dir, job_lock, write_atomically

log = logging.getLogger("restore")

SETID = stat.S_ISUID | stat.S_ISGID
MAX_LINK_HOPS = 40  # Linux follows at most 40 symbolic links in one lookup: a longer chain leads nowhere
CHUNK = 1 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FIFO_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC  # opening a fifo to read never blocks so

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


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.restore.lock")


def journal_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.restore.json")


def _leftover_re(target: Path, kind: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(target.name)}\.{kind}-[a-z0-9_]{{8}}$")  # mkdtemp's 8 random characters


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


def extract(tar: tarfile.TarFile, root: Path, *, keep_setid: bool = False) -> int:
    """Write every member of tar into the new, empty, private folder root and check the result; return the
    member count. Raise Refused (naming the member) for anything that must not be restored."""
    extractor = Extractor(tar, root, keep_setid=keep_setid)
    count = 0
    try:
        while (member := tar.next()) is not None:
            tar.members.clear()  # memory stays flat however many members there are
            count += 1
            try:
                extractor.add(member)
            except Refused as exc:
                raise Refused(f"member {member.name!r}: {exc}") from None
            except (OverflowError, ValueError) as exc:
                raise Refused(f"member {member.name!r}: {exc}") from None
    finally:
        extractor.close()
    check_tree(root, keep_setid=keep_setid)
    extractor.finish()
    return count


# --- putting the private folder in the target's place ---


def remove_tree(path: Path) -> None:
    """Delete a folder and all it holds, restored read-only folders included."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, 0o700)
    for folder, dirs, _files in os.walk(path):
        for name in dirs:
            inner = os.path.join(folder, name)
            if not os.path.islink(inner):  # chmod follows links: never touch what a link points to
                os.chmod(inner, 0o700)  # before os.walk goes in: it must list it, rmtree must empty it
    shutil.rmtree(path)


def make_parents(folder: Path) -> list[Path]:
    """mkdir -p folder; return the folders it made, deepest first (to remove them again on failure)."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir()
    return missing


def _match_folder(temp: Path, old: os.stat_result | None) -> None:
    """The new folder as the old target was (or as mkdir would make it), not mkdtemp's 0700."""
    if old is not None:
        with contextlib.suppress(PermissionError):
            os.chown(temp, old.st_uid, old.st_gid)
        os.chmod(temp, stat.S_IMODE(old.st_mode))
    else:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o777 & ~umask)


def _swap(temp: Path, target: Path) -> None:
    """target's contents replaced by temp's in two renames, journaled so that a kill between them is finished
    by the next restore (recover); any error puts the old contents back."""
    parent = target.parent
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=parent))
    journal = journal_path(target)
    moved_aside = False
    try:
        write_atomically(journal, json.dumps({"new": temp.name, "old": aside.name}).encode() + b"\n")
        fsync_dir(parent)
        os.rename(target, aside)  # over the empty folder mkdtemp made
        moved_aside = True
        os.rename(temp, target)  # over the now missing target
    except BaseException:
        try:
            if moved_aside:
                os.rename(aside, target)  # the old contents back in place
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(aside)  # only ever removes it empty: mkdtemp's folder, never old contents
            journal.unlink(missing_ok=True)
        raise
    fsync_dir(parent)
    try:
        remove_tree(aside)
    except OSError as exc:
        log.warning("restored into %s, but could not delete its old contents at %s: %s", target, aside, exc)
    journal.unlink(missing_ok=True)


def recover(target: Path) -> list[str]:
    """Finish or undo what a killed restore into target left (the caller holds its lock); return what was done."""
    parent, done = target.parent, []
    journal = journal_path(target)
    if journal.exists():
        try:
            names = json.loads(journal.read_text())
            new, old = parent / names["new"], parent / names["old"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RestoreError(f"{journal}: unreadable restore journal ({exc}); check {parent} by hand") from None
        if not target.exists() and new.is_dir():
            os.rename(new, target)
            fsync_dir(parent)
            remove_tree(old)
            done.append(f"completed the restore into {target} that was killed between its two renames")
        elif not target.exists() and old.is_dir():
            os.rename(old, target)
            done.append(f"undid the restore into {target} that was killed: its old contents are back")
        elif target.exists() and not new.exists():
            if old.exists():
                remove_tree(old)
            done.append(f"finished the restore into {target} that was killed while deleting its old contents")
        elif old.is_dir() and any(os.scandir(old)):
            raise RestoreError(f"{journal}: both {new} and {old} hold files beside {target}; check them by hand")
        else:
            remove_tree(new)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(old)
            done.append(f"undid the restore into {target} that was killed before its renames: it was never touched")
        journal.unlink()
        fsync_dir(parent)
    restoring, replaced = _leftover_re(target, "restoring"), _leftover_re(target, "replaced")
    for entry in os.scandir(parent):
        path = Path(entry.path)
        if restoring.match(entry.name):
            remove_tree(path)
            done.append(f"removed {path}, left by a restore into {target} killed while extracting")
        elif replaced.match(entry.name):
            if any(os.scandir(path)):
                log.warning("%s holds files no journal accounts for: left alone, check it by hand", path)
            else:
                os.rmdir(path)
    return done


def _restore_into(open_archive: OpenArchive, target: Path, *, replace: bool, keep_setid: bool) -> int:
    old = target.stat() if target.is_dir() else None
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.restoring-", dir=target.parent))
    try:
        with open_archive() as tar:
            count = extract(tar, temp, keep_setid=keep_setid)
        _match_folder(temp, old)
        if replace:
            _swap(temp, target)
        else:
            os.rename(temp, target)  # over a missing or empty target
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(temp)
        raise
    with contextlib.suppress(OSError):
        fsync_dir(target.parent)
    return count


def restore(
    open_archive: OpenArchive,
    target: Path,
    *,
    label: str,
    force: bool,
    keep_setid: bool = False,
    say: Callable[[str], None] = print,
) -> int:
    """Restore the archive open_archive() reads as target, all or nothing; return the member count.

    Raises TargetError (target not a folder, or not empty without force), RestoreError (failed or refused; the
    target as it was), hello.jobs.LockHeld (another restore into target runs). What recover() finished or undid
    first is passed to say.
    """
    final = Path(os.path.realpath(target))  # a target given through a link: the folder it names
    made = make_parents(final.parent)
    done = False
    try:
        with job_lock(lock_path(final)):
            for note in recover(final):
                say(note)
            if final.exists() and not final.is_dir():
                raise TargetError(f"--target {target}: not a directory")
            replace = final.is_dir() and any(os.scandir(final))
            if replace and not force:
                raise TargetError(f"--target {target}: not empty (add --force to replace its contents)")
            try:
                count = _restore_into(open_archive, final, replace=replace, keep_setid=keep_setid)
            except Refused as exc:
                raise RestoreError(f"{label}: refusing to restore: {exc}; {target} was left as it was") from None
            except (OSError, tarfile.TarError, zlib.error, EOFError) as exc:
                failed = f"restoring {label} into {target} failed ({exc})"
                raise RestoreError(f"{failed}; {target} was left as it was") from None
            done = True
    finally:
        if not done:
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return count
