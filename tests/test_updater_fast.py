"""The update step machine (hello/update/updater.py) in-process: a fake deployment and fake git-facing steps.

Updater's run, deliver, the rollback step, undo_deploy, reset_checkout, the pending marker, the lock and the Report
are the real ones; what touches git, the release's tests, the backup script and the server is replaced: preflight and
fetch return scripted commits, test and backup pass or fail as scripted, checkout and switch_branch only record,
and the Deployment is a FakeDeployment that records each call and fails where a case says. Report.exit_code maps
the run's exceptions to exit codes, as update_protocol.py's execute() uses it. tests/test_update.py runs the same
protocol against real deployments (git remotes, servers).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hello.base.checkout import CHECKOUT
from hello.base.config import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, load_config
from hello.base.locks import job_lock
from hello.update import rollback as rollback_module
from hello.update import updater as updater_module
from hello.update import watch as watch_module
from hello.update.checks import Found
from hello.update.deploy import DeployError
from hello.update.errors import Refused, RollbackFailed, UpdateError
from hello.update.hooks import HookFailed
from hello.update.report import Note, Report, record
from hello.update.updater import Updater
from hello.update.watch import Reading

pytestmark = pytest.mark.fast  # the in-process tier (make test-fast)

OLD, NEW = "a" * 40, "b" * 40
DELIVERED = ["lock", "preflight", "fetch", "test", "backup", "checkout", "build", "deploy", "verify"]


@dataclass
class Script:
    """What the fake steps find and which of them fail (the name of the failing step, or "")."""

    head: str = OLD
    serving: str = OLD
    remote_tip: str = NEW
    fails: set[str] = field(default_factory=set)
    refuse: str = ""  # "preflight" or "fetch": Refused there


class FakeDeployment:
    """A Deployment that records every call in calls and raises DeployError in the steps script.fails names."""

    mode = "local"

    def __init__(self, script: Script, calls: list[tuple]) -> None:
        self.script, self.calls = script, calls
        self.watched = False
        self.serving = script.serving

    def fail(self, step: str) -> None:
        if step in self.script.fails:
            raise DeployError(f"the fake {step} failed")

    def serving_commit(self) -> str:
        return self.serving

    def plan(self, old: str, new: str) -> tuple[str, str]:
        return "fake build", "fake deploy"

    def build(self, old: str, new: str) -> tuple[str, str]:
        self.calls.append(("build", old, new))
        self.fail("build")
        return "ok", f"built {new[:7]}"

    def deploy(self, commit: str) -> str:
        self.calls.append(("deploy", commit))
        self.fail("deploy")
        self.serving = commit
        return f"deployed {commit[:7]}"

    def verify(self, commit: str, validate) -> str:
        self.calls.append(("verify", commit))
        validate(Path("/fake/config.yaml"))
        self.fail("verify")
        return f"serving {commit[:7]}"

    def restore_dependencies(self, new: str, old: str) -> str:
        self.calls.append(("restore_dependencies", new, old))
        return "dependencies restored"

    def rollback(self, commit: str, validate) -> str:
        self.calls.append(("rollback", commit))
        self.fail("rollback")
        self.serving = commit
        validate(Path("/fake/config.yaml"))
        return f"serving {commit[:7]} again"


class FakeUpdater(Updater):
    """Updater with the steps that touch git, the release, the backup script and the server scripted."""

    def __init__(self, config: dict[str, Any], args: argparse.Namespace, script: Script) -> None:
        super().__init__(config, Path(config["run_dir"]).parent, args, Report(out=io.StringIO()))
        self.script = script
        self.calls: list[tuple] = []
        self.deployment = FakeDeployment(script, self.calls)

    def preflight(self, note: Note, remote: bool = True, planning: bool = False) -> Found:
        self.calls.append(("preflight",))
        self.test_argv()  # as the real preflight: an unusable test command is refused first
        if self.script.refuse == "preflight":
            raise Refused("the working tree is not clean (fake)")
        serving, recovering = self.recover_pending(self.deployment.serving_commit())
        return Found(self.script.head, serving, self.script.remote_tip if remote else "", recovering)

    def fetch(self, note: Note) -> str:
        self.calls.append(("fetch",))
        if self.script.refuse == "fetch":
            raise Refused("diverged history, refusing (fake)")
        return self.script.remote_tip

    def test(self, note: Note, release: Any) -> None:
        self.calls.append(("test", self.target))
        if "test" in self.script.fails:
            raise UpdateError(f"`make test-fast` exited 1 on {self.target[:7]}")

    def remove_release(self, release: Any) -> None:
        self.calls.append(("remove_release",))

    def backup(self, note: Note) -> None:
        self.calls.append(("backup",))
        if "backup" in self.script.fails:
            raise UpdateError("backup_script.py create exited 1")

    def checkout(self, note: Note) -> None:
        self.calls.append(("checkout", self.target))
        self.head = self.target

    def validate(self, config_file: Path) -> None:
        self.calls.append(("validate",))

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    """The shipped config.yaml's settings, with a scratch run_dir, no Pushgateway and no watch."""
    loaded = copy.deepcopy(load_config(CHECKOUT / "config.yaml"))
    loaded["run_dir"] = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    loaded["monitoring"]["pushgateway"]["url"] = None
    loaded["update"]["watch"] = 0
    return loaded


