"""The supervisor's start history in its state file: how often it started, and how the run before ended.

The supervisor calls `starts_after(previous_state, now)` when it has started, and stores the result
under STARTS in hello_world.state.json; it writes STOPPED there when it stops cleanly (SIGTERM, SIGINT).
A run whose state has no STOPPED after its start ended without the supervisor's say: SIGKILL, the OOM
killer, a crash or a power loss. Each entry is {"at": epoch seconds, "pid": PID, "after": how the run
before ended: "stop", "crash" or "first"}; the newest HISTORY entries are kept.

Validation (`restarts_since`) reports the starts since its own last run, so a crash loop is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
