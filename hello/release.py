"""The release under test: an isolated copy of a new commit, where the update protocol runs its tests.

Untested code must never serve, and the supervisor starts workers from the live checkout with the live venv
(a worker that dies is respawned from there). So the live checkout and venv stay on the serving commit until
the new commit's tests have passed in its release:

  <run_dir>/release/        a detached `git worktree` of the deployment checkout at the commit under test
  <run_dir>/release/.venv   requirements files unchanged: a symlink to the live venv (nothing to install; the
                            files' mtimes are set to the live venv's make stamps so `make test` installs
                            nothing); changed: a copy of the live venv with the changed files pip-installed into it

A release is made afresh for each update (one left behind by a killed run is removed first) and removed after
it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hello.git import changed_files, git

RELEASE_DIR = "release"  # under system.run_dir
REQUIREMENTS = ("requirements.txt", "requirements-dev.txt")
MAKE_STAMPS = {"requirements.txt": ".runtime-installed", "requirements-dev.txt": ".dev-installed"}  # see Makefile
PIP_TIMEOUT = 3600.0

log = logging.getLogger("hello.release")


class ReleaseError(Exception):
    """The release could not be made or prepared; str() is the reason, one line."""


def changed_requirements(repo: Path, old: str, new: str) -> list[str]:
    """The requirements files that differ between two commits (and exist in the newer one)."""
    return changed_files(repo, old, new, REQUIREMENTS)


def live_venv() -> Path | None:
    """The virtualenv this process runs in (the live one when run by `make update`), or None outside one."""
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else None


def pip_install(venv: Path, cwd: Path, names: list[str]) -> None:
    """pip install -r each file (relative to cwd) into venv, then touch the venv's make stamps in order."""
    python = venv / "bin" / "python"
    for name in names:
        command = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", name]
        try:
            result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=PIP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ReleaseError(f"pip install -r {name} did not finish within {PIP_TIMEOUT:g}s") from None
        except OSError as exc:
            raise ReleaseError(f"pip install -r {name} cannot run {python}: {exc.strerror or exc}") from None
        if result.returncode != 0:
            tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
            raise ReleaseError(f"pip install -r {name} failed: {tail[0] if tail else result.returncode}")
    for name in REQUIREMENTS:  # runtime first: make's dev stamp must not be older than the runtime one
        stamp = venv / MAKE_STAMPS[name]
        if stamp.exists():
            stamp.touch()  # so make does not reinstall what is installed


class Release:
    """The worktree <run_dir>/release of repo, at one commit, with its venv."""

    def __init__(self, repo: Path, run_dir: Path) -> None:
        self.repo = repo
        self.path = Path(run_dir).resolve() / RELEASE_DIR
        self.venv = self.path / ".venv"

    def create(self, commit: str, changed: list[str]) -> str:
        """A fresh worktree at commit with its venv; changed: the requirements files that differ from the live
        checkout's. Returns what was done, for the step line. Raises ReleaseError (or GitError)."""
        self.remove()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        git(self.repo, "worktree", "add", "--quiet", "--detach", "--force", str(self.path), commit)
        venv = live_venv()
        if venv is None:
            return f"worktree {self.path} at {commit[:10]}; no venv (not run from one)"
        if not changed:
            self.venv.symlink_to(venv, target_is_directory=True)
            self.match_stamps(venv)
            return f"worktree {self.path} at {commit[:10]}, the live venv (requirements unchanged)"
        try:
            shutil.copytree(venv, self.venv, symlinks=True)
        except (OSError, shutil.Error) as exc:
            raise ReleaseError(f"cannot copy the venv {venv} into {self.venv}: {exc}") from None
        pip_install(self.venv, self.path, changed)
        return f"worktree {self.path} at {commit[:10]}, a copy of the live venv with {', '.join(changed)} installed"

    def match_stamps(self, venv: Path) -> None:
        """Unchanged requirements files get the live venv's stamp times: make sees the shared venv up to date."""
        for name, stamp in MAKE_STAMPS.items():
            with contextlib.suppress(FileNotFoundError):
                when = (venv / stamp).stat().st_mtime
                os.utime(self.path / name, (when, when))

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """The environment of a command run in the release: its venv first on PATH."""
        if not self.venv.exists():
            return dict(base)
        path = os.pathsep.join([str(self.venv / "bin"), base.get("PATH", os.defpath)])
        return {**base, "PATH": path, "VIRTUAL_ENV": str(self.venv)}

    def remove(self) -> None:
        """Remove the worktree (and a venv copy in it), never what a venv symlink points to."""
        if self.venv.is_symlink():
            self.venv.unlink()
        if self.path.exists() or self.path.is_symlink():
            result = git(self.repo, "worktree", "remove", "--force", "--force", str(self.path), check=False)
            if result.returncode != 0 and (self.path.exists() or self.path.is_symlink()):
                log.warning("git worktree remove %s failed; deleting it", self.path)
                if self.path.is_symlink():
                    self.path.unlink()
                else:
                    shutil.rmtree(self.path)
        git(self.repo, "worktree", "prune", check=False)
