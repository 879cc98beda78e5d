"""git as the project runs it: one set of wrappers for the update protocol, validation, history and the tests.

    git(repo, *args)                  # CompletedProcess; GitError when it fails (check=False: only when it cannot run)
    git_out(repo, *args)              # its stdout, stripped
    head_commit(repo)                 # the commit checked out, None when git cannot tell
    is_ancestor(repo, older, newer)   # merge-base --is-ancestor
    has_commit(repo, commit)          # the repository holds that commit
    changed_files(repo, old, new, names)  # which of names differ between two commits (and exist in the newer)

Every call runs `git -C <repo>` with git_env(): no password prompt ever waits (an update runs from cron).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

GIT_TIMEOUT = 120.0  # a local git command (fetch of a big history included)


class GitError(Exception):
    """git failed, hung or is missing; str() is the reason, one line."""


def short(commit: str | None) -> str:
    """A commit as the step lines show it: its first 10 hex digits ("-" for none)."""
    return commit[:10] if commit else "-"


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Never wait for a password prompt: an update runs from cron. extra: more variables (e.g. an identity)."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(extra or {})}
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=10")
    return env


def git(
    repo: Path,
    *args: str,
    timeout: float = GIT_TIMEOUT,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`git -C repo args`; GitError when it does not finish, git is missing, or (check) it exits non-zero."""
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=timeout, env=git_env(env)
        )
    except subprocess.TimeoutExpired:
        raise GitError(f"`git {' '.join(args)}` did not finish within {timeout:g}s") from None
    except FileNotFoundError:
        raise GitError("git is not installed") from None
    except OSError as exc:
        raise GitError(f"git cannot run: {exc.strerror or exc}") from None
    if check and result.returncode != 0:
        raise GitError(f"`git {' '.join(args)}` failed: {_failure_line(result)}")
    return result


def _failure_line(result: subprocess.CompletedProcess[str]) -> str:
    """The line of git's output that says what failed: its first fatal:/error: line, else its first line.

    git ends many failures with advice ("...and the repository exists."), which read alone says the opposite."""
    lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[0] if lines else f"exit {result.returncode}"


def git_out(repo: Path, *args: str, timeout: float = GIT_TIMEOUT, env: Mapping[str, str] | None = None) -> str:
    return git(repo, *args, timeout=timeout, env=env).stdout.strip()


def head_commit(repo: Path, timeout: float = 10.0) -> str | None:
    """The commit checked out in repo; None when it is no checkout or git cannot tell (no git, a hang)."""
    try:
        return git_out(repo, "rev-parse", "HEAD", timeout=timeout) or None
    except GitError:
        return None


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    return git(repo, "merge-base", "--is-ancestor", older, newer, check=False).returncode == 0


def has_commit(repo: Path, commit: str) -> bool:
    return git(repo, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0


def changed_files(repo: Path, old: str, new: str, names: Iterable[str]) -> list[str]:
    """Those of names (in their order) that differ between two commits and exist in the newer one."""
    names = list(names)
    if old == new:
        return []
    differ = git_out(repo, "diff", "--name-only", old, new, "--", *names).splitlines()
    present = git_out(repo, "ls-tree", "--name-only", new, "--", *names).splitlines()
    return [name for name in names if name in differ and name in present]
