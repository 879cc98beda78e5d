"""Update hooks: operator commands run around the deploy (system.update.hooks.before_deploy, after_deploy).

Each command is a shell line (`/bin/sh -c`), run in the new release's folder (the live checkout, at the tested
commit by then) with HELLO_COMMIT (the new commit) and HELLO_PREVIOUS_COMMIT (the serving one) in its
environment, its output passed through. The first one that fails (or outlasts HOOK_TIMEOUT) stops the rest.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TextIO

HOOK_TIMEOUT = 600.0


class HookFailed(Exception):
    """A hook failed; str() names it and how, one line."""


def run_hooks(kind: str, commands: list[str], cwd: Path, commit: str, previous: str, out: TextIO) -> int:
    """Run every command of one kind in order; the number run. Raises HookFailed at the first failure."""
    env = {**os.environ, "HELLO_COMMIT": commit, "HELLO_PREVIOUS_COMMIT": previous}
    for index, command in enumerate(commands):
        where = f"system.update.hooks.{kind}[{index}] `{command}`"
        try:
            result = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=HOOK_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise HookFailed(f"{where} did not finish within {HOOK_TIMEOUT:g}s") from None
        except OSError as exc:
            raise HookFailed(f"{where} cannot run: {exc.strerror or exc}") from None
        if result.returncode != 0:
            raise HookFailed(f"{where} exited {result.returncode}")
    return len(commands)