@pytest.fixture
def switches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The commits the live checkout was switched to (switch_branch, git's part of reset_checkout)."""
    moved: list[str] = []
    for module in (updater_module, rollback_module):  # the checkout step; reset_checkout
        monkeypatch.setattr(module, "switch_branch", lambda repo, branch, commit: moved.append(commit))
    return moved


def args(**given: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"rollback": False, "commit": None, "no_test": False, "force": False,
                                 "dry_run": False, **given})  # fmt: skip


def run(config: dict[str, Any], script: Script, **given: Any) -> tuple[FakeUpdater, int]:
    updater = FakeUpdater(config, args(**given), script)
    return updater, updater.report.exit_code(updater.run)


def pending(config: dict[str, Any]) -> Path:
    return Path(config["run_dir"]) / "update.pending.json"


# --- the good path -----------------------------------------------------------------------------------


def test_a_good_update_runs_every_step_in_order_and_leaves_no_marker(config, switches) -> None:
    updater, code = run(config, Script())
    assert code == EXIT_OK and updater.report.outcome == "updated"
    assert list(updater.report.steps) == DELIVERED
    assert updater.calls == [
        ("preflight",),
        ("fetch",),
        ("test", NEW),
        ("remove_release",),
        ("backup",),
        ("checkout", NEW),
        ("build", OLD, NEW),
        ("deploy", NEW),
        ("verify", NEW),
        ("validate",),
    ]
    assert (updater.serving, updater.target, updater.deployment.serving) == (OLD, NEW, NEW)
    assert not pending(config).exists() and switches == []
    lines = updater.report.out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == DELIVERED
    assert all(line.split()[1] == "ok" for line in lines)


def test_backup_first_off_takes_no_backup(config, switches) -> None:
    config["update"]["backup_first"] = False
    updater, code = run(config, Script())
    assert code == EXIT_OK and "backup" not in updater.names() and "backup" not in updater.report.steps


def test_nothing_new_runs_no_step_after_preflight(config, switches) -> None:
    updater, code = run(config, Script(remote_tip=OLD))
    assert code == EXIT_OK and updater.report.outcome == "up-to-date"
    assert updater.names() == ["preflight"] and list(updater.report.steps) == ["lock", "preflight"]


def test_force_redeploys_the_serving_commit(config, switches) -> None:
    updater, code = run(config, Script(remote_tip=OLD), force=True)
    assert code == EXIT_OK and updater.report.outcome == "redeployed"
    assert ("deploy", OLD) in updater.calls


def test_an_interrupted_run_is_finished_even_when_nothing_is_new(config, switches) -> None:
    pending(config).write_text(json.dumps({"pid": 1, "from": OLD, "to": NEW, "started": 0}))
    updater, code = run(config, Script(remote_tip=OLD))
    assert code == EXIT_OK and "deploy" in updater.names(), "the marker makes every step run again"
    assert not pending(config).exists()


# --- failures before anything deploys ----------------------------------------------------------------


def test_a_failing_test_step_deploys_nothing(config, switches) -> None:
    updater, code = run(config, Script(fails={"test"}))
    assert code == EXIT_FAILED and updater.report.outcome == "tests-failed"
    assert "exited 1" in updater.report.reason
    assert updater.names() == ["preflight", "fetch", "test", "remove_release"], "no backup, build or deploy"
    assert list(updater.report.steps) == ["lock", "preflight", "fetch", "test", "rollback"]
    assert switches == [] and updater.deployment.serving == OLD
    assert "nothing to undo" in updater.report.out.getvalue()
    assert not pending(config).exists()


def test_a_failing_backup_deploys_nothing(config, switches) -> None:
    updater, code = run(config, Script(fails={"backup"}))
    assert code == EXIT_FAILED and updater.report.outcome == "backup-failed"
    assert not {"checkout", "build", "deploy"} & set(updater.names())
    assert switches == [] and not pending(config).exists()


@pytest.mark.parametrize("where", ["preflight", "fetch"])
def test_refused_changes_nothing_and_leaves_no_marker(config, switches, where: str) -> None:
    updater, code = run(config, Script(refuse=where))
    assert code == EXIT_FAILED and updater.report.outcome == "refused"
    assert updater.names()[-1] == where and "test" not in updater.names()
    assert not pending(config).exists() and switches == []
    assert "FAILED" in updater.report.out.getvalue().splitlines()[-1]


@pytest.mark.parametrize(("command", "why"), [('make "test', "cannot be split"), ("  ", "names no command")])
def test_an_unusable_test_command_is_refused_in_preflight(config, switches, command: str, why: str) -> None:
    config["update"]["test_command"] = command
    updater, code = run(config, Script())
    assert code == EXIT_FAILED and updater.report.outcome == "refused" and why in updater.report.reason
    assert updater.names() == ["preflight"]


