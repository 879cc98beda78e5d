"""The words every check shares: the groups, PASS/FAIL/SKIP, a check's result, how a check fails or skips, and the
fixes a FAIL line names (hello/validation/registry.py runs the checks, report.py prints them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser when PyYAML has it: 10x faster

# The deployed code: `make validate` runs the checkout's own copy of validation_test.py and of this package.
CHECKOUT = Path(__file__).resolve().parents[2]
GROUPS = ("service", "monitoring", "backup", "update", "restarts")
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

# What a FAIL line says to do: a command to run or a config key to set (README "First run" walks through them).
FIX_SERVER = "run `make start`, or `make status`"
FIX_MONITOR = "run `make monitor`"
FIX_GRAFANA = "set system.monitoring.grafana.url"
FIX_BACKUP = "run `make backup`"
FIX_FIRST_SCRAPE = "wait one scrape_interval, then `make validate`"
FIX_SCRAPES = "wait a minute for scrapes, then `make validate`"
FIX_SCHEDULER = "run `make cron | crontab -` or `make systemd-install`"
FIX_RECEIVER = "set system.monitoring.alertmanager.receivers.webhook_url or email.to"
FIX_DEPLOY = "run `make update FORCE=1`"
FIX_OBJECT_LOCK = "lock the bucket; see system.backup.offsite.immutable"


class CheckFailed(Exception):
    """The check found a fault; str() is the reason, fix what to set or run (else the check's own fix)."""

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(reason)
        self.fix = fix


class CheckSkipped(Exception):
    """The check does not apply to this deployment; str() is why."""


@dataclass
class Result:
    group: str
    check: str
    status: str
    detail: str
    duration: float
    fix: str = ""  # a FAIL's remedy: the config key to set or the command to run
