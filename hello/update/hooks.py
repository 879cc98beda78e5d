"""Update hooks: operator commands run around the deploy (system.update.hooks.before_deploy, after_deploy).

Each command is a shell line (`/bin/sh -c`), run in the new release's folder (the live checkout, at the tested
commit by then) with HELLO_COMMIT (the new commit) and HELLO_PREVIOUS_COMMIT (the serving one) in its
environment, its output passed through. The first one that fails (or outlasts HOOK_TIMEOUT) stops the rest.
Each runs in its own process group (hello.base.proc.run_shell_group): what it starts is killed with it at the timeout,
when it ends, and when the update dies (even by kill -9).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TextIO

from hello.base.proc import run_shell_group

HOOK_TIMEOUT = 600.0


class HookFailed(Exception):
    """A hook failed; str() names it and how, one line."""


def run_hooks(kind: str, commands: list[str], cwd: Path, commit: str, previous: str, out: TextIO) -> int:
    """Run every command of one kind in order; the number run. Raises HookFailed at the first failure."""
    env = {**os.environ, "HELLO_COMMIT": commit, "HELLO_PREVIOUS_COMMIT": previous}
    for index, command in enumerate(commands):
        where = f"system.update.hooks.{kind}[{index}] `{command}`"
        out.flush()  # what was written before comes before the hook's output
        try:
            code = run_shell_group(
                command,
                timeout=HOOK_TIMEOUT,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise HookFailed(f"{where} did not finish within {HOOK_TIMEOUT:g}s") from None
        except OSError as exc:
            raise HookFailed(f"{where} cannot run: {exc.strerror or exc}") from None
        if code != 0:
            raise HookFailed(f"{where} exited {code}")
    return len(commands)
