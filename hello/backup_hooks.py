"""system.backup.hooks.before: commands run before an archive is made, writing into its staging folder.

    staging = run_hooks(["./dump-db.sh"], cwd=repo, parent=run_dir)   # a private folder, or None without hooks

Each command runs through /bin/sh in cwd (the config file's folder) with HELLO_BACKUP_STAGING set to a fresh private
folder; what the commands leave there goes into the archive under manifest.STAGING_NAME. The first command that
exits non-zero (or runs longer than HOOK_TIMEOUT) fails the run before anything is written, named with its exit code
and its last line of output; the staging folder is removed in either case by the caller's `with`.
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

log = logging.getLogger("backup")

STAGING_ENV = "HELLO_BACKUP_STAGING"
HOOK_TIMEOUT = 3600.0  # seconds: a hook that hangs must not hold the backup lock forever


class HookFailed(Exception):
    """A hook command failed; str() names it."""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "no output"


@contextlib.contextmanager
def staged(commands: list[str], *, cwd: Path, parent: Path) -> Iterator[Path | None]:
    """Run the hooks into a private staging folder under parent; yield it (None without hooks), then remove it."""
    if not commands:
        yield None
        return
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="backup-staging-", dir=parent))
    try:
        env = {**os.environ, STAGING_ENV: str(staging)}
        for number, command in enumerate(commands, 1):
            started = time.monotonic()
            try:
                proc = subprocess.run(
                    ["/bin/sh", "-c", command],
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=HOOK_TIMEOUT,
                )
            except subprocess.TimeoutExpired:
                raise HookFailed(
                    f"system.backup.hooks.before[{number}] {command!r}: still running after "
                    f"{HOOK_TIMEOUT:.0f} s; stopped"
                ) from None
            if proc.returncode != 0:
                raise HookFailed(
                    f"system.backup.hooks.before[{number}] {command!r} failed (exit {proc.returncode}): "
                    f"{_last_line(proc.stderr or proc.stdout)}"
                )
            log.info("hook %d (%s) done in %.2f s", number, command, time.monotonic() - started)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
