"""Safe updates of the deployed checkout: never deploy untested code, never stop the service, drop no request.

Run it:

    python update_protocol.py [--dry-run] [--force] [--json] [--repo DIR]     # make update [DRY_RUN=1] [FORCE=1]
    python update_protocol.py history [--json] [--all] [--repo DIR]         # make history [JSON=1]
    python update_protocol.py rollback [COMMIT] [--no-test] [--dry-run]     # make rollback [TO=commit]

Steps, each printed with its outcome and duration; the first failure stops the run:

  lock       one update at a time: <run_dir>/update.lock (hello.base.locks.job_lock); held by a live run -> exit 75
  preflight  system.update.test_command splits as a shell would (an unbalanced quote is refused), clean working
             tree, on system.update.branch, the remote answers `git ls-remote`, and the server answers
             /version: the commit it serves is the rollback point. A server that is not running is refused
             (exit 1): without a serving commit there is nothing to roll back to (`make start` first).
  fetch      `git fetch`; a remote that is not a fast-forward of the checkout (or of the serving commit) is
             refused with nothing changed, and so is one not signed by an allowed key (verify_signatures
             set), one that tracks local state (anything at or under the run dir, the backup destination,
             .venv or .env inside the checkout) or whose checkout would delete or replace an untracked or
             ignored path. Nothing new: exit 0, nothing else done.
  test       in the release, an isolated copy of the new commit (hello/update/release.py: a clone in a fresh
             $TMPDIR/hello-release-*, linked from <run_dir>/release, with its venv: the live one read-only when
             no requirements file changed, else a copy of it with the changed files pip-installed),
             system.update.test_command runs, as system.update.test_user when the kit runs as root (it cannot
             write the live checkout, venv or run_dir); the live checkout and venv have not moved, so a worker
             the supervisor respawns meanwhile starts the serving code. Failure (or a command that cannot run)
             -> nothing deployed, nothing to undo
  backup     system.update.backup_first (default true): `backup_script.py create`, the normal backup under
             its lock, of what serves now; a failed backup stops the update, nothing deployed (exit 1)
  checkout   the tests passed: `git checkout --no-overwrite-ignore -B <branch> <commit>` of the live checkout to
             the tested commit (also for rollbacks: git refuses, rather than delete an untracked or ignored path)
  build      local: `pip install -r` into the live venv of the requirements files that changed (none: skipped);
             compose: `docker compose build --build-arg COMMIT=<sha> hello-world` with HELLO_COMMIT=<sha>
             (docker-compose.yml tags the image hello-world:<sha>; a fixed image name is also tagged <sha>)
  before-deploy  system.update.hooks.before_deploy (hello/update/hooks.py), if any: one fails -> rollback,
             nothing deployed
  deploy     local: `python -m scripts.service reload` (zero-downtime; new code that cannot start leaves the old
             serving); compose: `docker compose up -d --no-deps hello-world` with HELLO_COMMIT=<sha>, then
             wait until `docker compose ps` says healthy (rollback: the old commit's image, rebuilt if gone)
             kubernetes: hello/update/deploy_kubernetes.py builds and pushes
             <system.kubernetes.registry>/hello-world:<sha>,
             `kubectl set image`, `kubectl rollout status`, verifies through `kubectl port-forward`; its rollback
             is `kubectl rollout undo` to the revision before, verified the same way
  verify     /version serves the new commit, /readyz is 200, `validation_test.py --only service` passes
  after-deploy   system.update.hooks.after_deploy, if any: one fails -> rollback
  watch      system.update.watch seconds (0: off; deploy: local only) of the new code's own /metrics
             (hello/update/watch.py): its 5xx ratio above max_error_ratio or its p99 above max_latency_ratio x the p99
             before the deploy, judged from min_requests requests on -> rollback; too little traffic: kept
  rollback   (after a failed deploy, verify or watch) reset to the serving commit, redeploy it unless it still
             serves, verify it; exit 1
  record     SPEC update metrics (hello.base.job_metrics.record_job: textfile + Pushgateway) and one JSON line in
             <run_dir>/update.log: time, from, to, outcome, exit code, step durations, and `good`, the commit
             left serving tested and verified (updated, redeployed: the new one; rolled back: the old one);
             the metrics carry the last deploy or rollback with its outcome and commits (hello/update/deploy_records.py)

A run killed half-way (kill -9) leaves <run_dir>/update.pending.json naming its rollback point. The next
run takes over the stale lock, keeps that rollback point, and runs every step again even if the checkout
already matches the remote, so that what serves has been tested and verified.

--dry-run fetches (objects, FETCH_HEAD and the remote-tracking branch only, as `git fetch` does), prints
the commits it would deploy and the steps, and changes nothing else: no release, no merge, no reload.
--force runs every step even when already up to date (redeploys the current commit).

rollback: back to the previous good release (the newest `good` of update.log, or `from` of a deploy: the commit
serving when it began, not serving now), or to COMMIT, which must be an ancestor of the checkout that once served
as such a good release (the commit `make start` served before the first update counts): preflight (no remote needed),
choose (the same local-state checks as fetch), then test (unless --no-test, recorded), backup, checkout, build,
deploy, verify and watch as above. While the newest deploy is such a rollback and the remote still holds the commit
rolled back from, an update is "held" (exit 0, nothing done) until --force.

history: every deploy and rollback of <run_dir>/update.log (hello/update/history.py), newest first: time, user, from
and to commit with their subject lines, outcome, each step's duration; --all: every run, up-to-date ones too.

Code: this module is the command (arguments, the last line, --json); the step machine is hello/update/updater.py, its
checks before anything changes checks.py, the rollbacks rollback.py, the step lines and the record report.py, the deploy
modes hello/update/deploy.py (local, compose) and hello/update/deploy_kubernetes.py, git hello/base/git.py, the release
hello/update/release.py.

Exit codes: 0 updated or already up to date (history: printed); 1 refused or failed (nothing changed, or rolled back);
2 bad usage or config; 75 another update holds the lock.
"""

