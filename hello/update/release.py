"""The release under test: an isolated copy of a new commit, where the update protocol runs its tests.

Untested code must never serve, and never write into what serves. The supervisor starts workers from the live
checkout with the live venv (a worker that dies is respawned from there), so both stay on the serving commit
until the new commit's tests have passed in its release; and when the kit runs as root, the tests run as
system.update.test_user (default nobody), who owns the release and nothing that serves:

  $TMPDIR/hello-release-XXXXXXXX/  made by mkdtemp, root's, 0711: the test user cannot rename what is in it
    release/                    a `git clone --no-hardlinks` of the deployment checkout at the commit under test
                                (its own objects: nothing shared with the live repository), the test user's
    release/.venv               requirements files unchanged: a symlink to the live venv, root's and so read-only
                                to the test user (the files' mtimes are set to the live venv's make stamps so
                                `make test` installs nothing); changed: a copy of the live venv, the test user's,
                                with the changed files pip-installed into it by the test user
    home/                       the test user's HOME
  <run_dir>/release             a symlink to release/: the run_dir (0700) is out of the test user's reach, and
                                a release left by a killed run is found and removed from there by the next

Without a test user (test_user: null, or the kit not run as root) the tests run as the kit's own user: the
release is the same copy, but nothing stops code running with the kit's rights from writing elsewhere
(README "Security model").
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hello.base.git import changed_files, git

RELEASE_DIR = "release"  # under system.run_dir: the symlink to the release
RELEASE_PREFIX = "hello-release-"  # the mkdtemp folder holding the release
REQUIREMENTS = ("requirements.txt", "requirements-dev.txt")
MAKE_STAMPS = {"requirements.txt": ".runtime-installed", "requirements-dev.txt": ".dev-installed"}  # see Makefile
PIP_TIMEOUT = 3600.0

log = logging.getLogger("hello.update.release")


class ReleaseError(Exception):
    """The release could not be made or prepared; str() is the reason, one line."""


def changed_requirements(repo: Path, old: str, new: str) -> list[str]:
    """The requirements files that differ between two commits (and exist in the newer one)."""
    return changed_files(repo, old, new, REQUIREMENTS)


def live_venv() -> Path | None:
    """The virtualenv this process runs in (the live one when run by `make update`), or None outside one."""
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else None


@dataclass(frozen=True)
class Tester:
    """Who runs the tests when the kit runs as root."""

    name: str
    uid: int
    gid: int

    def run_options(self) -> dict[str, Any]:
        """subprocess keyword arguments that run a child as this user, with no supplementary groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def tester_for(name: str | None) -> Tester | None:
    """The user the tests run as: name's when this process is root and name is another user; None: as this
    process. Raises ReleaseError when name is no user here."""
    if name is None or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ReleaseError(f"system.update.test_user {name!r} is no user on this host") from None
    return None if entry.pw_uid == 0 else Tester(name, entry.pw_uid, entry.pw_gid)


def hand_over(top: Path, user: Tester) -> None:
    """chown top and all under it to user, never following a symlink (a venv symlink stays pointing at root's)."""
    os.chown(top, user.uid, user.gid, follow_symlinks=False)
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), user.uid, user.gid, follow_symlinks=False)


