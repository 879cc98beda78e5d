"""Safe updates of the deployed checkout: never deploy untested code, never stop the service, drop no request.

Run it:

    python update_protocol.py [--dry-run] [--force] [--json] [--repo DIR]     # make update [DRY_RUN=1] [FORCE=1]
    python update_protocol.py history [--json] [--all] [--repo DIR]         # make history [JSON=1]
    python update_protocol.py rollback [COMMIT] [--no-test] [--dry-run]     # make rollback [TO=commit]

Steps, each printed with its outcome and duration; the first failure stops the run:

  lock       one update at a time: <run_dir>/update.lock (hello_jobs.job_lock); held by a live run -> exit 75
  preflight  system.update.test_command splits as a shell would (an unbalanced quote is refused), clean working
             tree, on system.update.branch, the remote answers `git ls-remote`, and the server answers
             /version: the commit it serves is the rollback point. A server that is not running is refused
             (exit 1): without a serving commit there is nothing to roll back to (`make start` first).
  fetch      `git fetch`; a remote that is not a fast-forward of the checkout (or of the serving commit) is
             refused with nothing changed. Nothing new: exit 0, nothing else done.
  test       in the release, an isolated copy of the new commit (hello/release.py: <run_dir>/release, a git
             worktree with its own venv: the live one when no requirements file changed, else a copy of it with
             the changed files pip-installed), system.update.test_command runs; the live checkout and venv
             have not moved, so a worker the supervisor respawns meanwhile starts the serving code. Failure
             (or a command that cannot run) -> nothing deployed, nothing to undo
  backup     system.update.backup_first (default true): `backup_script.py create`, the normal backup under
             its lock, of what serves now; a failed backup stops the update, nothing deployed (exit 1)
  checkout   the tests passed: `git merge --ff-only` of the live checkout to the tested commit
  build      local: `pip install -r` into the live venv of the requirements files that changed (none: skipped);
             compose: `docker compose build --build-arg COMMIT=<sha> hello-world` with HELLO_COMMIT=<sha>
             (docker-compose.yml tags the image hello-world:<sha>; a fixed image name is also tagged <sha>)
  before-deploy  system.update.hooks.before_deploy (hello/hooks.py), if any: one fails -> rollback, nothing deployed
  deploy     local: `python scripts/service.py reload` (zero-downtime; new code that cannot start leaves the old
             serving); compose: `docker compose up -d --no-deps hello-world` with HELLO_COMMIT=<sha>, then
             wait until `docker compose ps` says healthy (rollback: the old commit's image, rebuilt if gone)
             kubernetes: hello/deploy_kubernetes.py builds and pushes <system.kubernetes.registry>/hello-world:<sha>,
             `kubectl set image`, `kubectl rollout status`, verifies through `kubectl port-forward`; its rollback
             is `kubectl rollout undo` to the revision before, verified the same way
  verify     /version serves the new commit, /readyz is 200, `validation_test.py --only service` passes
  after-deploy   system.update.hooks.after_deploy, if any: one fails -> rollback
  watch      system.update.watch seconds (0: off; deploy: local only) of the new code's own /metrics
             (hello/watch.py): its 5xx ratio above max_error_ratio or its p99 above max_latency_ratio x the p99
             before the deploy, judged from min_requests requests on -> rollback; too little traffic: kept
  rollback   (after a failed deploy, verify or watch) reset to the serving commit, redeploy it unless it still
             serves, verify it; exit 1
  record     SPEC update metrics (hello_jobs.record_job: textfile + Pushgateway) and one JSON line in
             <run_dir>/update.log: time, from, to, outcome, exit code, step durations, and `good`, the commit
             left serving tested and verified (updated, redeployed: the new one; rolled back: the old one)

A run killed half-way (kill -9) leaves <run_dir>/update.pending.json naming its rollback point. The next
run takes over the stale lock, keeps that rollback point, and runs every step again even if the checkout
already matches the remote, so that what serves has been tested and verified.

--dry-run fetches (objects, FETCH_HEAD and the remote-tracking branch only, as `git fetch` does), prints
the commits it would deploy and the steps, and changes nothing else: no release, no merge, no reload.
--force runs every step even when already up to date (redeploys the current commit).

rollback: back to the previous good release (the newest `good` of update.log not serving now), or to COMMIT,
which must be an ancestor of the checkout that once served as a good release: preflight (no remote needed),
choose, then test (unless --no-test, recorded), backup, checkout (`git reset --hard`), build, deploy, verify and
watch as above. While the newest deploy is such a rollback and the remote still holds the commit rolled back from, an
update is "held" (exit 0, nothing done) until --force.

history: every deploy and rollback of <run_dir>/update.log (hello/history.py), newest first: time, user, from
and to commit with their subject lines, outcome, each step's duration; --all: every run, up-to-date ones too.

Exit codes: 0 updated or already up to date (history: printed); 1 refused or failed (nothing changed, or rolled back);
2 bad usage or config; 75 another update holds the lock.
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

from hello.deploy_kubernetes import DeployError, KubernetesDeploy, check_config
from hello.history import DEPLOYS, current_user, history, read_entries, render, update_log
from hello.hooks import HookFailed, run_hooks
from hello.release import RELEASE_DIR, REQUIREMENTS, Release, ReleaseError, live_venv, pip_install
from hello.watch import Watch, WatchError, watch_metrics, watch_plan, watch_skipped
from hello_config import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_OK,
    ConfigError,
    load_config,
    served_url,
)
from hello_jobs import LockHeld, http_get, job_lock, record_job, write_atomically

REPO_DIR = Path(__file__).resolve().parent
JOB = "hello_world_update"
SERVICE = "hello-world"  # the compose service
GIT_TIMEOUT = 120.0  # a local git command (fetch of a big history included)
REMOTE_TIMEOUT = 20.0  # `git ls-remote`: an unreachable remote must fail fast, not hang
TEST_TIMEOUT = 3600.0
VALIDATION_TIMEOUT = 120.0
BACKUP_TIMEOUT = 3600.0  # backup_script.py create of a big source
VERSION_WAIT = 10.0  # after a deploy, how long /version may take to show the new commit

log = logging.getLogger("update_protocol")


class UpdateError(Exception):
    """A step failed; str() is the reason, one line."""


class Refused(UpdateError):
    """The update was refused before anything changed."""


class Locked(UpdateError):
    """Another live update holds the lock."""


class RollbackFailed(UpdateError):
    """The rollback itself failed: the deployment needs a human."""


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
        note = Note()
        started = time.monotonic()
        try:
            yield note
        except UpdateError as exc:
            self.line(name, "FAILED", time.monotonic() - started, str(exc))
            raise
        finally:
            self.steps[name] = round(self.steps.get(name, 0.0) + time.monotonic() - started, 3)
        self.line(name, note.outcome, time.monotonic() - started, note.detail)

    def line(self, name: str, outcome: str, seconds: float, detail: str) -> None:
        print(f"{name:<10} {outcome:<8} {seconds:6.2f}s  {detail}".rstrip(), file=self.out, flush=True)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def short(commit: str | None) -> str:
    return commit[:10] if commit else "-"


# --- git ------------------------------------------------------------------------------------------


def git_env() -> dict[str, str]:
    """Never wait for a password prompt: an update runs from cron."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=10")
    return env