from __future__ import annotations

import hello.base.venv  # noqa: F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
import argparse
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hello.base.config import EXIT_CONFIG, EXIT_LOCKED, EXIT_OK, ConfigError, load_config
from hello.base.git import short
from hello.update.deploy_kubernetes import check_config
from hello.update.errors import FAILURES
from hello.update.history import history, render
from hello.update.report import Report, record
from hello.update.updater import Updater

REPO_DIR = Path(__file__).resolve().parent


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


def execute(updater: Updater, args: argparse.Namespace) -> int:
    """The run args ask for; its exit code, its outcome and reason in updater.report."""
    if args.rollback:
        return updater.report.exit_code(
            updater.dry_rollback if args.dry_run else functools.partial(updater.run, updater.rollback_by_hand)
        )
    return updater.report.exit_code(updater.dry_run if args.dry_run else updater.run)


def verdict(updater: Updater) -> str:
    """The last line's words for the run's outcome."""
    report, serving, target = updater.report, short(updater.serving), short(updater.target)
    return {
        "updated": f"updated {serving} -> {target}",
        "redeployed": f"redeployed {target}",
        "rollback": f"rolled back by hand {serving} -> {target}",
        "held": f"held at {serving} after a rollback by hand (FORCE=1 goes on)",
        "up-to-date": f"already up to date at {serving}",
        "dry-run": "dry run: nothing changed",
        "tests-failed": f"tests failed: nothing deployed, still serving {serving} ({report.reason})",
        "backup-failed": f"backup failed: nothing deployed, still serving {serving} ({report.reason})",
        "rolled-back": f"rolled back to {serving}, which serves ({report.reason})",
        "rollback-failed": f"ROLLBACK FAILED, needs a human: {report.reason}",
        "locked": report.reason,
    }.get(report.outcome, f"{report.outcome}: {report.reason}; nothing changed")


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
    code = execute(updater, args)
    if not args.dry_run and code != EXIT_LOCKED:  # the run holding the lock records its own outcome
        try:
            record(config, updater, code, started)
        except FAILURES as exc:  # one line on stderr; the metrics were attempted (pushed) whatever it was
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
    report.say(f"update: {verdict(updater)} in {summary['seconds']:.1f}s")
    if args.json:
        print(json.dumps(summary))
    return code


if __name__ == "__main__":
    sys.exit(main())
