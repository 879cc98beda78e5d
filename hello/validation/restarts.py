"""Group `restarts`: the supervisor was not restarted after a crash since validation last looked (its state file).
Not in the update protocol's `--only service`, so a crash an hour ago never rolls back a good deploy."""

from __future__ import annotations

from hello.server import restarts
from hello.validation.components import Context
from hello.validation.core import CheckFailed, CheckSkipped
from hello.validation.registry import check


@check(
    "restarts", "no restart after a crash since the last run", fix="read the crash in hello_world.log (system.run_dir)"
)
def check_restarts(ctx: Context) -> str:
    """The supervisor's start history (its state file) since validation last looked: a crash loop shows."""
    ok, detail = restarts.report_and_mark_seen(ctx.run_dir, first_window=ctx.config["validation"]["interval"] or 900.0)
    if ok is None:
        raise CheckSkipped(detail)
    if not ok:
        raise CheckFailed(detail)
    return detail