def git(repo: Path, *args: str, timeout: float = GIT_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=timeout, env=git_env()
        )
    except subprocess.TimeoutExpired:
        raise UpdateError(f"`git {' '.join(args)}` did not finish within {timeout:g}s") from None
    except FileNotFoundError:
        raise UpdateError("git is not installed") from None
    if check and result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}").splitlines()[-1]
        raise UpdateError(f"`git {' '.join(args)}` failed: {message}")
    return result


def git_out(repo: Path, *args: str, timeout: float = GIT_TIMEOUT) -> str:
    return git(repo, *args, timeout=timeout).stdout.strip()


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    return git(repo, "merge-base", "--is-ancestor", older, newer, check=False).returncode == 0


def has_commit(repo: Path, commit: str) -> bool:
    return git(repo, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0


def changed_requirements(repo: Path, old: str, new: str) -> list[str]:
    """The requirements files that differ between two commits (and exist in the newer one)."""
    if old == new:
        return []
    names = git_out(repo, "diff", "--name-only", old, new, "--", *REQUIREMENTS).splitlines()
    present = git_out(repo, "ls-tree", "--name-only", new, "--", *REQUIREMENTS).splitlines()
    return [name for name in REQUIREMENTS if name in names and name in present]


# --- the server -----------------------------------------------------------------------------------


def serving_commit(url: str, timeout: float) -> str:
    """The commit /version reports; UpdateError when the server does not answer or cannot tell."""
    try:
        status, body = http_get(f"{url}/version", timeout)
        commit = json.loads(body).get("commit", "") if status == 200 else ""
    except (OSError, ValueError, AttributeError) as exc:
        raise UpdateError(f"the server at {url} does not answer /version ({exc})") from None
    if status != 200:
        raise UpdateError(f"{url}/version answered {status}")
    if not (isinstance(commit, str) and len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)):
        raise UpdateError(f"{url}/version reports commit {commit!r}, not a git commit: no rollback point")
    return commit


