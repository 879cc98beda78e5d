"""The manifest inside each archive: every member's name, type, size, mode and sha256, the served commit, the config.

    writer = ManifestWriter()
    writer.add(tarinfo, sha256_hex_or_None)          # once per member, as it is archived
    info, data = writer.finish(header(config))       # the manifest member, added to the archive last
    problems = compare_tree(restored_root, read_manifest(restored_root))

The manifest is the member MANIFEST_NAME (`.hello-backup/manifest.json`, JSON, mode 0600), the last one of the
archive, so it is written after every file was hashed on its way into the archive (no second read of the tree).
Its entries go to a temporary file meanwhile, so memory stays flat however many files there are. The same folder
holds STAGING_NAME, what the system.backup.hooks.before commands wrote. A restore keeps the folder apart from the
restored tree (hello/backup/restore.py); the drill checks the entries (read_manifest) and compares the tree and that
folder with them, and "Rebuilding a host" (README) reads the commit from it.
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

from hello.base.config import RunFiles
from hello.base.git import head_commit

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


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest below folder (a restore's kept folder, or a tree holding MANIFEST_DIR), entries checked."""
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (an archive made before manifests existed?)") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{path}: unreadable manifest: {exc}") from None
    entries = manifest.get("entries") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(entries, list):
        raise ManifestError(f"{path}: not a manifest of format {FORMAT}")
    for number, record in enumerate(entries, 1):
        problem = entry_problem(record)
        if problem:
            raise ManifestError(f"{path}: entry {number}: {problem}")
    return manifest


ENTRY_TYPES = {"file", "dir", "symlink", "hardlink", "fifo"}


def _name_problem(name: object) -> str | None:
    """Why name cannot be a member's name inside the tree (as the restore refuses members), or None."""
    if not isinstance(name, str) or not name or "\0" in name:
        return "not a name"
    if name.startswith("/"):
        return f"{name!r} is an absolute path"
    if ".." in name.split("/"):
        return f"{name!r} has '..' in it"
    if not [part for part in name.split("/") if part not in ("", ".")]:
        return f"{name!r} names no member"
    return None


def entry_problem(record: object) -> str | None:
    """What is wrong with one manifest entry (the fields entry() writes, checked like archive members), or None."""
    if not isinstance(record, dict):
        return "not an object"
    problem = _name_problem(record.get("name"))
    if problem:
        return f"name: {problem}"
    kind = record.get("type")
    if kind not in ENTRY_TYPES:
        return f"{record['name']!r}: type {kind!r} is none of {', '.join(sorted(ENTRY_TYPES))}"
    mode = record.get("mode")
    if type(mode) is not int or not 0 <= mode <= 0o7777:
        return f"{record['name']!r}: mode {mode!r} is not a file mode"
    if kind == "file":
        size, digest = record.get("size"), record.get("sha256")
        if type(size) is not int or size < 0:
            return f"{record['name']!r}: size {size!r} is not a byte count"
        if not isinstance(digest, str) or len(digest) != 64 or set(digest) - set("0123456789abcdef"):
            return f"{record['name']!r}: sha256 {digest!r} is not a sha256"
    if kind == "symlink" and (not isinstance(record.get("target"), str) or not record["target"]):
        return f"{record['name']!r}: no link target"
    if kind == "hardlink":
        problem = _name_problem(record.get("target"))
        if problem:
            return f"{record['name']!r}: hard link target: {problem}"
    return None


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
    except OSError as exc:  # a file or a looping link on its way (ENOTDIR, ELOOP)
        return f"missing: {exc.strerror}"
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
        record = by_name.get(normal_name(record["target"]), {})
        if record.get("type") != "file":
            return "hard link to a file the manifest does not list"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size != record["size"]:
        return f"size {info.st_size}, expected {record['size']}"
    if _sha256(path) != record["sha256"]:
        return "content differs (sha256)"
    return None


def normal_name(name: str) -> str:
    """A checked entry name without empty or '.' components (as tar members are named)."""
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def compare_tree(root: Path, manifest: dict[str, Any], kept: Path | None = None) -> list[str]:
    """Every difference between a restored tree and its (checked: read_manifest) manifest, one line each
    ("name: what"); [] if none. Entries in MANIFEST_DIR are looked for below kept (where a restore puts them),
    else below root."""
    records = [{**record, "name": normal_name(record["name"])} for record in manifest["entries"]]
    by_name = {record["name"]: record for record in records}
    problems = []
    for record in records:
        base = kept if kept is not None and record["name"].split("/")[0] == MANIFEST_DIR else root
        problem = _problem(base, record, by_name)
        if problem:
            problems.append(f"{record['name']}: {problem}")
    for tree in (root, kept) if kept is not None else (root,):
        for folder, dirs, files in os.walk(tree):
            for name in dirs + files:
                relative = (Path(folder) / name).relative_to(tree).as_posix()
                if relative not in by_name and relative != MANIFEST_NAME:
                    problems.append(f"{relative}: not in the manifest")
    return problems
