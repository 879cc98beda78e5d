"""The manifest inside each archive: every member's name, type, size, mode and sha256, the served commit, the config.

    writer = ManifestWriter()
    writer.add(tarinfo, sha256_hex_or_None)          # once per member, as it is archived
    info, data = writer.finish(header(config))       # the manifest member, added to the archive last
    problems = compare_tree(restored_root, read_manifest(restored_root))

The manifest is the member MANIFEST_NAME (`.hello-backup/manifest.json`, JSON, mode 0600), the last one of the
archive, so it is written after every file was hashed on its way into the archive (no second read of the tree).
Its entries go to a temporary file meanwhile, so memory stays flat however many files there are. The same folder
holds STAGING_NAME, what the system.backup.hooks.before commands wrote. A restore brings the folder back; the
drill compares the restored tree with it, and "Rebuilding a host" (README) reads the commit from it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

from hello.config import RunFiles
from hello.git import head_commit

MANIFEST_DIR = ".hello-backup"  # reserved: a source folder of this name at any depth is not archived
MANIFEST_NAME = f"{MANIFEST_DIR}/manifest.json"
STAGING_NAME = f"{MANIFEST_DIR}/staging"
FORMAT = 1


class ManifestError(Exception):
    """No readable manifest; str() says where."""


class HashingReader:
    """A file as tarfile reads it into the archive, hashed on the way."""

    def __init__(self, handle: BinaryIO, before_read: Callable[[], None] | None = None) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.before_read = before_read  # e.g. raises when the run was told to stop

    def read(self, size: int = -1) -> bytes:
        if self.before_read is not None:
            self.before_read()
        data = self.handle.read(size)
        self.digest.update(data)
        return data

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def entry(member: tarfile.TarInfo, sha256: str | None) -> dict[str, Any]:
    """What the manifest says of one archive member."""
    record: dict[str, Any] = {"name": member.name, "mode": member.mode}
    if member.isreg():
        record.update(type="file", size=member.size, sha256=sha256)
    elif member.isdir():
        record["type"] = "dir"
    elif member.issym():
        record.update(type="symlink", target=member.linkname)
    elif member.islnk():
        record.update(type="hardlink", target=member.linkname)
    else:
        record["type"] = "fifo"
    return record


class ManifestWriter:
    """Collects entries in a temporary file while the archive is written; finish() makes the member."""

    def __init__(self) -> None:
        self.entries: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed in finish()
        self.count = 0

    def add(self, member: tarfile.TarInfo, sha256: str | None) -> None:
        self.entries.write(("" if not self.count else ",\n") + json.dumps(entry(member, sha256)))
        self.count += 1

    def finish(self, head: dict[str, Any]) -> tuple[tarfile.TarInfo, BinaryIO]:
        """The manifest member and its data: the header's fields, then "entries"."""
        data = tempfile.TemporaryFile("w+b")  # noqa: SIM115 - the caller closes it
        text = io.TextIOWrapper(data, encoding="utf-8", write_through=True)
        text.write(json.dumps({**head, "format": FORMAT, "entry_count": self.count}, indent=1)[:-2])
        text.write(',\n "entries": [\n')
        self.entries.seek(0)
        shutil.copyfileobj(self.entries, text)
        text.write("\n ]\n}\n")
        text.detach()
        self.entries.close()
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size, info.mode, info.mtime = data.tell(), 0o600, int(time.time())
        data.seek(0)
        return info, data


def folder_member(name: str) -> tarfile.TarInfo:
    """A 0700 directory member for the archive's own folders."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, int(time.time())
    return info


def served_commit(config: dict[str, Any]) -> str:
    """The commit the running server reports, else the source checkout's HEAD, else HELLO_COMMIT, else unknown."""
    files = RunFiles(Path(config["run_dir"]))
    if files.running_pid() and files.read_state().get("commit"):
        return str(files.read_state()["commit"])
    return head_commit(Path(config["backup"]["source"])) or os.environ.get("HELLO_COMMIT") or "unknown"


def header(config: dict[str, Any], hooks: list[str]) -> dict[str, Any]:
    """What a manifest records besides its entries: when, where from, the commit served, the config used."""
    config_file = Path(config["config_file"])
    try:
        config_text = config_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        config_text = None
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "source": config["backup"]["source"],
        "commit": served_commit(config),
        "config_file": str(config_file),
        "config": config_text,
        "hooks": hooks,
    }


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a restored tree."""
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (an archive made before manifests existed?)") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable manifest: {exc}") from None
    entries = manifest.get("entries") if isinstance(manifest, dict) else None
    if manifest.get("format") != FORMAT or not isinstance(entries, list):
        raise ManifestError(f"{path}: not a manifest of format {FORMAT}")
    return manifest


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _problem(root: Path, record: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> str | None:
    """How the restored path differs from its record, or None."""
    path = root / record["name"]
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "missing"
    kind = record["type"]
    if kind == "symlink":
        if not stat.S_ISLNK(info.st_mode):
            return "not a symbolic link"
        target = os.readlink(path)
        return None if target == record["target"] else f"links to {target!r}, expected {record['target']!r}"
    if stat.S_IMODE(info.st_mode) != record["mode"]:
        return f"mode {stat.S_IMODE(info.st_mode):04o}, expected {record['mode']:04o}"
    if kind == "dir":
        return None if stat.S_ISDIR(info.st_mode) else "not a directory"
    if kind == "fifo":
        return None if stat.S_ISFIFO(info.st_mode) else "not a FIFO"
    if kind == "hardlink":
        record = by_name.get(record["target"], {})
        if record.get("type") != "file":
            return "hard link to a file the manifest does not list"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size != record["size"]:
        return f"size {info.st_size}, expected {record['size']}"
    if _sha256(path) != record["sha256"]:
        return "content differs (sha256)"
    return None


def compare_tree(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Every difference between a restored tree and its manifest, one line each ("name: what"); [] if none."""
    records = manifest["entries"]
    by_name = {record["name"]: record for record in records}
    problems = [f"{r['name']}: {problem}" for r in records if (problem := _problem(root, r, by_name))]
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            relative = (Path(folder) / name).relative_to(root).as_posix()
            if relative not in by_name and relative != MANIFEST_NAME:
                problems.append(f"{relative}: not in the manifest")
    return problems
