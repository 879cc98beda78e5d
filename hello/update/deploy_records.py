"""The last deploy or rollback as an update metric: what the dashboard's "Deploys" annotation and panel show.

    hello_world_update_last_deploy_timestamp_seconds{outcome, commit, from_commit, to_commit}

The value is the end (Unix time) of the newest update run that deployed or rolled back (an outcome of
hello.update.history.DEPLOYS: updated, redeployed, rolled-back, rollback-failed, rollback by hand). `outcome` is
update.log's, `from_commit` and `to_commit` are the run's from and to, `commit` what the run left serving
(for rolled-back: from_commit again; for rollback-failed the to_commit it tried, which needs a human anyway).
Commits are full hashes, as hello_world_build_info labels them.

update_protocol.py records it with the other update metrics (textfile and Pushgateway, job
hello_world_update). A run that deploys nothing (up to date, held, tests failed) carries the last deploy
on from the previous textfile: a push replaces the job's whole group on the Pushgateway, and the series
must outlive the next no-op run. So one series stands for each deploy, from the deploy until the next
one; Grafana's annotation uses its value as the event's time (useValueForTime), one event per deploy
however long the series stays.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from hello.base.deploy_metric import DEPLOY_LABELS, DEPLOY_METRIC
from hello.update.history import DEPLOYS

if TYPE_CHECKING:
    from hello.base.job_metrics import LabelledSeries  # hello_jobs imports this module (the metric's help text)

log = logging.getLogger(__name__)

DEPLOY_HELP = "End of the last update run that deployed or rolled back (Unix time), by outcome and commits."


def deploy_labels(entry: dict[str, Any]) -> dict[str, str]:
    """The labels (DEPLOY_LABELS) of an update.log entry that deployed or rolled back."""
    old, new = str(entry.get("from") or ""), str(entry.get("to") or "")
    serving = old if entry.get("outcome") == "rolled-back" else new
    return {"outcome": str(entry.get("outcome")), "commit": serving, "from_commit": old, "to_commit": new}


def recorded_deploy(textfile: Path) -> dict[tuple[str, ...], float]:
    """{label values: time} of the deploy series in an update textfile ({} when none or unreadable)."""
    try:
        text = textfile.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    try:
        return {
            tuple(sample.labels.get(name, "") for name in DEPLOY_LABELS): float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == DEPLOY_METRIC
        }
    except ValueError:
        log.warning("ignoring unreadable metrics textfile %s", textfile)
        return {}


def deploy_series(entry: dict[str, Any], finished: float, textfile: Path) -> LabelledSeries:
    """The series this update run records: its own deploy, else the last one carried on ({} before any)."""
    if entry.get("outcome") in DEPLOYS:
        labels = deploy_labels(entry)
        samples = {tuple(labels[name] for name in DEPLOY_LABELS): finished}
    else:
        samples = recorded_deploy(textfile)
    return {DEPLOY_METRIC: (DEPLOY_LABELS, samples)} if samples else {}
