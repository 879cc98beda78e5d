"""The update protocol's step machine: lock, preflight, fetch, test, backup, checkout, build, deploy, verify,
rollback, record (update_protocol.py's docstring says what each step does; this module does it).

    report = Report(out=sys.stdout)                 # report.py: the step lines, and record() at the end
    updater = Updater(config, repo, args, report)   # args: update_protocol.py's parsed arguments
    code = updater.run()                            # or run(updater.rollback_by_hand), dry_run(), dry_rollback()
    record(config, updater, code, started)          # the metrics and the update.log line

The parts, where a newcomer looks for them: the checks before anything changes (preflight, the target's checks) in
checks.py; the rollback step and the rollback by hand in rollback.py; the step lines and the record in report.py;
the failures in errors.py. The deploy mode (deploy.py: local, compose, kubernetes) is chosen once, in Updater(); git
is hello/base/git.py, the release under test release.py, the child scripts child_scripts.py. A step that fails
raises UpdateError (Refused: before anything changed); Report.step prints it as the step's FAILED line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hello.base.config import EXIT_OK, served_url
from hello.base.files import write_atomically
from hello.base.git import GitError, git, git_out, has_commit, is_ancestor, short, switch_branch
from hello.base.locks import LockHeld, job_lock
from hello.update.checks import Found, PreDeployChecks
from hello.update.child_scripts import run_script, validate_service
from hello.update.deploy import ComposeDeploy, Deployment, LocalDeploy
from hello.update.deploy_kubernetes import KubernetesDeploy
from hello.update.errors import Locked, Refused, UpdateError
from hello.update.history import update_log
from hello.update.hooks import HookFailed, run_hooks
from hello.update.release import Release, ReleaseError, Tester, changed_requirements
from hello.update.report import JOB, Note, Report
from hello.update.rollback import Rollbacks
from hello.update.watch import Watch, WatchError, watch_plan, watch_skipped

TEST_TIMEOUT = 3600.0
BACKUP_TIMEOUT = 3600.0  # backup_script.py create of a big source
DEPLOY_MODES: dict[str, Callable[[dict[str, Any], Path], Deployment]] = {
    "local": LocalDeploy,
    "compose": ComposeDeploy,
    "kubernetes": KubernetesDeploy,
}

log = logging.getLogger("update_protocol")


class Updater(PreDeployChecks, Rollbacks):
    """One run of the protocol against one checkout and one config: the step machine (checks.py: the checks before
    anything changes; rollback.py: the rollback step and the rollback by hand)."""

    def __init__(self, config: dict[str, Any], repo: Path, args: argparse.Namespace, report: Report) -> None:
        self.config, self.repo, self.args, self.report = config, repo, args, report
        update = config["update"]
        self.remote, self.branch = update["remote"], update["branch"]
        self.run_dir = Path(config["run_dir"])
        self.url = served_url(config)
        self.deployment = DEPLOY_MODES[update["deploy"]](config, repo)
        self.serving = ""  # the rollback point
        self.head = ""
        self.target = ""
        self.pending = self.run_dir / "update.pending.json"
        self.recovering: dict[str, Any] = {}
        self.tester: Tester | None = None  # who runs the tests (None: this process's user)

    # the whole run

    def run(self, body: Callable[[], int] | None = None) -> int:
        """body (default: the update) under the update lock."""
        with contextlib.ExitStack() as stack:
            with self.report.step("lock") as note:
                lock = self.run_dir / "update.lock"
                try:
                    stack.enter_context(job_lock(lock))
                except LockHeld as exc:
                    raise Locked(f"another update holds {lock} (PID {exc.pid})") from None
                except OSError as exc:
                    raise UpdateError(f"cannot take the lock {lock}: {exc}") from None
                note.detail = str(lock)
            return (body or self.run_locked)()

    def run_locked(self) -> int:
        with self.report.step("preflight") as note:
            remote_tip = self.set_commits(self.preflight(note))
        if self.up_to_date(remote_tip):
            self.target = self.serving
            return EXIT_OK
        with self.report.step("fetch") as note:
            self.target = self.fetch(note)
        if self.held_by_rollback():
            return EXIT_OK
        self.write_pending()  # before the first change: a run killed from here on is recovered
        code = self.deliver(test=True)
        if code == EXIT_OK:
            self.report.outcome = "updated" if self.target != self.serving else "redeployed"
        return code

    def set_commits(self, found: Found) -> str:
        """Take what preflight found as this run's commits; the remote's tip."""
        self.head, self.serving, self.recovering = found.head, found.serving, found.recovering
        return found.remote_tip

    def deliver(self, test: bool) -> int:
        """Test self.target in a release, back up, move the checkout, build, deploy and verify; else roll back."""
        if test:
            release = Release(self.repo, self.run_dir, self.tester)
            try:
                with self.report.step("test") as note:
                    self.test(note, release)
            except UpdateError as exc:
                return self.run_rollback_step("tests-failed", exc, self.reset_checkout)
            finally:
                self.remove_release(release)
        if self.config["update"]["backup_first"]:
            try:
                with self.report.step("backup") as note:
                    self.backup(note)
            except UpdateError as exc:
                return self.run_rollback_step("backup-failed", exc, self.reset_checkout)
        with self.report.step("checkout") as note:
            self.checkout(note)
        try:
            with self.report.step("build") as note:
                note.outcome, note.detail = self.deployment.build(self.serving, self.target)
            self.hooks("before_deploy")
            update, timeout = self.config["update"], self.config["validation"]["timeout"]
            watch = Watch.before_deploy(update, self.deployment, self.url, timeout)
            with self.report.step("deploy") as note:
                note.detail = self.deployment.deploy(self.target)
            with self.report.step("verify") as note:
                note.detail = self.deployment.verify(self.target, self.validate)
            self.hooks("after_deploy")
            self.watch(watch)
        except UpdateError as exc:
            return self.run_rollback_step("rolled-back", exc, self.undo_deploy)
        self.pending.unlink(missing_ok=True)
        return EXIT_OK

    def up_to_date(self, remote_tip: str) -> bool:
        """Nothing to do (no --force, no interrupted update to finish): say so and set the outcome."""
        if self.args.force or self.recovering or not remote_tip == self.head == self.serving:
            return False
        self.report.outcome = "up-to-date"
        self.report.say(
            f"nothing new: {self.remote}/{self.branch} is {short(remote_tip)}, which is serving "
            "(no test, backup or deploy)"
        )
        return True

    def dry_run(self) -> int:
        with self.report.step("preflight") as note:
            remote_tip = self.set_commits(self.preflight(note, planning=True))
        if self.up_to_date(remote_tip):
            return EXIT_OK
        with self.report.step("fetch") as note:
            self.target = self.fetch(note)
        commits = git_out(self.repo, "log", "--oneline", f"{self.serving}..{self.target}")
        self.report.say(f"would deploy {short(self.serving)} -> {short(self.target)} (git log --oneline):")
        self.report.say("\n".join(f"  {line}" for line in commits.splitlines()) or "  (no new commits: redeploy)")
        self.report.say("would run:")
        for name, what in self.plan():
            self.report.say(f"  {name:<9} {what}")
        self.report.outcome = "dry-run"
        return EXIT_OK

    def plan(self) -> list[tuple[str, str]]:
        build, deploy = self.deployment.plan(self.serving, self.target)
        update = self.config["update"]
        steps = [
            ("test", f"{update['test_command']}  (in a copy of {short(self.target)}{self.tested_as()})"),
            ("backup", "backup_script.py create" if update["backup_first"] else ""),
            ("checkout", f"git checkout --no-overwrite-ignore -B {self.branch} {short(self.target)}"),
            ("build", build),
            ("before-deploy", "; ".join(update["hooks"]["before_deploy"])),
            ("deploy", deploy),
            ("verify", f"{self.url}/version = {short(self.target)}, /readyz 200, validation_test.py --only service"),
            ("after-deploy", "; ".join(update["hooks"]["after_deploy"])),
            ("watch", watch_plan(update, self.deployment, self.url)),
            ("record", f"{update_log(self.run_dir)} and the {JOB} metrics"),
        ]
        return [(name, what) for name, what in steps if what]  # an empty one is off: no step

    # the steps

    def fetch(self, note: Note) -> str:
        """`git fetch` of the branch: the commit to deploy. Refused unless it fast-forwards what serves."""
        git(self.repo, "fetch", "--quiet", self.remote, self.branch)
        target = git_out(self.repo, "rev-parse", "FETCH_HEAD^{commit}")
        if not has_commit(self.repo, self.serving):
            raise Refused(f"the serving commit {short(self.serving)} is not in this repository: no rollback point")
        for name, commit in (("checkout", self.head), ("serving commit", self.serving)):
            if not is_ancestor(self.repo, commit, target):
                raise Refused(
                    f"{self.remote}/{self.branch} ({short(target)}) is not a fast-forward of the {name} "
                    f"({short(commit)}): diverged history, refusing"
                )
        self.check_target(target)
        count = git_out(self.repo, "rev-list", "--count", f"{self.serving}..{target}")
        note.detail = f"{self.remote}/{self.branch} {short(self.serving)}..{short(target)} ({count} new commit(s))"
        return target

    def checkout(self, note: Note) -> None:
        """The tests passed: move the live checkout to the tested commit (back to it: a rollback by hand)."""
        if self.target != self.head:
            try:
                switch_branch(self.repo, self.branch, self.target)
            except GitError:
                if not self.recovering:  # nothing changed: no interrupted update for the next run to finish
                    self.pending.unlink(missing_ok=True)
                raise
            self.head = self.target
        note.detail = f"the checkout is at {short(self.target)}"

    def tested_as(self) -> str:
        return f", as {self.tester.name}" if self.tester else ""

    def test(self, note: Note, release: Release) -> None:
        command = self.config["update"]["test_command"]
        argv = self.test_argv()  # checked in preflight; a Refused here still fails the step (an UpdateError)
        try:
            made = release.create(self.target, changed_requirements(self.repo, self.serving, self.target))
        except (ReleaseError, OSError) as exc:
            raise UpdateError(f"cannot make the release to test: {exc}") from None
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        options = release.run_options({**os.environ, "PATH": path})
        self.report.say(f"test: {made}")
        self.report.say(f"test: {command}  (in {release.path})")
        try:
            result = subprocess.run(
                argv,
                **options,
                stdout=self.report.out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=TEST_TIMEOUT,
            )
        except FileNotFoundError:
            raise UpdateError(f"test command not found: {argv[0]} (system.update.test_command)") from None
        except subprocess.TimeoutExpired:
            raise UpdateError(f"`{command}` did not finish within {TEST_TIMEOUT:g}s") from None
        except OSError as exc:  # not executable (PermissionError), not a program (ENOEXEC), ...
            why = exc.strerror or type(exc).__name__
            raise UpdateError(f"test command cannot run: {argv[0]}: {why} (system.update.test_command)") from None
        if result.returncode != 0:
            raise UpdateError(f"`{command}` exited {result.returncode} on {short(self.target)}")
        note.detail = f"`{command}` passed on {short(self.target)}"

    def backup(self, note: Note) -> None:
        """One backup now, as `make backup` takes it (its own lock, metrics and pruning), before anything moves."""
        config_file = self.config["config_file"]
        said = run_script(self.repo, config_file, "backup_script.py", "create", timeout=BACKUP_TIMEOUT)
        note.detail = said or "backup taken"

    def validate(self, config_file: Path) -> None:
        validate_service(self.repo, config_file, self.report.say)

    def hooks(self, kind: str) -> None:
        """system.update.hooks.<kind>, as one step (none configured: no step)."""
        commands = self.config["update"]["hooks"][kind]
        if not commands:
            return
        with self.report.step(kind.replace("_", "-")) as note:
            try:
                count = run_hooks(kind, commands, self.repo, self.target, self.serving, self.report.out)
            except HookFailed as exc:
                raise UpdateError(str(exc)) from None
            note.detail = f"{count} hook(s) passed"

    def watch(self, watch: Watch | None) -> None:
        """The watch step (hello/update/watch.py); a regression is an UpdateError: deliver rolls back."""
        if watch is None:
            skipped = watch_skipped(self.config["update"], self.deployment)
            if skipped:
                self.report.say(f"watch: {skipped}")
            return
        with self.report.step("watch") as note:
            try:
                note.outcome, note.detail = watch.watch(self.target, self.config["server"]["drain_timeout"])
            except WatchError as exc:
                raise UpdateError(f"watch: {exc}") from None
            finally:
                self.report.extra["watch"] = watch.record

    def remove_release(self, release: Release) -> None:
        try:
            release.remove()
        except (GitError, OSError) as exc:  # the next run removes it first anyway
            log.warning("could not remove the release %s: %s", release.path, exc)

    # record

    def write_pending(self) -> None:
        data = {"pid": os.getpid(), "from": self.serving, "to": self.target, "started": time.time()}
        try:
            write_atomically(self.pending, json.dumps(data).encode() + b"\n")
        except OSError as exc:
            raise UpdateError(f"cannot write {self.pending}: {exc}") from None
