"""Group `update`: /version serves the checkout's HEAD and the last good release, and the last update succeeded."""

from __future__ import annotations

import re
import subprocess

from hello.base.git import GitError, git
from hello.base.job_metrics import job_gauges
from hello.update.history import good_release, update_log
from hello.validation.components import Context
from hello.validation.core import CHECKOUT, FIX_DEPLOY, CheckFailed, CheckSkipped
from hello.validation.last_runs import JOB_UPDATE, job_metrics, last_update_log, utc_time
from hello.validation.registry import check


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    """hello.base.git.git in the checkout, 30 s at most; GitError when git is missing or hangs."""
    return git(CHECKOUT, *args, timeout=30, check=False)


@check("update", "/version serves the checkout's HEAD", fix=FIX_DEPLOY)
def check_served_commit(ctx: Context) -> str:
    served = ctx.server.json("/version").get("commit", "unknown")
    try:
        head = _git("rev-parse", "HEAD")
    except GitError as exc:
        raise CheckFailed(f"cannot run git in {CHECKOUT}: {exc}") from None
    if head.returncode != 0:
        raise CheckFailed(f"{CHECKOUT} is not a git checkout: {head.stderr.strip()[:200]}")
    head_commit = head.stdout.strip()
    if served == head_commit:
        return f"serving {served[:12]} = HEAD of {CHECKOUT}"
    if not re.fullmatch(r"[0-9a-f]{40}", served):
        raise CheckFailed(f"the server reports commit {served!r}, the checkout is at {head_commit[:12]}")
    if _git("merge-base", "--is-ancestor", served, head_commit).returncode == 0:
        count = _git("rev-list", "--count", f"{served}..{head_commit}").stdout.strip()
        raise CheckFailed(
            f"the checkout's HEAD {head_commit[:12]} is {count} commit(s) ahead of the served "
            f"{served[:12]}: the new code is not deployed (make reload, or make update)"
        )
    if _git("merge-base", "--is-ancestor", head_commit, served).returncode == 0:
        raise CheckFailed(f"the server runs {served[:12]}, newer than the checkout's HEAD {head_commit[:12]}")
    raise CheckFailed(f"the server runs {served[:12]}, which is not an ancestor of HEAD {head_commit[:12]}")


@check("update", "/version serves the last good release", fix=FIX_DEPLOY)
def check_good_release(ctx: Context) -> str:
    good, logfile = good_release(ctx.run_dir), update_log(ctx.run_dir)
    if good is None:
        raise CheckSkipped(f"no update has recorded a tested and verified release yet ({logfile})")
    served = str(ctx.server.json("/version").get("commit", "unknown"))
    if served != good:
        raise CheckFailed(
            f"the server runs {served[:12]}, not {good[:12]}, the release the last update tested and verified "
            f"({logfile}): untested code may be serving (make update FORCE=1 tests and redeploys the checkout)"
        )
    return f"serving {good[:12]}, tested and verified by an update ({logfile})"


@check("update", "the last update succeeded", fix="see `make history ALL=1`, then run `make update`")
def check_last_update(ctx: Context) -> str:
    entry = last_update_log(ctx)
    if entry is not None:
        outcome = str(entry.get("outcome", "?"))
        commits = f"{entry.get('from')!s:.12} -> {entry.get('to')!s:.12}" if entry.get("to") else "no target commit"
        what = f"{commits} at {entry.get('time', '?')}"
        if entry.get("exit") != 0:  # update_protocol.py has always logged its exit code
            why = entry.get("reason") or f"see {ctx.run_dir / 'update.log'}"
            raise CheckFailed(f"the last update ({what}) ended {outcome!r}: {why}; `make history ALL=1` shows it")
        return f"{outcome}: {what} ({ctx.run_dir / 'update.log'})"
    values, source = job_metrics(ctx, JOB_UPDATE)
    if not values:
        raise CheckSkipped(f"no update has ever run ({source}; no {ctx.run_dir / 'update.log'})")
    gauges = job_gauges(JOB_UPDATE)
    run = values.get(gauges.last_run)
    when = f" at {utc_time(run)}" if run else ""
    if values.get(gauges.success) == 0:
        raise CheckFailed(f"the last update{when} failed ({gauges.success} 0, {source})")
    return f"succeeded{when} ({source})"
