"""The update protocol's step machine: lock, preflight, fetch, test, backup, checkout, build, deploy, verify,
rollback, record (update_protocol.py's docstring says what each step does; this module does it).

    report = Report(out=sys.stdout)
    updater = Updater(config, repo, args, report)   # args: update_protocol.py's parsed arguments
    code = updater.run()                            # or run(updater.rollback_by_hand), dry_run(), dry_rollback()
    record(config, updater, code, started)          # the metrics and the update.log line

The deploy mode (deploy.py: local, compose, kubernetes) is chosen once, in Updater(); git is hello/base/git.py,
the release under test release.py, the child scripts child_scripts.py. A step that fails raises
UpdateError (Refused: before anything changed); Report.step prints it as the step's FAILED line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hello.base.config import EXIT_FAILED, EXIT_OK, served_url
from hello.base.files import write_atomically
from hello.base.git import (
    GitError,
    git,
    git_out,
    has_commit,
    is_ancestor,
    overwritten_local,
    short,
    signature_problem,
    switch_branch,
    tracked_at,
)
from hello.base.job_metrics import metrics_textfile, record_job
from hello.base.locks import LockHeld, job_lock
from hello.update.child_scripts import ScriptFailed, run_script, validate_service
from hello.update.deploy import ComposeDeploy, DeployError, Deployment, LocalDeploy
from hello.update.deploy_kubernetes import KubernetesDeploy
from hello.update.deploy_records import DEPLOY_HELP, DEPLOY_METRIC, deploy_series
from hello.update.history import DEPLOYS, current_user, read_entries, update_log
from hello.update.hooks import HookFailed, run_hooks
from hello.update.release import Release, ReleaseError, Tester, changed_requirements, live_venv, tester_for
from hello.update.watch import Watch, WatchError, watch_metrics, watch_plan, watch_skipped

JOB = "hello_world_update"
REMOTE_TIMEOUT = 20.0  # `git ls-remote`: an unreachable remote must fail fast, not hang
TEST_TIMEOUT = 3600.0
BACKUP_TIMEOUT = 3600.0  # backup_script.py create of a big source
# Local state an upstream commit may never track (system.run_dir and system.backup.destination join them): a checkout
# that wrote there would replace the venv that serves, the secrets, the archives or the kit's own state.
PROTECTED_NAMES = {".venv": "the live venv", ".env": "the secrets file"}
DEPLOY_MODES: dict[str, Callable[[dict[str, Any], Path], Deployment]] = {
    "local": LocalDeploy,
    "compose": ComposeDeploy,
    "kubernetes": KubernetesDeploy,
}

log = logging.getLogger("update_protocol")


class UpdateError(Exception):
    """A step failed; str() is the reason, one line."""


class Refused(UpdateError):
    """The update was refused before anything changed."""


class Locked(UpdateError):
    """Another live update holds the lock."""


class RollbackFailed(UpdateError):
    """The rollback itself failed: the deployment needs a human."""


# What a step may raise: its own UpdateError, or the one-line error of the module it called.
FAILURES = (UpdateError, GitError, DeployError, ScriptFailed)


@dataclass
class Note:
    """What a step reports besides its duration."""

    detail: str = ""
    outcome: str = "ok"


@dataclass
class Report:
    """The run as it goes: printed step lines, durations, and the final outcome."""

    out: TextIO
    steps: dict[str, float] = field(default_factory=dict)
    outcome: str = ""
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # more fields for the update.log entry

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Note]:
        """One step line; a failure in the block is its FAILED line and leaves as an UpdateError."""
        note = Note()
        started = time.monotonic()
        try:
            yield note
        except FAILURES as exc:
            self.line(name, "FAILED", time.monotonic() - started, str(exc))
            if isinstance(exc, UpdateError):
                raise
            raise UpdateError(str(exc)) from None
        finally:
            self.steps[name] = round(self.steps.get(name, 0.0) + time.monotonic() - started, 3)
        self.line(name, note.outcome, time.monotonic() - started, note.detail)

    def line(self, name: str, outcome: str, seconds: float, detail: str) -> None:
        print(f"{name:<10} {outcome:<8} {seconds:6.2f}s  {detail}".rstrip(), file=self.out, flush=True)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


@dataclass
class Found:
    """What preflight found: the checkout's HEAD, the rollback point, the remote's tip ("" when not asked) and
    the pending marker of an interrupted run ({} when none)."""

    head: str
    serving: str
    remote_tip: str
    recovering: dict[str, Any]


class Updater:
    """One run of the protocol against one checkout and one config."""

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
            remote_tip = self.settle(self.preflight(note))
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

    def settle(self, found: Found) -> str:
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
                return self.roll_back("tests-failed", exc, self.reset_checkout)
            finally:
                self.remove_release(release)
        if self.config["update"]["backup_first"]:
            try:
                with self.report.step("backup") as note:
                    self.backup(note)
            except UpdateError as exc:
                return self.roll_back("backup-failed", exc, self.reset_checkout)
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
            return self.roll_back("rolled-back", exc, self.rollback)
        self.pending.unlink(missing_ok=True)
        return EXIT_OK

    def held_by_rollback(self) -> bool:
        """The newest deploy was a rollback by hand away from a commit the remote still holds: stay (no --force)."""
        deploys = [entry for entry in read_entries(self.run_dir) if entry.get("outcome") in DEPLOYS]
        last = deploys[-1] if deploys else {}
        away = last.get("from")
        if self.args.force or last.get("outcome") != "rollback" or not isinstance(away, str):
            return False
        if not (has_commit(self.repo, away) and is_ancestor(self.repo, away, self.target)):
            return False
        self.report.outcome = "held"
        self.report.say(
            f"held: {short(away)} was rolled back by hand at {last.get('time', '?')} and "
            f"{self.remote}/{self.branch} ({short(self.target)}) still holds it; make update FORCE=1 deploys it"
        )
        self.target = self.serving
        return True

    def rollback_by_hand(self) -> int:
        """`rollback [COMMIT]`: back to the previous good release (or COMMIT), tested unless --no-test."""
        with self.report.step("preflight") as note:
            self.settle(self.preflight(note, remote=False))
        with self.report.step("choose") as note:
            self.target = self.rollback_target(self.args.commit)
            self.check_target(self.target)
            subject = git_out(self.repo, "log", "-1", "--format=%s", self.target)
            note.detail = f"{short(self.serving)} -> {short(self.target)} ({subject})"
        if self.args.no_test:
            self.report.extra["tests"] = "skipped (--no-test)"
            self.report.say("test: skipped (--no-test): an emergency rollback to a release that served before")
        self.write_pending()
        code = self.deliver(test=not self.args.no_test)
        if code == EXIT_OK:
            self.report.outcome = "rollback"
        return code

    def dry_rollback(self) -> int:
        with self.report.step("preflight") as note:
            self.settle(self.preflight(note, remote=False))
        self.target = self.rollback_target(self.args.commit)
        self.check_target(self.target)
        self.report.say(f"would roll back {short(self.serving)} -> {short(self.target)}; would run:")
        for name, what in self.plan():
            if not (name == "test" and self.args.no_test):
                self.report.say(f"  {name:<9} {what}")
        self.report.outcome = "dry-run"
        return EXIT_OK

    def rollback_target(self, wanted: str | None) -> str:
        """The commit to go back to: wanted, if it once served as a good release and is an ancestor of the
        checkout, else the newest good release that is not serving now. Raises Refused."""
        goods = good_releases(read_entries(self.run_dir))
        if wanted is None:
            for commit in goods:
                if commit != self.serving and has_commit(self.repo, commit):
                    return commit
            raise Refused(f"no earlier good release in {update_log(self.run_dir)} to roll back to")
        result = git(self.repo, "rev-parse", "--verify", "--quiet", f"{wanted}^{{commit}}", check=False)
        commit = result.stdout.strip()
        if result.returncode != 0 or not commit:
            raise Refused(f"{wanted!r} is not a commit of this checkout")
        if commit == self.serving:
            raise Refused(f"{short(commit)} is serving already")
        if not is_ancestor(self.repo, commit, self.head):
            raise Refused(f"{short(commit)} is not an ancestor of the checkout {short(self.head)}")
        if commit not in goods:
            raise Refused(f"{short(commit)} never served as a good release ({update_log(self.run_dir)})")
        return commit

    def roll_back(self, outcome: str, cause: UpdateError, how: Callable[[Note], None]) -> int:
        """Run the rollback step after cause; the pending marker stays if the rollback itself fails."""
        self.report.outcome, self.report.reason = outcome, str(cause)
        try:
            with self.report.step("rollback") as note:
                how(note)
        except UpdateError as failure:
            self.report.outcome = "rollback-failed"
            self.report.reason = f"{cause}; then the rollback failed: {failure}"
            raise RollbackFailed(self.report.reason) from None
        self.pending.unlink(missing_ok=True)
        return EXIT_FAILED

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
            remote_tip = self.settle(self.preflight(note, planning=True))
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

    def reset_checkout(self, note: Note, deployed: bool = False) -> None:
        """Back to the serving commit: the checkout, then its dependencies (what the build installed)."""
        if not deployed and self.head == self.serving:
            note.detail = f"nothing to undo: the live checkout and venv stayed on {short(self.serving)}"
            return
        switch_branch(self.repo, self.branch, self.serving)  # refuses to touch untracked and ignored paths
        self.head = self.serving
        note.detail = f"checkout reset to the serving commit {short(self.serving)}"
        if not deployed:
            note.detail += "; nothing deployed"
        undone = self.deployment.restore_dependencies(self.target, self.serving)
        if undone:
            note.detail += f"; {undone}"

    def rollback(self, note: Note) -> None:
        """Back to the serving commit: checkout, dependencies, then what serves (if it changed), verified."""
        self.reset_checkout(note, deployed=True)
        note.detail += "; " + self.deployment.rollback(self.serving, self.validate)

    # record

    def write_pending(self) -> None:
        data = {"pid": os.getpid(), "from": self.serving, "to": self.target, "started": time.time()}
        try:
            write_atomically(self.pending, json.dumps(data).encode() + b"\n")
        except OSError as exc:
            raise UpdateError(f"cannot write {self.pending}: {exc}") from None


def good_releases(entries: list[dict[str, Any]]) -> list[str]:
    """The commits a rollback may go to, newest first: each run's `good` (left serving, tested and verified), and
    the `from` of each update that deployed: the commit that was serving when it began (the one `make start`
    served before the first update among them)."""
    found: list[str] = []
    for entry in reversed(entries):
        began = entry.get("from") if entry.get("outcome") in DEPLOYS - {"rollback"} else None
        for commit in (entry.get("good"), began):
            if isinstance(commit, str) and commit and commit not in found:
                found.append(commit)
    return found


def record(config: dict[str, Any], updater: Updater, code: int, started: float) -> None:
    """The metrics and the update.log line; a failure to record is reported, not raised."""
    report = updater.report
    with report.step("record") as note:
        finished = time.time()
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
            "user": current_user(),
            "from": updater.serving or None,
            "to": updater.target or None,
            "outcome": report.outcome or "failed",
            "exit": code,
            "reason": report.reason,
            "steps": report.steps,
            "seconds": round(finished - started, 3),
        }
        entry.update(report.extra)
        good = {"updated": updater.target, "redeployed": updater.target, "rolled-back": updater.serving}
        good["rollback"] = updater.target
        if good.get(report.outcome):  # what this run left serving, tested and verified (history.good_release)
            entry["good"] = good[report.outcome]
        try:
            path = record_job(
                config,
                JOB,
                success=code == EXIT_OK,
                started=started,
                finished=finished,
                extra={"hello_world_update_duration_seconds": finished - started, **watch_metrics(entry.get("watch"))},
                series=deploy_series(entry, finished, metrics_textfile(config, JOB)),
                helps={DEPLOY_METRIC: DEPLOY_HELP},
            )
            logfile = update_log(Path(config["run_dir"]))
            with open(logfile, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        except OSError as exc:
            raise UpdateError(f"could not record the outcome: {exc}") from None
        note.detail = f"{logfile}, {path}"
