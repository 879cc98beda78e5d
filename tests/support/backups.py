"""Backup test helpers: a source tree with the cases that matter, snapshots of trees, backup_script.py runs and
the archives they leave (the archive naming is written out here on purpose: a test's own oracle of SPEC's name).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import stat
import subprocess
from pathlib import Path

from hello.base.checkout import CHECKOUT
from tests.support.tools import PYTHON

SCRIPT = str(CHECKOUT / "backup_script.py")
ARCHIVE_RE = re.compile(r"^hello-world-\d{8}T\d{6}Z\.tar\.gz$")


def make_tree(root: Path) -> None:
    """A small tree with the cases that matter: modes, links, hard links, odd names, excluded things."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "private").mkdir(mode=0o750)
    (root / "hello.py").write_text("print('Hello, World!')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "secret.txt").write_text("s3cret\n")
    (root / "secret.txt").chmod(0o600)
    (root / "group.txt").write_text("group writable\n")
    (root / "group.txt").chmod(0o664)
    (root / "empty").write_bytes(b"")
    (root / "sub" / "data.bin").write_bytes(random.Random(1).randbytes(300_000))
    (root / "sub" / "deeper" / ("long-name-" + "x" * 120 + ".txt")).write_text("long\n")
    (root / "sub" / "deeper" / "ünïcødé.txt").write_text("utf-8 name\n")
    (root / "private" / "key").write_text("k\n")
    (root / "link-to-hello").symlink_to("hello.py")
    (root / "sub" / "link-to-parent-file").symlink_to("../secret.txt")
    (root / "dangling").symlink_to("does-not-exist")
    (root / "link-to-dir").symlink_to("sub")
    os.link(root / "hello.py", root / "sub" / "hardlink-to-hello")
    for excluded in (".git/objects", "__pycache__", "sub/__pycache__"):
        (root / excluded).mkdir(parents=True)
        (root / excluded / "junk.pyc").write_bytes(b"junk")
    (root / "sub" / "notes.log").write_text("excluded by pattern\n")


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """relative path -> (kind, mode, content sha256 | link target, whole-second mtime) for everything under root."""
    result: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if rel.split("/")[0] in skip:
                continue
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                result[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                result[rel] = ("dir", stat.S_IMODE(info.st_mode), int(info.st_mtime))
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                result[rel] = ("file", stat.S_IMODE(info.st_mode), digest, int(info.st_mtime))
    return result


def backup(config: Path, *args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    return subprocess.run(
        [PYTHON, SCRIPT, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=CHECKOUT, **kwargs
    )


def archives(destination: Path) -> list[Path]:
    return sorted(p for p in destination.iterdir() if ARCHIVE_RE.match(p.name)) if destination.exists() else []
