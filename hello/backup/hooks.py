"""system.backup.hooks.before: commands run before an archive is made, writing into its staging folder.

    staging = run_hooks(["./dump-db.sh"], cwd=repo, parent=run_dir)   # a private folder, or None without hooks

Each command runs through /bin/sh in cwd (the config file's folder) with HELLO_BACKUP_STAGING set to a fresh private
folder; what the commands leave there goes into the archive under manifest.STAGING_NAME. The first command that
exits non-zero (or runs longer than HOOK_TIMEOUT) fails the run before anything is written, named with its exit code
and its last line of output; the staging folder is removed in either case by the caller's `with`.

Each command runs in its own process group (hello.base.proc.run_shell_group): whatever it starts is killed with it at
the timeout, when it ends, and when the backup dies (even by kill -9). A staging folder a killed run left behind
is removed by the next run, which holds the backup lock, so no other run is using it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from hello.base.proc import run_shell_group

log = logging.getLogger("backup")

STAGING_ENV = "HELLO_BACKUP_STAGING"
STAGING_PREFIX = "backup-staging-"
HOOK_TIMEOUT = 3600.0  # seconds: a hook that hangs must not hold the backup lock forever


class HookFailed(Exception):
    """A hook command failed; str() names it."""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "no output"


def _text(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode(errors="replace")


def sweep_stale(parent: Path) -> None:
    """Remove the staging folders under parent of runs that died (the caller holds the backup lock: none is in use)."""
    if not parent.is_dir():
        return
    for leftover in parent.glob(STAGING_PREFIX + "*"):
        if leftover.is_dir() and not leftover.is_symlink():
            log.warning("removing %s, left by a backup that did not finish", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def staged(commands: list[str], *, cwd: Path, parent: Path) -> Iterator[Path | None]:
    """Run the hooks into a private staging folder under parent; yield it (None without hooks), then remove it."""
    if not commands:
        yield None
        return
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    try:
        env = {**os.environ, STAGING_ENV: str(staging)}
        for number, command in enumerate(commands, 1):
            started = time.monotonic()
            where = f"system.backup.hooks.before[{number}] {command!r}"
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                try:
                    streams = {"stdin": subprocess.DEVNULL, "stdout": out, "stderr": err}
                    code = run_shell_group(command, timeout=HOOK_TIMEOUT, cwd=cwd, env=env, **streams)
                except subprocess.TimeoutExpired:
                    raise HookFailed(f"{where}: still running after {HOOK_TIMEOUT:.0f} s; stopped") from None
                if code != 0:
                    raise HookFailed(f"{where} failed (exit {code}): {_last_line(_text(err) or _text(out))}")
            log.info("hook %d (%s) done in %.2f s", number, command, time.monotonic() - started)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
