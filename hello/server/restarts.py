"""The supervisor's start history in its state file: how often it started, and how the run before ended.

The supervisor calls `starts_after(previous_state, now)` when it has started, and stores the result
under STARTS in hello_world.state.json; it writes STOPPED there when it stops cleanly (SIGTERM, SIGINT).
A run whose state has no STOPPED after its start ended without the supervisor's say: SIGKILL, the OOM
killer, a crash or a power loss. Each entry is {"at": epoch seconds, "pid": PID, "after": how the run
before ended: "stop", "crash" or "first"}; the newest HISTORY entries are kept.

Validation (`report_and_mark_seen`) names the starts since its own last look, then records this look
(SEEN_FILE in run_dir), and fails when one of them followed a crash, so a crash loop is visible.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hello.base.config import RunFiles
from hello.base.files import write_atomically

STARTS, STOPPED = "starts", "stopped"
HISTORY = 50
AFTER_STOP, AFTER_CRASH, FIRST = "stop", "crash", "first"


def how_it_ended(previous: dict[str, Any]) -> str:
    """How the run the state file describes ended, seen by the next supervisor (that one is gone)."""
    if not previous.get("started"):
        return FIRST
    return AFTER_STOP if previous.get(STOPPED, 0) >= previous["started"] else AFTER_CRASH


def starts_after(previous: dict[str, Any], now: float, pid: int) -> list[dict[str, Any]]:
    """The start history with this start appended, from the state file as the previous run left it."""
    history = [entry for entry in previous.get(STARTS, []) if isinstance(entry, dict)]
    entry = {"at": now, "pid": pid, "after": how_it_ended(previous)}
    return [*history, entry][-HISTORY:]


@dataclass(frozen=True)
class Restarts:
    """The starts after `since`: all of them, and those that followed a crash."""

    starts: list[dict[str, Any]]
    crashes: list[dict[str, Any]]


def restarts_since(state: dict[str, Any], since: float) -> Restarts:
    """The starts recorded after `since` (epoch seconds)."""
    starts = [entry for entry in state.get(STARTS, []) if isinstance(entry, dict) and entry.get("at", 0) > since]
    return Restarts(starts, [entry for entry in starts if entry.get("after") == AFTER_CRASH])


# --- what validation says about them ---

SEEN_FILE = "validation.restarts-seen.json"  # in run_dir: when validation last looked at the start history


def last_seen(run_dir: Path) -> float | None:
    """When validation last looked (epoch seconds), or None if it never did."""
    try:
        return float(json.loads((run_dir / SEEN_FILE).read_text())["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_seen(run_dir: Path, now: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(run_dir / SEEN_FILE, json.dumps({"at": now}).encode() + b"\n")


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def report(state: dict[str, Any], since: float, since_what: str) -> tuple[bool, str]:
    """(no crash since `since`, one line for humans) from the server's state file."""
    found = restarts_since(state, since)
    up = f"up since {_when(state['started'])} (pid {state.get('pid', '?')})" if state.get("started") else "not started"
    if not found.starts:
        return True, f"not restarted since {since_what}; {up}"
    if not found.crashes:
        return True, f"restarted {len(found.starts)} time(s) since {since_what}, each after a clean stop; {up}"
    return False, (
        f"restarted {len(found.starts)} time(s) since {since_what}, {len(found.crashes)} after a crash "
        f"(the supervisor was killed: OOM killer, SIGKILL, power loss; last at {_when(found.crashes[-1]['at'])}); {up}"
    )


def report_and_mark_seen(run_dir: Path, first_window: float) -> tuple[bool | None, str]:
    """Report the starts since validation's last look (else the last first_window seconds), then mark them seen.

    (True, detail) no crash; (False, detail) a start after a crash; (None, why) no history to look at (nothing
    marked). Marking writes SEEN_FILE: the next call reports only the starts after this one.
    """
    files = RunFiles(run_dir)
    state = files.read_state()
    if not state.get(STARTS):
        return None, f"no start history in {files.statefile} (the server is not run by `make start` or systemd)"
    now, seen = time.time(), last_seen(run_dir)
    if seen is None:
        since, since_what = now - first_window, f"validation's first look (the last {first_window:g} s)"
    else:
        since, since_what = seen, f"validation's last look at {_when(seen)}"
    ok, detail = report(state, since, since_what)
    mark_seen(run_dir, now)
    return ok, detail if ok else f"{detail}; see {files.logfile} or `journalctl -u hello-world`"
