"""Going back: the rollback step after a failed step (the checkout and its dependencies, and what serves if the
deploy changed it), and the rollback by hand (`update_protocol.py rollback [COMMIT]`) to an earlier good release,
which the next update then holds (no --force: it does not deploy the commit rolled back from again).

    class Updater(PreDeployChecks, Rollbacks)      # the step machine (updater.py) runs them
    code = updater.run(updater.rollback_by_hand)   # or updater.dry_rollback()
    good_releases(read_entries(run_dir))           # the commits a rollback may go to, newest first
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hello.base.config import EXIT_FAILED, EXIT_OK
from hello.base.git import git, git_out, has_commit, is_ancestor, short, switch_branch
from hello.update.deploy import Deployment
from hello.update.errors import Refused, RollbackFailed, UpdateError
from hello.update.history import DEPLOYS, read_entries, update_log
from hello.update.report import Note, Report


class Rollbacks:
    """The rollbacks of the Updater (updater.py), on its state and steps (preflight, deliver, plan, ...)."""

    args: Any
    repo: Path
    run_dir: Path
    report: Report
    remote: str
    branch: str
    deployment: Deployment
    pending: Path
    head: str
    serving: str
    target: str

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
            self.set_commits(self.preflight(note, remote=False))
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
            self.set_commits(self.preflight(note, remote=False))
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

    def run_rollback_step(self, outcome: str, cause: UpdateError, how: Callable[[Note], None]) -> int:
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

    def undo_deploy(self, note: Note) -> None:
        """Back to the serving commit: checkout, dependencies, then what serves (if it changed), verified."""
        self.reset_checkout(note, deployed=True)
        note.detail += "; " + self.deployment.rollback(self.serving, self.validate)


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
