"""Reading an archive back: a gzip tar streamed front to back, and the full verify (checksum, then every byte).

    with open_tar_stream(path) as tar:
        for member in iter_members(tar): ...       # memory stays flat however many members there are
    verify_archive(path)                            # BackupError on the first problem; the member count

Decompression runs in a background thread (ISA-L, python-isal); the gzip trailer (CRC, length) is read too.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from isal import igzip_threaded

from hello.backup.naming import CHUNK, BackupError, check_checksum


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
