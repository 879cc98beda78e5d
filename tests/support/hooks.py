"""Hooks that start processes, and their PIDs: for the tests that hooks end with everything they started."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from hello.base.locks import pid_alive
from hello.base.proc import wait_until


def spawning_hook(pids: Path, only_if: Path | None = None) -> str:
    """A hook that writes its parent's, its own and a grandchild's PID to pids, the grandchild sleeping forever.

    only_if: it does so only while that file exists (else it exits 0 at once)."""
    body = f'echo $PPID $$ > "{pids}.tmp"; sleep 100000 & echo $! >> "{pids}.tmp"; mv "{pids}.tmp" "{pids}"; wait'
    return f'if [ -e "{only_if}" ]; then {body}; fi' if only_if else body


def hook_pids(pids: Path) -> list[int]:
    """The three PIDs a spawning_hook wrote, once it has written them."""
    return wait_until(lambda: [int(n) for n in pids.read_text().split()] if pids.exists() else None, 30, "the hook")


def all_gone(pids: list[int]) -> None:
    wait_until(lambda: not [pid for pid in pids if pid_alive(pid)], 10, f"PIDs {pids} to end")


def kill_leftovers(pids: Path) -> None:
    """Test clean-up: whatever a failed assertion left running, by the PIDs the hook wrote."""
    if pids.exists():
        for pid in (int(n) for n in pids.read_text().split()[1:]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
