"""git as the project runs it: one set of wrappers for the update protocol, validation, history and the tests.

    git(repo, *args)                  # CompletedProcess; GitError when it fails (check=False: only when it cannot run)
    git_out(repo, *args)              # its stdout, stripped
    head_commit(repo)                 # the commit checked out, None when git cannot tell
    is_ancestor(repo, older, newer)   # merge-base --is-ancestor
    has_commit(repo, commit)          # the repository holds that commit
    changed_files(repo, old, new, names)  # which of names differ between two commits (and exist in the newer)
    tracked_at(repo, commit, paths)   # what commit tracks at or under paths
    overwritten_local(repo, old, new) # untracked or ignored paths a move from old to new would delete or replace
    switch_branch(repo, branch, commit)  # the branch to commit and checked out, refusing to touch untracked paths
    signature_problem(repo, commit, allowed_signers)  # why commit is not signed by an allowed key (None: it is)

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


def tracked_at(repo: Path, commit: str, paths: Iterable[str]) -> list[str]:
    """What commit tracks at or under each of paths (relative to repo), in git's order."""
    paths = list(paths)
    if not paths:
        return []
    listed = git_out(repo, "ls-tree", "-r", "-z", "--name-only", commit, "--", *paths)
    return [name for name in listed.split("\0") if name]


def local_paths(repo: Path) -> set[str]:
    """Every untracked and every ignored file (or symlink) of the checkout, relative to it."""
    found: set[str] = set()
    for extra in ((), ("--ignored", "--exclude-standard")):
        listed = git_out(repo, "ls-files", "-z", "--others", *extra)
        found.update(name for name in listed.split("\0") if name)
    return found


def overwritten_local(repo: Path, old: str, new: str) -> list[str]:
    """The untracked or ignored paths of the checkout (at old) that moving it to new would delete or replace: a
    path new writes that is one, lies under one (a file where new wants a folder), or holds one (a folder where
    new wants a file). Sorted; [] when the move touches none."""
    if old == new:
        return []
    listed = git_out(repo, "diff", "-z", "--no-renames", "--name-only", old, new)
    changed = [name for name in listed.split("\0") if name]
    local = local_paths(repo)
    holding = {str(parent) for name in local for parent in Path(name).parents if str(parent) != "."}
    hit: set[str] = set()
    for name in changed:
        if name in local or name in holding:
            hit.add(name)
        hit.update(str(parent) for parent in Path(name).parents if str(parent) in local)
    return sorted(hit)


def switch_branch(repo: Path, branch: str, commit: str) -> None:
    """Point branch at commit and check it out; git refuses (GitError, nothing changed) rather than delete or
    replace an untracked or ignored path, or lose a local change (unlike `reset --hard` and a plain merge)."""
    result = git(repo, "checkout", "--quiet", "--no-overwrite-ignore", "-B", branch, commit, check=False)
    if result.returncode != 0:  # git's last line is "Aborting": say what it refused, and which paths
        lines = result.stderr.splitlines()
        said = next((line for line in lines if line.startswith(("error:", "fatal:"))), f"exit {result.returncode}")
        paths = [line.strip() for line in lines if line.startswith("\t")]  # git lists the paths indented
        raise GitError(f"`git checkout {short(commit)}` failed: {said} {', '.join(paths[:5])}".rstrip())


def signature_problem(repo: Path, commit: str, allowed_signers: str) -> str | None:
    """Why commit is not signed by a key of the ssh allowed-signers file (git verify-commit); None when it is."""
    if not Path(allowed_signers).is_file():
        return f"the allowed-signers file {allowed_signers} is missing"
    config = ("-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={allowed_signers}")
    result = git(repo, *config, "verify-commit", commit, check=False)
    if result.returncode == 0:
        return None
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no signature"  # a key not allowed: "No principal matched."