def pip_install(venv: Path, cwd: Path, names: list[str], options: dict[str, Any] | None = None) -> None:
    """pip install -r each file (relative to cwd) into venv, then touch the venv's make stamps in order.
    options: more subprocess arguments (the test user, its environment)."""
    python = venv / "bin" / "python"
    for name in names:
        command = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", name]
        try:
            how = {"cwd": cwd, **(options or {})}
            result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT, **how)
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
    """The release of repo at one commit, with its venv, for the tests to run in (as user, when one is given)."""

    def __init__(self, repo: Path, run_dir: Path, user: Tester | None = None) -> None:
        self.repo, self.user = repo, user
        self.link = Path(run_dir).resolve() / RELEASE_DIR
        self.top: Path | None = None
        self.path = self.link  # until create(): where a release left behind is found

    @property
    def venv(self) -> Path:
        return self.path / ".venv"

    def create(self, commit: str, changed: list[str]) -> str:
        """A fresh copy at commit with its venv; changed: the requirements files that differ from the live
        checkout's. Returns what was done, for the step line. Raises ReleaseError (or GitError, OSError)."""
        self.remove()
        self.link.parent.mkdir(parents=True, exist_ok=True)
        self.top = Path(tempfile.mkdtemp(prefix=RELEASE_PREFIX))
        os.chmod(self.top, 0o711)  # the test user may enter, not list; only root renames what is in it
        self.path = self.top / "release"
        self.link.symlink_to(self.path, target_is_directory=True)  # first: a killed run's leftover is found
        git(self.repo, "clone", "--quiet", "--no-hardlinks", "--no-checkout", str(self.repo), str(self.path))
        git(self.path, "checkout", "--quiet", "--detach", commit)
        (self.top / "home").mkdir(mode=0o700)
        venv = live_venv()
        who = f" as {self.user.name}" if self.user else ""
        if venv is None:
            self.hand_over()
            return f"{self.path} at {commit[:10]}{who}; no venv (not run from one)"
        who += self.out_of_reach(venv)
        if not changed:
            self.venv.symlink_to(venv, target_is_directory=True)
            self.match_stamps(venv)
            self.hand_over()
            return f"{self.path} at {commit[:10]}{who}, the live venv read-only (requirements unchanged)"
        try:
            shutil.copytree(venv, self.venv, symlinks=True)
        except (OSError, shutil.Error) as exc:
            raise ReleaseError(f"cannot copy the venv {venv} into {self.venv}: {exc}") from None
        self.hand_over()
        pip_install(self.venv, self.path, changed, self.run_options(dict(os.environ)))
        made = f"a copy of the live venv with {', '.join(changed)} installed"
        return f"{self.path} at {commit[:10]}{who}, {made}"

    def out_of_reach(self, venv: Path) -> str:
        """A warning when the test user cannot run the venv's python (e.g. an interpreter under /root): "" if it can."""
        if self.user is None:
            return ""
        python = venv / "bin" / "python"
        try:
            result = subprocess.run(
                [str(python), "-c", ""], capture_output=True, timeout=60, cwd="/", **self.user.run_options()
            )
        except (OSError, subprocess.SubprocessError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
        else:
            if result.returncode == 0:
                return ""
            why = f"exit {result.returncode}"
        return f" (WARNING: {self.user.name} cannot run {python}: {why}; see system.update.test_user)"

    def hand_over(self) -> None:
        """The release and its HOME to the test user (none: they stay this process's)."""
        if self.user is not None and self.top is not None:
            hand_over(self.path, self.user)
            hand_over(self.top / "home", self.user)

    def match_stamps(self, venv: Path) -> None:
        """Unchanged requirements files get the live venv's stamp times: make sees the shared venv up to date."""
        for name, stamp in MAKE_STAMPS.items():
            with contextlib.suppress(FileNotFoundError):
                when = (venv / stamp).stat().st_mtime
                os.utime(self.path / name, (when, when))

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """The environment of a command run in the release: its venv first on PATH; the test user's HOME."""
        env = dict(base)
        if self.venv.exists():
            env["PATH"] = os.pathsep.join([str(self.venv / "bin"), base.get("PATH", os.defpath)])
            env["VIRTUAL_ENV"] = str(self.venv)
        if self.user is not None and self.top is not None:
            env.update(HOME=str(self.top / "home"), USER=self.user.name, LOGNAME=self.user.name)
        return env

    def run_options(self, base: dict[str, str]) -> dict[str, Any]:
        """subprocess keyword arguments for a command in the release: its folder, environment and user."""
        return {"cwd": self.path, "env": self.env(base), **(self.user.run_options() if self.user else {})}

    def remove(self) -> None:
        """Remove the release (this one, or the one a killed run left), never what a venv symlink points to."""
        top = self.top
        if self.link.is_symlink():  # run_dir is private: the link is this kit's own
            target = Path(os.readlink(self.link))
            self.link.unlink()
            top = top or target.parent
        elif self.link.exists():  # a release of before: a git worktree at <run_dir>/release
            result = git(self.repo, "worktree", "remove", "--force", "--force", str(self.link), check=False)
            if result.returncode != 0 and self.link.exists():
                shutil.rmtree(self.link)
        if top is not None and top.name.startswith(RELEASE_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                info = top.lstat()
                if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():  # made by this kit's mkdtemp
                    shutil.rmtree(top)
        self.top = None
        git(self.repo, "worktree", "prune", check=False)
