"""Files the kit writes: atomic replacement, durable renames, and private folders only we can change."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make the names in directory (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NotPrivate(OSError):
    """A folder meant for the kit's private state is not a folder owned by this user; str() says what to fix."""


def private_dir(path: Path, *, readable: bool = False) -> Path:
    """path (and missing parents) as a folder owned by this user that no one else can change: mode 0700, or with
    readable only without group and other write. Never through a symbolic link at its end; NotPrivate if it is
    anything else (another user's folder, a link): the kit's private state is never kept there."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotPrivate(f"{path} is not a folder (a symbolic link?): move it away") from None
        raise
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise NotPrivate(f"{path} belongs to uid {info.st_uid}, not to this user: run as its owner, or move it")
        unwanted = 0o022 if readable else 0o077
        if info.st_mode & unwanted:
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~unwanted)
    finally:
        os.close(fd)
    return path


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace path with data in one step: readers see the old file or the new one, never a part.

    mode (less the umask) is the new file's from its creation on: 0o600 keeps a secret unreadable throughout.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()  # a leftover of a killed run would keep its old mode
        with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
