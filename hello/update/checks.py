"""The checks before an update changes anything: preflight (the test command, the checkout, the remote, the
server, an interrupted run's marker) and the checks of a commit to deploy (signed, tracks no local state, its
checkout overwrites nothing untracked). Each raises Refused (hello/update/errors.py): nothing has changed yet.

    class Updater(PreDeployChecks, ...)            # the step machine (updater.py) runs them
    found = self.preflight(note)                   # Found(head, serving, remote_tip, recovering)
    self.check_target(commit)                      # fetch and the rollback by hand, before the tests
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hello.base.git import GitError, git, git_out, has_commit, overwritten_local, short, signature_problem, tracked_at
from hello.update.deploy import DeployError, Deployment
from hello.update.errors import Refused
from hello.update.release import ReleaseError, Tester, live_venv, tester_for
from hello.update.report import Note, Report

REMOTE_TIMEOUT = 20.0  # `git ls-remote`: an unreachable remote must fail fast, not hang
# Local state an upstream commit may never track (system.run_dir and system.backup.destination join them): a checkout
# that wrote there would replace the venv that serves, the secrets, the archives or the kit's own state.
PROTECTED_NAMES = {".venv": "the live venv", ".env": "the secrets file"}

log = logging.getLogger("update_protocol")


@dataclass
class Found:
    """What preflight found: the checkout's HEAD, the rollback point, the remote's tip ("" when not asked) and
    the pending marker of an interrupted run ({} when none)."""

    head: str
    serving: str
    remote_tip: str
    recovering: dict[str, Any]


class PreDeployChecks:
    """The checks of the Updater (updater.py), on its state: what they read is set in Updater.__init__."""

    config: dict[str, Any]
    repo: Path
    report: Report
    remote: str
    branch: str
    deployment: Deployment
    pending: Path
    head: str
    tester: Tester | None

    def preflight(self, note: Note, remote: bool = True, planning: bool = False) -> Found:
        """Check the test command, the checkout, the remote (unless not remote) and the server: what was found.
        Raises Refused; planning (a dry run) only warns that the server is down and plans from the checkout."""
        self.test_argv()
        try:
            self.tester = tester_for(self.config["update"]["test_user"])
        except ReleaseError as exc:
            raise Refused(str(exc)) from None
        try:
            top = git_out(self.repo, "rev-parse", "--show-toplevel")
        except GitError:
            raise Refused(f"{self.repo} is not a git checkout") from None
        if Path(top).resolve() != self.repo.resolve():
            raise Refused(f"{self.repo} is inside the checkout {top}, not its top")
        # Not stripped: each porcelain line is "XY path", and X may be a space.
        dirty = git(self.repo, "status", "--porcelain", "--untracked-files=normal").stdout.splitlines()
        if dirty:
            shown = ", ".join(line[3:] for line in dirty[:5]) + (", ..." if len(dirty) > 5 else "")
            raise Refused(f"the working tree is not clean ({len(dirty)} changed or untracked: {shown})")
        branch = git(self.repo, "symbolic-ref", "--short", "-q", "HEAD", check=False).stdout.strip()
        if branch != self.branch:
            raise Refused(f"the checkout is on {branch or 'a detached HEAD'}, not {self.branch} (system.update.branch)")
        head = git_out(self.repo, "rev-parse", "HEAD")
        remote_tip = self.ls_remote() if remote else ""
        try:
            serving = self.deployment.serving_commit()
        except DeployError as exc:
            if not planning:
                raise Refused(f"{exc}: nothing to roll back to; start the server first (make start)") from None
            self.report.say(f"WARNING: {exc}: a real update would refuse; start the server first (make start)")
            serving = head
        serving, recovering = self.recover_pending(serving)
        note.detail = (
            f"on {self.branch}, clean; serving {short(serving)}; checkout {short(head)}; "
            f"{self.remote}/{self.branch} {short(remote_tip)}"
        )
        return Found(head, serving, remote_tip, recovering)

    def ls_remote(self) -> str:
        if git(self.repo, "remote", "get-url", self.remote, check=False).returncode != 0:
            raise Refused(f"the checkout has no remote named {self.remote} (system.update.remote)")
        try:
            result = git(self.repo, "ls-remote", "--heads", self.remote, self.branch, timeout=REMOTE_TIMEOUT)
        except GitError as exc:
            raise Refused(f"the remote {self.remote} is unreachable: {exc}") from None
        for line in result.stdout.splitlines():
            commit, _, ref = line.partition("\t")
            if ref == f"refs/heads/{self.branch}":
                return commit
        raise Refused(f"the remote {self.remote} has no branch {self.branch}")

    def recover_pending(self, serving: str) -> tuple[str, dict[str, Any]]:
        """An earlier run died half-way: keep its rollback point, which was verified, and run every step.
        Returns the rollback point and the pending marker ({} when none)."""
        try:
            pending = json.loads(self.pending.read_text())
        except FileNotFoundError:
            return serving, {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.pending, exc)
            return serving, {}
        rollback_point = str(pending.get("from", ""))
        if rollback_point and rollback_point != serving and has_commit(self.repo, rollback_point):
            log.warning(
                "an update by PID %s (%s -> %s) was interrupted: its rollback point %s is kept (serving now: %s)",
                pending.get("pid"),
                short(rollback_point),
                short(pending.get("to")),
                short(rollback_point),
                short(serving),
            )
            return rollback_point, pending
        log.warning("an update by PID %s was interrupted: running every step again", pending.get("pid"))
        return serving, pending

    def protected_paths(self) -> dict[str, str]:
        """The local state inside the checkout that no commit may track: {path relative to it: what it is}."""
        top = self.repo.resolve()
        named = {
            Path(self.config["run_dir"]): "the run dir (system.run_dir)",
            Path(self.config["backup"]["destination"]): "the backup destination (system.backup.destination)",
            **{top / name: what for name, what in PROTECTED_NAMES.items()},
        }
        venv = live_venv()
        if venv is not None:
            named.setdefault(venv, "the live venv")
        protected = {}
        for path, what in named.items():
            with contextlib.suppress(ValueError):  # outside the checkout: no commit can reach it
                protected[path.resolve().relative_to(top).as_posix()] = what
        protected.pop(".", None)  # the checkout itself: every commit tracks something there
        return protected

    def check_target(self, target: str) -> None:
        """Refused, before anything runs, when target is not signed by an allowed key (verify_signatures set),
        tracks protected local state, or its checkout would delete or replace an untracked or ignored path (git
        would also refuse, but only after the tests and backup)."""
        allowed = self.config["update"]["verify_signatures"]
        if allowed:
            problem = signature_problem(self.repo, target, allowed)
            if problem:
                raise Refused(f"{short(target)} is not signed by a key of {allowed} (verify_signatures): {problem}")
        for path, what in self.protected_paths().items():
            tracked = tracked_at(self.repo, target, [path])
            if tracked:
                raise Refused(f"{short(target)} tracks {tracked[0]!r} in {what}: a commit may not replace local state")
        hit = overwritten_local(self.repo, self.head, target)
        if hit:
            shown = ", ".join(hit[:5]) + (", ..." if len(hit) > 5 else "")
            raise Refused(
                f"{short(target)} would delete or replace {len(hit)} untracked or ignored path(s) of the checkout: "
                f"{shown}; move them out of the checkout first"
            )

    def test_argv(self) -> list[str]:
        """system.update.test_command split as a shell would; Refused when it cannot be split or is empty."""
        command = self.config["update"]["test_command"]
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise Refused(f"system.update.test_command {command!r} cannot be split: {exc}") from None
        if not argv:
            raise Refused(f"system.update.test_command {command!r} names no command")
        return argv