# --- the update -----------------------------------------------------------------------------------


class Updater:
    """One run of the protocol against one checkout and one config."""

    def __init__(self, config: dict[str, Any], repo: Path, args: argparse.Namespace, report: Report) -> None:
        self.config, self.repo, self.args, self.report = config, repo, args, report
        update = config["update"]
        self.remote, self.branch, self.mode = update["remote"], update["branch"], update["deploy"]
        self.run_dir = Path(config["run_dir"])
        self.timeout = config["validation"]["timeout"]
        self.url = served_url(config)
        self.serving = ""  # the rollback point
        self.head = ""
        self.target = ""
        self.pending = self.run_dir / "update.pending.json"
        self.recovering: dict[str, Any] = {}
        self.kube = KubernetesDeploy(config, repo) if self.mode == "kubernetes" else None

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
            remote_tip = self.preflight(note)
        if self.up_to_date(remote_tip):
            self.target = self.serving
            return EXIT_OK
        with self.report.step("fetch") as note:
            self.fetch(note)
        if self.held_by_rollback():
            return EXIT_OK
        self.write_pending()  # before the first change: a run killed from here on is recovered
        code = self.deliver(test=True)
        if code == EXIT_OK:
            self.report.outcome = "updated" if self.target != self.serving else "redeployed"
        return code

    def deliver(self, test: bool) -> int:
        """Test self.target in a release, back up, move the checkout, build, deploy and verify; else roll back."""
        if test:
            release = Release(self.repo, self.run_dir, git)
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
                self.build(note, self.serving, self.target)
            self.hooks("before_deploy")
            watch = Watch.before_deploy(self.config["update"], self.mode, self.url, self.timeout)
            with self.report.step("deploy") as note:
                self.deploy(note, self.target)
            with self.report.step("verify") as note:
                self.verify(note, self.target)
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
            self.preflight(note, remote=False)
        with self.report.step("choose") as note:
            self.target = self.rollback_target(self.args.commit)
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
            self.preflight(note, remote=False)
        self.target = self.rollback_target(self.args.commit)
        self.report.say(f"would roll back {short(self.serving)} -> {short(self.target)}; would run:")
        for name, what in self.plan():
            if not (name == "test" and self.args.no_test):
                self.report.say(f"  {name:<9} {what}")
        self.report.outcome = "dry-run"
        return EXIT_OK

    def rollback_target(self, wanted: str | None) -> str:
        """The commit to go back to: wanted, if it once served as a good release and is an ancestor of the
        checkout, else the newest good release that is not serving now. Raises Refused."""
        goods = [str(entry["good"]) for entry in reversed(read_entries(self.run_dir)) if entry.get("good")]
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
            remote_tip = self.preflight(note)
        if self.up_to_date(remote_tip):
            return EXIT_OK
        with self.report.step("fetch") as note:
            self.fetch(note)
        commits = git_out(self.repo, "log", "--oneline", f"{self.serving}..{self.target}")
        self.report.say(f"would deploy {short(self.serving)} -> {short(self.target)} (git log --oneline):")
        self.report.say("\n".join(f"  {line}" for line in commits.splitlines()) or "  (no new commits: redeploy)")
        self.report.say("would run:")
        for name, what in self.plan():
            self.report.say(f"  {name:<9} {what}")
        self.report.outcome = "dry-run"
        return EXIT_OK

    def plan(self) -> list[tuple[str, str]]:
        if self.mode == "local":
            changed = changed_requirements(self.repo, self.serving, self.target)
            build = f"pip install -r {', '.join(changed)} (live venv)" if changed else "nothing: requirements unchanged"
            deploy = "python scripts/service.py reload"
        elif self.kube:
            build = f"docker (or podman) build --build-arg COMMIT=... and push {self.kube.image(short(self.target))}..."
            deploy = "kubectl set image deployment/hello-world; kubectl rollout status (failure: rollout undo)"
        else:
            build = f"HELLO_COMMIT={short(self.target)} docker compose build --build-arg COMMIT=... {SERVICE}"
            deploy = f"HELLO_COMMIT={short(self.target)} docker compose up -d --no-deps {SERVICE}; wait until healthy"
        update = self.config["update"]
        steps = [
            ("test", f"{update['test_command']}  (in {self.run_dir / RELEASE_DIR} at {short(self.target)})"),
            ("backup", "backup_script.py create" if update["backup_first"] else ""),
            ("checkout", f"git {'reset --hard' if self.args.rollback else 'merge --ff-only'} {short(self.target)}"),
            ("build", build),
            ("before-deploy", "; ".join(update["hooks"]["before_deploy"])),
            ("deploy", deploy),
            ("verify", f"{self.url}/version = {short(self.target)}, /readyz 200, validation_test.py --only service"),
            ("after-deploy", "; ".join(update["hooks"]["after_deploy"])),
            ("watch", watch_plan(update, self.mode, self.url)),
            ("record", f"{update_log(self.run_dir)} and the {JOB} metrics"),
        ]
        return [(name, what) for name, what in steps if what]  # an empty one is off: no step

    # the steps

    def preflight(self, note: Note, remote: bool = True) -> str:
        """Check the test command, the checkout, the remote (unless not remote) and the server; return the
        remote's tip ("" without remote). Raises Refused."""
        self.test_argv()
        try:
            top = git_out(self.repo, "rev-parse", "--show-toplevel")
        except UpdateError:
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
        self.head = git_out(self.repo, "rev-parse", "HEAD")
        remote_tip = self.ls_remote() if remote else ""
        try:
            self.serving = (
                self.kubernetes(self.kube.serving_commit) if self.kube else serving_commit(self.url, self.timeout)
            )
        except UpdateError as exc:
            raise Refused(f"{exc}: nothing to roll back to; start the server first (make start)") from None
        self.recover_pending()
        note.detail = (
            f"on {self.branch}, clean; serving {short(self.serving)}; checkout {short(self.head)}; "
            f"{self.remote}/{self.branch} {short(remote_tip)}"
        )
        return remote_tip

    def ls_remote(self) -> str:
        if git(self.repo, "remote", "get-url", self.remote, check=False).returncode != 0:
            raise Refused(f"the checkout has no remote named {self.remote} (system.update.remote)")
        try:
            result = git(self.repo, "ls-remote", "--heads", self.remote, self.branch, timeout=REMOTE_TIMEOUT)
        except UpdateError as exc:
            raise Refused(f"the remote {self.remote} is unreachable: {exc}") from None
        for line in result.stdout.splitlines():
            commit, _, ref = line.partition("\t")
            if ref == f"refs/heads/{self.branch}":
                return commit
        raise Refused(f"the remote {self.remote} has no branch {self.branch}")

    def recover_pending(self) -> None:
        """An earlier run died half-way: keep its rollback point, which was verified, and run every step."""
        try:
            pending = json.loads(self.pending.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.pending, exc)
            return
        rollback_point = str(pending.get("from", ""))
        self.recovering = pending
        if rollback_point and rollback_point != self.serving and has_commit(self.repo, rollback_point):
            log.warning(
                "an update by PID %s (%s -> %s) was interrupted: its rollback point %s is kept (serving now: %s)",
                pending.get("pid"),
                short(rollback_point),
                short(pending.get("to")),
                short(rollback_point),
                short(self.serving),
            )
            self.serving = rollback_point
        else:
            log.warning("an update by PID %s was interrupted: running every step again", pending.get("pid"))

    def fetch(self, note: Note) -> None:
        git(self.repo, "fetch", "--quiet", self.remote, self.branch, timeout=GIT_TIMEOUT)
        self.target = git_out(self.repo, "rev-parse", "FETCH_HEAD^{commit}")
        if not has_commit(self.repo, self.serving):
            raise Refused(f"the serving commit {short(self.serving)} is not in this repository: no rollback point")
        for name, commit in (("checkout", self.head), ("serving commit", self.serving)):
            if not is_ancestor(self.repo, commit, self.target):
                raise Refused(
                    f"{self.remote}/{self.branch} ({short(self.target)}) is not a fast-forward of the {name} "
                    f"({short(commit)}): diverged history, refusing"
                )
        count = git_out(self.repo, "rev-list", "--count", f"{self.serving}..{self.target}")
        note.detail = f"{self.remote}/{self.branch} {short(self.serving)}..{short(self.target)} ({count} new commit(s))"

    def checkout(self, note: Note) -> None:
        """The tests passed: move the live checkout to the tested commit (back to it: a rollback by hand)."""
        if self.target != self.head:
            forward = is_ancestor(self.repo, self.head, self.target)
            how = ("merge", "--ff-only", "--quiet") if forward else ("reset", "--hard", "--quiet")
            try:
                git(self.repo, *how, self.target)
            except UpdateError:
                if not self.recovering:  # nothing changed: no interrupted update for the next run to finish
                    self.pending.unlink(missing_ok=True)
                raise
            self.head = self.target
        note.detail = f"the checkout is at {short(self.target)}"

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
        env = release.env({**os.environ, "PATH": path})
        self.report.say(f"test: {made}")
        self.report.say(f"test: {command}  (in {release.path})")
        try:
            result = subprocess.run(
                argv,
                cwd=release.path,
                env=env,
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
        note.detail = self.run_script("backup_script.py", "create", timeout=BACKUP_TIMEOUT) or "backup taken"

    def run_script(self, script: str, command: str, timeout: float) -> str:
        """`python <checkout>/<script> <command>` with this config; its last line. UpdateError when it fails."""
        argv = [sys.executable, str(self.repo / script), command]
        env = {**os.environ, "HELLO_CONFIG": self.config["config_file"]}
        name = f"{Path(script).name} {command}"
        try:
            result = subprocess.run(argv, cwd=self.repo, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UpdateError(f"{name} did not finish within {timeout:g}s") from None
        said = (result.stdout.strip() + "\n" + result.stderr.strip()).strip().splitlines()
        if result.returncode != 0:
            raise UpdateError(f"{name} exited {result.returncode}: {said[-1] if said else ''}")
        return said[-1] if said else ""

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
        """The watch step (hello/watch.py); a regression is an UpdateError: deliver rolls back."""
        if watch is None:
            skipped = watch_skipped(self.config["update"], self.mode)
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
        except (UpdateError, OSError) as exc:  # the next run removes it first anyway
            log.warning("could not remove the release %s: %s", release.path, exc)

    def reset_checkout(self, note: Note, deployed: bool = False) -> None:
        """Back to the serving commit: the checkout, then its dependencies (local mode)."""
        if not deployed and self.head == self.serving:
            note.detail = f"nothing to undo: the live checkout and venv stayed on {short(self.serving)}"
            return
        git(self.repo, "reset", "--hard", "--quiet", self.serving)
        self.head = self.serving
        note.detail = f"checkout reset to the serving commit {short(self.serving)}"
        if not deployed:
            note.detail += "; nothing deployed"
        if self.mode == "local":
            changed = changed_requirements(self.repo, self.target, self.serving)
            if changed:  # the build may have installed the new pins
                self.pip_install(changed)
                note.detail += f"; reinstalled {', '.join(changed)}"

    def build(self, note: Note, old: str, new: str) -> None:
        if self.kube:
            note.detail = self.kubernetes(self.kube.build, new)
            return
        if self.mode == "compose":
            note.detail = f"{self.compose_build(new)} built from {short(new)}"
            return
        changed = changed_requirements(self.repo, old, new)
        if not changed:
            note.outcome, note.detail = "skipped", "requirements unchanged"
            return
        self.pip_install(changed)
        note.detail = f"installed {', '.join(changed)} into the live venv (tested in the release)"

    def pip_install(self, names: list[str]) -> None:
        venv = live_venv()
        if venv is None:
            raise UpdateError(
                f"{sys.executable} is not a virtualenv: refusing to pip install into it (use make update)"
            )
        try:
            pip_install(venv, self.repo, names)
        except ReleaseError as exc:
            raise UpdateError(str(exc)) from None

    def deploy(self, note: Note, commit: str) -> None:
        if self.kube:
            note.detail = self.kubernetes(self.kube.deploy, commit)
            return
        if self.mode == "compose":
            self.compose_up(commit)
            note.detail = f"HELLO_COMMIT={short(commit)} docker compose up -d --no-deps {SERVICE}: healthy"
            return
        # scripts/service.py, not the new hello_world.py: it reports why new code that cannot start was refused.
        timeout = self.config["server"]["reload_timeout"] + 60
        note.detail = self.run_script("scripts/service.py", "reload", timeout=timeout) or "reloaded"

    def verify(self, note: Note, commit: str) -> None:
        if self.kube:
            note.detail = self.kubernetes(self.kube.verify, commit, self.validate_service)
            return
        deadline = time.monotonic() + VERSION_WAIT
        while True:
            try:
                now = serving_commit(self.url, self.timeout)
            except UpdateError as exc:
                now, why = "", str(exc)
            else:
                why = f"{self.url}/version reports {short(now)}, expected {short(commit)}"
            if now == commit:
                break
            if time.monotonic() > deadline:
                raise UpdateError(why)
            time.sleep(0.1)
        try:
            status, _ = http_get(f"{self.url}/readyz", self.timeout)
        except OSError as exc:
            raise UpdateError(f"{self.url}/readyz does not answer: {exc}") from None
        if status != 200:
            raise UpdateError(f"{self.url}/readyz answered {status}")
        self.validate_service()
        note.detail = f"serving {short(commit)}, /readyz 200, validation_test.py --only service passed"

    def validate_service(self, config_file: Path | None = None) -> None:
        script = self.repo / "validation_test.py"
        if not script.exists():
            raise UpdateError(f"{script} not found: cannot validate the service")
        env = {**os.environ, "HELLO_CONFIG": str(config_file or self.config["config_file"])}
        command = [sys.executable, str(script), "--only", "service"]
        try:
            result = subprocess.run(
                command, cwd=self.repo, env=env, capture_output=True, text=True, timeout=VALIDATION_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            raise UpdateError(f"validation_test.py did not finish within {VALIDATION_TIMEOUT:g}s") from None
        if result.returncode != 0:
            lines = (result.stdout + result.stderr).splitlines()
            failed = [line.strip() for line in lines if "FAIL" in line] or lines[-3:]
            for line in lines[-20:]:
                self.report.say(f"  | {line}")
            raise UpdateError(
                f"validation_test.py --only service exited {result.returncode}: {'; '.join(failed)[:300]}"
            )

    def rollback(self, note: Note) -> None:
        """Back to the serving commit: checkout, dependencies, then what serves (if it changed), verified."""
        self.reset_checkout(note, deployed=True)
        done = [note.detail]
        if self.kube:
            note.detail += "; " + self.kubernetes(self.kube.rollback, self.serving, self.validate_service)
            return
        if self.mode == "compose":
            done.append(self.compose_restore_image(self.serving))
        try:
            still = serving_commit(self.url, self.timeout) == self.serving
        except UpdateError:
            still = False
        if still and self.mode == "local":
            done.append("the old code never stopped serving")
        else:
            self.deploy(Note(), self.serving)
            done.append("redeployed")
        self.verify(Note(), self.serving)
        done.append("verified")
        note.detail = "; ".join(done)

    def kubernetes(self, step: Callable[..., Any], *args: Any) -> Any:
        """A step of hello/deploy_kubernetes.py, its DeployError as an UpdateError of this step."""
        try:
            return step(*args)
        except DeployError as exc:
            raise UpdateError(str(exc)) from None

    # compose mode: every compose command runs with HELLO_COMMIT=<commit> in its environment, which
    # docker-compose.yml interpolates into the image tag (hello-world:${HELLO_COMMIT:-latest}) and the
    # COMMIT build argument; --build-arg COMMIT=<commit> says it again for a file that does not.

    def docker(self, *args: str, commit: str = "", timeout: float = 600.0) -> str:
        env = {**os.environ, "HELLO_COMMIT": commit} if commit else None
        try:
            result = subprocess.run(
                ["docker", *args], cwd=self.repo, env=env, capture_output=True, text=True, timeout=timeout
            )
        except FileNotFoundError:
            raise UpdateError("docker is not installed (system.update.deploy is compose)") from None
        except subprocess.TimeoutExpired:
            raise UpdateError(f"`docker {' '.join(args)}` did not finish within {timeout:g}s") from None
        if result.returncode != 0:
            tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
            raise UpdateError(f"`docker {' '.join(args)}` failed: {tail[0] if tail else result.returncode}")
        return result.stdout

    def compose_image(self, commit: str) -> tuple[str, str]:
        """The image compose runs for commit, and the commit's own tag of it (the same when the file tags so)."""
        lines = self.docker("compose", "config", "--images", SERVICE, commit=commit, timeout=60).split()
        if not lines:
            raise UpdateError(f"docker compose config names no image for {SERVICE}")
        image = lines[0]
        name, _, tag = image.rpartition(":")
        repository = name if name and "/" not in tag else image
        return image, f"{repository}:{commit}"

    def compose_build(self, commit: str) -> str:
        image, tagged = self.compose_image(commit)
        self.docker("compose", "build", "--build-arg", f"COMMIT={commit}", SERVICE, commit=commit)
        if tagged != image:
            self.docker("tag", image, tagged)  # kept for a fast rollback
        return image

    def compose_restore_image(self, commit: str) -> str:
        """Make the image compose runs for commit that commit's build again: retag it, or rebuild it."""
        image, tagged = self.compose_image(commit)
        try:
            self.docker("image", "inspect", tagged, timeout=60)
        except UpdateError:
            self.compose_build(commit)
            return f"{image} rebuilt from {short(commit)}"
        if tagged != image:
            self.docker("tag", tagged, image)
            return f"{image} retagged from {tagged}"
        return f"{image} still there"

    def compose_up(self, commit: str) -> None:
        self.docker("compose", "up", "-d", "--no-deps", SERVICE, commit=commit)
        # The image's HEALTHCHECK runs its first check one interval (30 s) after the start.
        limit = self.config["server"]["reload_timeout"] + 60
        deadline = time.monotonic() + limit
        state = "unknown"
        while time.monotonic() < deadline:
            state = self.compose_health(commit)
            if state in ("healthy", "running"):
                return
            if state in ("unhealthy", "exited", "dead"):
                break
            time.sleep(0.5)
        raise UpdateError(f"{SERVICE} is {state} after docker compose up (waited up to {limit:g}s)")

    def compose_health(self, commit: str) -> str:
        """healthy/unhealthy/starting from the container's health check; its state when it has none."""
        text = self.docker("compose", "ps", "--all", "--format", "json", SERVICE, commit=commit, timeout=60).strip()
        try:
            data = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]
        except ValueError:
            raise UpdateError(f"docker compose ps printed no JSON: {text[:100]!r}") from None
        if not data:
            return "missing"
        entry = data[0]
        return str(entry.get("Health") or entry.get("State") or "unknown").lower()

    # record

    def write_pending(self) -> None:
        data = {"pid": os.getpid(), "from": self.serving, "to": self.target, "started": time.time()}
        try:
            write_atomically(self.pending, json.dumps(data).encode() + b"\n")
        except OSError as exc:
            raise UpdateError(f"cannot write {self.pending}: {exc}") from None


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
        if good.get(report.outcome):  # what this run left serving, tested and verified (hello.release.good_release)
            entry["good"] = good[report.outcome]
        try:
            path = record_job(
                config,
                JOB,
                success=code == EXIT_OK,
                started=started,
                finished=finished,
                extra={"hello_world_update_duration_seconds": finished - started, **watch_metrics(entry.get("watch"))},
            )
            logfile = update_log(Path(config["run_dir"]))
            with open(logfile, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        except OSError as exc:
            raise UpdateError(f"could not record the outcome: {exc}") from None
        note.detail = f"{logfile}, {path}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Update the deployed checkout safely (see the module docstring).")
    parser.add_argument("--dry-run", action="store_true", help="print the commits and steps; change nothing")
    parser.add_argument("--force", action="store_true", help="run every step even when already up to date")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout (steps go to stderr)")
    parser.add_argument("--repo", type=Path, default=REPO_DIR, help="the deployment checkout (default: %(default)s)")
    return parser.parse_args(argv, argparse.Namespace(rollback=False, commit=None, no_test=False))


def parse_rollback_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="update_protocol.py rollback", description="Back to a good release.")
    parser.add_argument("commit", nargs="?", help="a commit that once served as a good release (default: the last)")
    parser.add_argument("--no-test", action="store_true", help="an emergency: skip the tests (recorded as such)")
    parser.add_argument("--dry-run", action="store_true", help="print the commit and steps; change nothing")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout (steps go to stderr)")
    parser.add_argument("--repo", type=Path, default=REPO_DIR, help="the deployment checkout (default: %(default)s)")
    return parser.parse_args(argv, argparse.Namespace(rollback=True, force=False))


def load_for(repo: Path) -> dict[str, Any]:
    """HELLO_CONFIG, else the config.yaml of the checkout (--repo). Raises ConfigError."""
    return load_config(None if os.environ.get("HELLO_CONFIG") or repo == REPO_DIR else repo / "config.yaml")


def history_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="update_protocol.py history", description="Every deploy and rollback.")
    parser.add_argument("--json", action="store_true", help="a JSON list, newest first")
    parser.add_argument("--all", action="store_true", help="every run, not only deploys and rollbacks")
    parser.add_argument("--repo", type=Path, default=REPO_DIR, help="the deployment checkout (default: %(default)s)")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    try:
        config = load_for(repo)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    entries = history(Path(config["run_dir"]), repo, every_run=args.all)
    print(json.dumps(entries, indent=2) if args.json else render(entries))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["history"]:
        return history_main(argv[1:])
    logging.basicConfig(level=logging.INFO, format="update: %(levelname)s %(message)s")
    args = parse_rollback_args(argv[1:]) if argv[:1] == ["rollback"] else parse_args(argv)
    repo = args.repo.resolve()
    try:
        config = load_for(repo)
        check_config(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    report = Report(out=sys.stderr if args.json else sys.stdout)
    updater = Updater(config, repo, args, report)
    started, clock = time.time(), time.monotonic()
    if args.dry_run:
        report.say("dry run: changes nothing (git fetch moves only FETCH_HEAD and the remote-tracking branch)")
    try:
        if args.rollback:
            code = updater.run(updater.rollback_by_hand) if not args.dry_run else updater.dry_rollback()
        else:
            code = updater.dry_run() if args.dry_run else updater.run()
    except Locked as exc:
        code, report.outcome, report.reason = EXIT_LOCKED, "locked", str(exc)
    except UpdateError as exc:
        code = EXIT_FAILED
        report.outcome = report.outcome or ("refused" if isinstance(exc, Refused) else "failed")
        report.reason = report.reason or str(exc)
    if not args.dry_run and code != EXIT_LOCKED:  # the run holding the lock records its own outcome
        try:
            record(config, updater, code, started)
        except UpdateError as exc:  # one line on stderr; the metrics were attempted (pushed) whatever it was
            print(f"update_protocol.py: {exc}", file=sys.stderr)
    summary = {
        "outcome": report.outcome,
        "exit": code,
        "from": updater.serving or None,
        "to": updater.target or None,
        "reason": report.reason,
        "steps": report.steps,
        "seconds": round(time.monotonic() - clock, 3),
    }
    verdict = {
        "updated": f"updated {short(updater.serving)} -> {short(updater.target)}",
        "redeployed": f"redeployed {short(updater.target)}",
        "rollback": f"rolled back by hand {short(updater.serving)} -> {short(updater.target)}",
        "held": f"held at {short(updater.serving)} after a rollback by hand (FORCE=1 goes on)",
        "up-to-date": f"already up to date at {short(updater.serving)}",
        "dry-run": "dry run: nothing changed",
        "tests-failed": f"tests failed: nothing deployed, still serving {short(updater.serving)} ({report.reason})",
        "backup-failed": f"backup failed: nothing deployed, still serving {short(updater.serving)} ({report.reason})",
        "rolled-back": f"rolled back to {short(updater.serving)}, which serves ({report.reason})",
        "rollback-failed": f"ROLLBACK FAILED, needs a human: {report.reason}",
        "locked": report.reason,
    }.get(report.outcome, f"{report.outcome}: {report.reason}; nothing changed")
    report.say(f"update: {verdict} in {summary['seconds']:.1f}s")
    if args.json:
        print(json.dumps(summary))
    return code


if __name__ == "__main__":
    sys.exit(main())