def test_a_held_lock_is_locked_with_its_exit_code_and_runs_nothing(config, switches) -> None:
    with job_lock(Path(config["run_dir"]) / "update.lock"):
        updater, code = run(config, Script())
    assert code == EXIT_LOCKED == 75
    assert updater.report.outcome == "locked" and "another update holds" in updater.report.reason
    assert updater.calls == [] and list(updater.report.steps) == ["lock"]
    assert f"PID {os.getpid()}" in updater.report.reason


def test_the_lock_is_released_after_a_run(config, switches) -> None:
    run(config, Script())
    _, code = run(config, Script(remote_tip=OLD))
    assert code == EXIT_OK
    assert not (Path(config["run_dir"]) / "update.lock").exists()


# --- rollbacks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["build", "deploy", "verify"])
def test_a_failure_from_the_build_on_rolls_back_to_the_serving_commit(config, switches, step: str) -> None:
    updater, code = run(config, Script(fails={step}))
    assert code == EXIT_FAILED and updater.report.outcome == "rolled-back"
    assert f"the fake {step} failed" in updater.report.reason
    names = updater.names()
    assert names[-3:] == ["restore_dependencies", "rollback", "validate"]
    assert ("rollback", OLD) in updater.calls and ("restore_dependencies", NEW, OLD) in updater.calls
    assert switches == [OLD], "the checkout goes back to the serving commit"
    assert list(updater.report.steps)[-2:] == [step, "rollback"]
    assert updater.deployment.serving == OLD and updater.head == OLD
    assert not pending(config).exists()


def test_a_failing_rollback_is_rollback_failed_and_keeps_the_marker(config, switches) -> None:
    updater, code = run(config, Script(fails={"verify", "rollback"}))
    assert code == EXIT_FAILED and updater.report.outcome == "rollback-failed"
    assert updater.report.reason == "the fake verify failed; then the rollback failed: the fake rollback failed"
    marker = json.loads(pending(config).read_text())
    assert (marker["from"], marker["to"]) == (OLD, NEW), "the next run recovers from here"


def test_rollback_failed_leaves_run_as_an_exception(config, switches) -> None:
    updater = FakeUpdater(config, args(), Script(fails={"deploy", "rollback"}))
    with pytest.raises(RollbackFailed, match="then the rollback failed"):
        updater.run()


def test_a_failing_before_deploy_hook_rolls_back(config, switches, monkeypatch: pytest.MonkeyPatch) -> None:
    config["update"]["hooks"]["before_deploy"] = ["./check-it"]

    def hook(kind: str, commands: list[str], *rest: Any) -> int:
        raise HookFailed(f"system.update.hooks.{kind}[0] `{commands[0]}` exited 3")

    monkeypatch.setattr(updater_module, "run_hooks", hook)
    updater, code = run(config, Script())
    assert code == EXIT_FAILED and updater.report.outcome == "rolled-back"
    assert "exited 3" in updater.report.reason and "deploy" not in updater.names()
    assert list(updater.report.steps)[-2:] == ["before-deploy", "rollback"]


def test_a_watch_that_sees_a_regression_rolls_back(config, switches, monkeypatch: pytest.MonkeyPatch) -> None:
    config["update"].update(watch=0.05, min_requests=10, max_error_ratio=0.01)
    buckets = ((0.01, 0.0), (float("inf"), 0.0))
    readings = iter(
        [
            Reading(0, 0, buckets, frozenset({OLD})),  # before the deploy
            Reading(0, 0, buckets, frozenset({NEW})),  # only the new code live: the window starts
            Reading(100, 20, ((0.01, 100.0), (float("inf"), 100.0)), frozenset({NEW})),
        ]
    )
    monkeypatch.setattr(watch_module, "read", lambda url, timeout: next(readings))
    updater = FakeUpdater(config, args(), Script())
    updater.deployment.watched = True
    code = updater.report.exit_code(updater.run)
    assert code == EXIT_FAILED and updater.report.outcome == "rolled-back"
    assert "20.0% 5xx of 100 requests" in updater.report.reason
    assert updater.report.extra["watch"]["regression"] and ("rollback", OLD) in updater.calls


def test_a_watch_off_for_the_deployment_says_skipped(config, switches) -> None:
    config["update"]["watch"] = 30
    updater, code = run(config, Script())
    assert code == EXIT_OK and "watch" not in updater.report.steps
    assert "watch: skipped (deploy: local)" in updater.report.out.getvalue()


# --- what is recorded --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fails", "outcome", "good"),
    [(set(), "updated", NEW), ({"verify"}, "rolled-back", OLD), ({"test"}, "tests-failed", None)],
)
def test_record_writes_the_outcome_and_the_good_release(config, switches, fails, outcome, good) -> None:
    updater, code = run(config, Script(fails=fails))
    record(config, updater, code, started=0.0)
    (entry,) = [json.loads(line) for line in (Path(config["run_dir"]) / "update.log").read_text().splitlines()]
    assert (entry["outcome"], entry["exit"], entry["from"], entry["to"]) == (outcome, code, OLD, NEW)
    assert entry.get("good") == good
    assert [*entry["steps"], "record"] == list(updater.report.steps)
    assert rollback_module.good_releases([entry]) == ([good] if good else []) + ([OLD] if outcome == "updated" else [])
