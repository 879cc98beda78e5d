"""The update history: <run_dir>/update.log, one JSON line per update run, appended by update_protocol.py.

The history shows the runs that deployed or rolled back (DEPLOYS outcomes; every_run: all runs), newest first,
each with its time, who ran it, the from and to commits with their subject lines, the outcome and every step's
duration. The recorded good release is the commit a run left serving, tested and verified: the `good` field of
the newest entry that has one.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Any

from hello.base.git import GitError, git

UPDATE_LOG = "update.log"  # under system.run_dir
DEPLOYS = frozenset({"updated", "redeployed", "rolled-back", "rollback-failed", "rollback"})  # rollback: by hand


def update_log(run_dir: Path) -> Path:
    return Path(run_dir) / UPDATE_LOG


def current_user() -> str:
    """Who runs this: the login name, else the numeric uid (cron in a container may have no passwd entry)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def read_entries(run_dir: Path) -> list[dict[str, Any]]:
    """Every readable entry of update.log, oldest first; a torn or foreign line is skipped."""
    try:
        lines = update_log(run_dir).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def good_release(run_dir: Path) -> str | None:
    """The commit the newest update run left serving, tested and verified; None when no run recorded one."""
    for entry in reversed(read_entries(run_dir)):
        if entry.get("good"):
            return str(entry["good"])
    return None


def history(run_dir: Path, repo: Path, every_run: bool = False) -> list[dict[str, Any]]:
    """The deploys and rollbacks (every_run: all runs), newest first, with the commits' subject lines."""
    chosen = [entry for entry in read_entries(run_dir) if every_run or entry.get("outcome") in DEPLOYS]
    subjects: dict[str, str] = {}
    for entry in chosen:
        for key in ("from", "to"):
            commit = entry.get(key)
            if isinstance(commit, str) and commit not in subjects:
                subjects[commit] = subject(repo, commit)
            entry[f"{key}_subject"] = subjects.get(commit, "") if isinstance(commit, str) else ""
        entry.setdefault("user", "?")  # runs recorded before `user` was
    return list(reversed(chosen))


def subject(repo: Path, commit: str) -> str:
    """The commit's subject line, or "" when git cannot tell (a commit no longer in the repository)."""
    try:
        result = git(repo, "log", "-1", "--format=%s", commit, "--", timeout=30, check=False)
    except GitError:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def render(entries: list[dict[str, Any]]) -> str:
    """Human lines: one header line per run, then its commits and step durations."""
    if not entries:
        return "no deploys or rollbacks recorded yet"
    lines = []
    for entry in entries:
        lines.append(
            f"{entry.get('time', '?')}  {entry.get('outcome', '?'):<15} exit {entry.get('exit', '?')}  "
            f"by {entry.get('user', '?')}  {entry.get('seconds', 0):.1f}s"
        )
        for key in ("from", "to"):
            commit = entry.get(key) or "-"
            lines.append(f"    {key:<5} {commit[:10]:<10}  {entry.get(f'{key}_subject', '')}".rstrip())
        steps = entry.get("steps") or {}
        if steps:
            lines.append("    steps " + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in steps.items()))
        if entry.get("reason"):
            lines.append(f"    why   {entry['reason']}")
    return "\n".join(lines)
