"""update_protocol.py against real git and a real server.

One scratch deployment per module (tests/support/scratch.py ScratchDeployment): a bare repository in a
temp dir seeded from this working tree is the remote, a clone of it serves with `scripts/service.py start`
on a free port, and a second clone pushes the commits each test needs. The deployment's test_command is
a real pytest run of one small file (tests_smoke/test_smoke.py, which passes while SMOKE says ok), never
this suite. Each test starts from a consistent deployment (the `site` fixture) and runs the checkout's
own update_protocol.py as a subprocess. Compose mode runs with tests/bin/docker, a recording stand-in.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hello.base.http_client import http_request
from hello.base.proc import free_port, wait_until
from hello.update import hooks
from hello.update.deploy_records import recorded_deploy
from tests.support.deployment import assert_step, log_lines, metric, shown
from tests.support.fake_docker import PS, UP, compose_env, docker_calls
from tests.support.hooks import all_gone, hook_pids, kill_leftovers, spawning_hook
from tests.support.processes import kill_group
from tests.support.scratch import Load, ScratchDeployment, git
from tests.support.tools import PYTHON


def snapshot(site: ScratchDeployment) -> dict:
    """What must not change when an update changes nothing: checkout, served commit, server process, reloads."""
    state = json.loads((site.run_dir / "hello_world.state.json").read_text())
    return {"head": site.head(), "served": site.served(), "pid": site.pid(), "reloads": state.get("reloads")}


def reloads(site: ScratchDeployment) -> int:
    return json.loads((site.run_dir / "hello_world.state.json").read_text()).get("reloads", 0)


def deploy_metric(site: ScratchDeployment) -> dict[tuple[str, ...], float]:
    """The deploy series of the update textfile: {(outcome, commit, from_commit, to_commit): time}."""
    return recorded_deploy(site.run_dir / "metrics" / "hello_world_update.prom")


def assert_quiet_load(load: Load, wrong_body_allowed: bool = False) -> None:
    assert load.counts["ok"] > 20, load.counts
    assert load.counts["failed"] == 0, (load.counts, load.errors)
    # A keep-alive connection closed without `Connection: close` is the failure a drain prevents.
    assert load.counts["reconnects"] == 0, (load.counts, load.errors)
    if not wrong_body_allowed:
        assert load.counts["wrong_body"] == 0, (load.counts, load.errors)


# --- up to date, a good commit, --force, --dry-run ----------------------------------------------------


def test_nothing_new_exits_0_and_restarts_nothing(site: ScratchDeployment) -> None:
    before = snapshot(site)
    result = site.update()
    assert result.returncode == 0, shown(result)
    assert "nothing new" in result.stdout
    for name in ("test", "backup", "build", "deploy", "verify"):
        assert not re.search(rf"^{name}\s", result.stdout, re.MULTILINE), shown(result)
    assert "(no test, backup or deploy)" in result.stdout
    assert snapshot(site) == before
    assert log_lines(site)[-1]["outcome"] == "up-to-date"
    assert metric(site, "hello_world_update_success") == 1


def test_good_commit_is_deployed_with_zero_failed_requests(site: ScratchDeployment) -> None:
    before = snapshot(site)
    archives = set(site.root.glob("backups/hello-world-*.tar.gz"))
    commit = site.harmless_commit("good")
    with Load(site.port, limit=5000) as load:
        result = site.update()
    assert result.returncode == 0, shown(result)
    for name in ("lock", "preflight", "fetch", "test", "backup", "checkout", "deploy", "verify", "record"):
        assert_step(result, name)
    assert len(set(site.root.glob("backups/hello-world-*.tar.gz")) - archives) == 1  # backup_first, of the old code
    assert_step(result, "build", "skipped")  # requirements did not change
    assert site.served() == commit == site.head()
    assert site.pid() == before["pid"] and reloads(site) == before["reloads"] + 1
    assert_quiet_load(load)
    entry = log_lines(site)[-1]
    assert (entry["from"], entry["to"], entry["outcome"], entry["exit"]) == (before["served"], commit, "updated", 0)
    assert set(entry["steps"]) >= {"lock", "preflight", "fetch", "test", "checkout", "build", "deploy", "verify"}
    assert entry["good"] == commit
    assert metric(site, "hello_world_update_success") == 1
    assert metric(site, "hello_world_update_last_success_timestamp_seconds") > 0
    assert not (site.run_dir / "update.pending.json").exists()


def test_force_redeploys_the_current_commit(site: ScratchDeployment) -> None:
    before = snapshot(site)
    result = site.update("--force", "--json")
    assert result.returncode == 0, shown(result)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["outcome"] == "redeployed" and summary["from"] == summary["to"] == before["served"]
    assert site.served() == before["served"] and reloads(site) == before["reloads"] + 1


def test_dry_run_prints_the_commits_and_steps_and_changes_nothing(site: ScratchDeployment) -> None:
    before, logged = snapshot(site), len(log_lines(site))
    commit = site.harmless_commit("dry")
    result = site.update("--dry-run")
    assert result.returncode == 0, shown(result)
    assert f"{commit[:7]} harmless change dry" in result.stdout
    for name in ("test", "build", "deploy", "verify", "record"):
        assert re.search(rf"^  {name}\s+\S", result.stdout, re.MULTILINE), shown(result)
    assert snapshot(site) == before
    assert len(log_lines(site)) == logged
    assert site.remote_tip() == commit


def test_dry_run_shows_the_plan_also_while_the_server_is_down(site: ScratchDeployment) -> None:
    """Issue 24.6: a dry run is for looking; with the server down it warns and plans from the checkout."""
    commit = site.harmless_commit("dry while down")
    assert site.server("stop").returncode == 0
    result = site.update("--dry-run")
    assert result.returncode == 0, shown(result)
    assert "WARNING:" in result.stdout and "a real update would refuse" in result.stdout, shown(result)
    assert f"{commit[:7]} harmless change dry while down" in result.stdout, shown(result)
    refused = site.update()
    assert refused.returncode != 0 and "start the server first (make start)" in refused.stdout + refused.stderr


# --- failures: nothing deployed, or rolled back -------------------------------------------------------


def test_commit_whose_tests_fail_is_not_deployed(site: ScratchDeployment) -> None:
    before = snapshot(site)
    site.commit("break the smoke test", {"SMOKE": "broken\n"})
    result = site.update()
    assert result.returncode == 1, shown(result)
    assert_step(result, "test", "FAILED")
    assert_step(result, "rollback")
    assert "nothing to undo" in result.stdout, shown(result)
    assert not re.search(r"^(checkout|deploy|build)\s", result.stdout, re.MULTILINE), shown(result)
    assert snapshot(site) == before  # the checkout never left the serving commit, no reload
    assert (site.deploy / "SMOKE").read_text() == "ok\n"
    assert log_lines(site)[-1]["outcome"] == "tests-failed"
    assert "good" not in log_lines(site)[-1]
    assert metric(site, "hello_world_update_success") == 0


BREAKAGES = {
    # the command itself cannot run: the reload refuses it (it reads the config with it), the old code keeps serving
    "syntax-error": ("hello_world.py", lambda text: text + "\ndef broken(:\n"),
    # the CLI runs, the new workers cannot import: the supervisor keeps the old generation
    "import-error": (
        "hello/server/worker.py",
        lambda text: text + "\nif __name__ != '__main__':\n    raise ImportError('broken on purpose')\n",
    ),
}
GREETING = "hello/server/routes.py"  # where the greeting literal is


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_commit_that_cannot_start_is_rolled_back(site: ScratchDeployment, breakage: str) -> None:
    before = snapshot(site)
    path, break_it = BREAKAGES[breakage]
    site.commit(f"{path} with a {breakage}", {path: break_it((site.deploy / path).read_text())})
    with Load(site.port, limit=5000) as load:
        result = site.update()
    assert result.returncode == 1, shown(result)
    assert_step(result, "deploy", "FAILED")
    assert_step(result, "rollback")
    assert site.served() == before["served"] == site.head()
    assert site.pid() == before["pid"]
    assert_quiet_load(load)
    assert log_lines(site)[-1]["outcome"] == "rolled-back"
    assert metric(site, "hello_world_update_success") == 0


def test_commit_that_fails_verification_is_rolled_back(site: ScratchDeployment) -> None:
    before = snapshot(site)
    text = (site.deploy / GREETING).read_text()
    assert "Hello, World!" in text, f"the test needs the greeting literal in {GREETING}"
    bad = site.commit("a different greeting", {GREETING: text.replace("Hello, World!", "Goodbye, World!")})
    with Load(site.port, limit=5000) as load:
        result = site.update()
    assert result.returncode == 1, shown(result)
    assert_step(result, "deploy")
    assert_step(result, "verify", "FAILED")
    assert_step(result, "rollback")
    assert "redeployed" in result.stdout
    assert site.served() == before["served"] == site.head()
    assert http_request(site.url + "/")[2] == b"Hello, World!\n"
    assert reloads(site) == before["reloads"] + 2  # the bad code in, the old code back
    assert_quiet_load(load, wrong_body_allowed=True)  # the bad version answered until rolled back
    assert log_lines(site)[-1]["outcome"] == "rolled-back"
    # The dashboard's Deploys annotation and panel: the rollback, back to the served commit, away from the bad one.
    assert list(deploy_metric(site)) == [("rolled-back", before["served"], before["served"], bad)]


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("./SMOKE", "test command cannot run: ./SMOKE: Permission denied"),  # a file, not executable
        ("./tests_smoke", "test command cannot run: ./tests_smoke: Permission denied"),  # a directory
        ("no-such-test-runner --all", "test command not found: no-such-test-runner"),
    ],
)
def test_test_command_that_cannot_run_is_not_deployed(
    site: ScratchDeployment, tmp_path: Path, command: str, reason: str
) -> None:
    config = site.write_config(tmp_path / "config.yaml", {"update": {"test_command": command}})
    before = snapshot(site)
    site.harmless_commit("tested by a command that cannot run")
    result = site.update(env={"HELLO_CONFIG": str(config)})
    assert result.returncode == 1, shown(result)
    assert "Traceback" not in result.stdout + result.stderr, shown(result)
    assert_step(result, "test", "FAILED")
    assert_step(result, "rollback")
    assert not re.search(r"^(deploy|build)\s", result.stdout, re.MULTILINE), shown(result)
    assert reason in result.stdout, shown(result)
    assert snapshot(site) == before  # checkout back on the serving commit, no reload
    entry = log_lines(site)[-1]
    assert (entry["outcome"], entry["exit"]) == ("tests-failed", 1)
    assert reason in entry["reason"] and "\n" not in entry["reason"]
    assert metric(site, "hello_world_update_success") == 0
    assert not (site.run_dir / "update.pending.json").exists()


UNSPLITTABLE = "pytest -q 'tests_smoke"  # an unbalanced quote: shlex.split raises ValueError

# update_protocol.main() with the test command made unsplittable after preflight checked it: the test step's own
# guard, which preflight otherwise makes unreachable.
SPLIT_FAILS_AT_TEST = f"""
import sys
import update_protocol

checked = update_protocol.Updater.preflight

def preflight(self, note):
    tip = checked(self, note)
    self.config["update"]["test_command"] = {UNSPLITTABLE!r}
    return tip

update_protocol.Updater.preflight = preflight
sys.exit(update_protocol.main())
"""


def test_unsplittable_test_command_at_the_test_step_is_not_deployed(site: ScratchDeployment) -> None:
    before = snapshot(site)
    site.harmless_commit("tested by an unsplittable command")
    result = subprocess.run(
        [PYTHON, "-c", SPLIT_FAILS_AT_TEST], cwd=site.deploy, env=site.env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, shown(result)
    assert "Traceback" not in result.stdout + result.stderr, shown(result)
    assert_step(result, "fetch")
    assert_step(result, "test", "FAILED")
    assert_step(result, "rollback")
    assert "cannot be split: No closing quotation" in result.stdout, shown(result)
    assert snapshot(site) == before
    entry = log_lines(site)[-1]
    assert (entry["outcome"], entry["exit"]) == ("tests-failed", 1)
    assert not (site.run_dir / "update.pending.json").exists()


def test_failed_merge_leaves_no_pending_marker(site: ScratchDeployment) -> None:
    before = snapshot(site)
    site.harmless_commit("behind a locked index")
    lock = site.deploy / ".git" / "index.lock"  # git status reads past it; git merge cannot take it
    lock.write_text("")
    try:
        result = site.update()
    finally:
        lock.unlink()
    assert result.returncode == 1, shown(result)
    assert_step(result, "test")  # in the release: the live index is not touched until the tests passed
    assert_step(result, "checkout", "FAILED")
    assert "`git checkout " in result.stdout, shown(result)
    assert not re.search(r"^(build|deploy)\s", result.stdout, re.MULTILINE), shown(result)
    assert snapshot(site) == before
    assert not (site.run_dir / "update.pending.json").exists()  # the next run is not a recovery
    assert log_lines(site)[-1]["outcome"] == "failed"
    again = site.update()
    assert again.returncode == 0, shown(again)
    assert "interrupted" not in again.stderr, shown(again)


def test_failed_backup_first_stops_the_update_with_nothing_deployed(site: ScratchDeployment, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the backups should go\n")
    config = site.write_config(tmp_path / "config.yaml", {"backup": {"destination": str(blocked)}})
    before = snapshot(site)
    site.harmless_commit("behind a failing backup")
    result = site.update(env={"HELLO_CONFIG": str(config)})
    assert result.returncode == 1, shown(result)
    assert_step(result, "test")
    assert_step(result, "backup", "FAILED")
    assert "backup_script.py create exited 1" in result.stdout, shown(result)
    assert not re.search(r"^(checkout|build|deploy)\s", result.stdout, re.MULTILINE), shown(result)
    assert snapshot(site) == before
    entry = log_lines(site)[-1]
    assert (entry["outcome"], entry["exit"]) == ("backup-failed", 1) and "backup_script.py" in entry["reason"]
    assert not (site.run_dir / "update.pending.json").exists()


def test_backup_first_off_takes_no_backup(site: ScratchDeployment, tmp_path: Path) -> None:
    config = site.write_config(tmp_path / "config.yaml", {"update": {"backup_first": False}})
    archives = set(site.root.glob("backups/hello-world-*.tar.gz"))
    commit = site.harmless_commit("without a backup first")
    result = site.update(env={"HELLO_CONFIG": str(config)})
    assert result.returncode == 0, shown(result)
    assert not re.search(r"^backup\s", result.stdout, re.MULTILINE), shown(result)
    assert set(site.root.glob("backups/hello-world-*.tar.gz")) == archives
    assert site.served() == commit


def test_hooks_run_in_the_new_release_with_both_commits(site: ScratchDeployment, tmp_path: Path) -> None:
    seen = tmp_path / "hooks.log"
    line = f'echo "$0 $(pwd) $HELLO_PREVIOUS_COMMIT $HELLO_COMMIT $(cat CHANGES)" >> {seen}'
    hooks = {"before_deploy": [line.replace("$0", "before")], "after_deploy": [line.replace("$0", "after")]}
    config = site.write_config(tmp_path / "config.yaml", {"update": {"hooks": hooks}})
    before = site.served()
    commit = site.harmless_commit("with hooks")
    result = site.update(env={"HELLO_CONFIG": str(config)})
    assert result.returncode == 0, shown(result)
    assert_step(result, "before-deploy")
    assert_step(result, "after-deploy")
    assert seen.read_text().splitlines() == [
        f"{kind} {site.deploy} {before} {commit} with hooks" for kind in ("before", "after")
    ]
    assert result.stdout.index("before-deploy") < result.stdout.index("\ndeploy ") < result.stdout.index("after-deploy")


def test_an_update_hook_timing_out_is_killed_with_everything_it_started(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hooks, "HOOK_TIMEOUT", 1.0)
    pids = tmp_path / "pids"
    try:
        with open(tmp_path / "out.log", "w") as out, pytest.raises(hooks.HookFailed, match="did not finish within 1s"):
            hooks.run_hooks("before_deploy", [spawning_hook(pids)], tmp_path, "new", "old", out)
        all_gone(hook_pids(pids)[1:])
    finally:
        kill_leftovers(pids)


@pytest.mark.parametrize("kind", ["before_deploy", "after_deploy"])
def test_a_failing_hook_rolls_back(site: ScratchDeployment, tmp_path: Path, kind: str) -> None:
    config = site.write_config(tmp_path / "config.yaml", {"update": {"hooks": {kind: ["true", "exit 3"]}}})
    before = snapshot(site)
    site.harmless_commit(f"a failing {kind} hook")
    result = site.update(env={"HELLO_CONFIG": str(config)})
    assert result.returncode == 1, shown(result)
    assert_step(result, kind.replace("_", "-"), "FAILED")
    assert f"system.update.hooks.{kind}[1] `exit 3` exited 3" in result.stdout, shown(result)
    assert_step(result, "rollback")
    assert bool(re.search(r"^deploy\s", result.stdout, re.MULTILINE)) == (kind == "after_deploy"), shown(result)
    assert site.served() == before["served"] == site.head()
    assert log_lines(site)[-1]["outcome"] == "rolled-back"


# --- refusals: exit 1, nothing changed ---------------------------------------------------------------


def make_diverged(site: ScratchDeployment) -> None:
    tree = git(site.dev, "rev-parse", "origin/main^{tree}")
    orphan = git(site.dev, "commit-tree", tree, "-m", "rewritten history")
    git(site.dev, "push", "-q", "--force", "origin", f"{orphan}:refs/heads/main")


def make_dirty(site: ScratchDeployment) -> None:
    site.harmless_commit("behind a dirty tree")
    with open(site.deploy / "Makefile", "a") as handle:
        handle.write("# a local edit that must not be lost\n")


def make_untracked(site: ScratchDeployment) -> None:
    site.harmless_commit("behind an untracked file")
    (site.deploy / "stray.txt").write_text("not in git\n")


def make_unreachable(site: ScratchDeployment) -> None:
    site.harmless_commit("behind an unreachable remote")
    git(site.deploy, "remote", "set-url", "origin", str(site.root / "no-such-remote.git"))


def make_other_branch(site: ScratchDeployment) -> None:
    site.harmless_commit("on main, not checked out")
    git(site.deploy, "checkout", "-q", "-b", "elsewhere")


REFUSALS = {
    "diverged": (make_diverged, "diverged history"),
    "dirty": (make_dirty, "the working tree is not clean (1 changed or untracked: Makefile)"),
    "untracked": (make_untracked, "the working tree is not clean (1 changed or untracked: stray.txt)"),
    "unreachable": (make_unreachable, "unreachable"),
    "other-branch": (make_other_branch, "on elsewhere, not main"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_update_changes_nothing(site: ScratchDeployment, case: str) -> None:
    setup, reason = REFUSALS[case]
    setup(site)
    before = snapshot(site)
    files = {name: (site.deploy / name).read_bytes() for name in ("Makefile", "hello_world.py")}
    result = site.update()
    assert result.returncode == 1, shown(result)
    assert reason in result.stdout, shown(result)
    assert snapshot(site) == before
    assert {name: (site.deploy / name).read_bytes() for name in files} == files
    assert log_lines(site)[-1]["outcome"] == "refused"


def test_unsplittable_test_command_is_refused_before_anything_changes(site: ScratchDeployment, tmp_path: Path) -> None:
    config = site.write_config(tmp_path / "config.yaml", {"update": {"test_command": UNSPLITTABLE}})
    site.harmless_commit("with an unsplittable test command")
    before = snapshot(site)
    result = site.update(env={"HELLO_CONFIG": str(config)})
    assert result.returncode == 1, shown(result)
    assert "Traceback" not in result.stdout + result.stderr, shown(result)
    assert_step(result, "preflight", "FAILED")
    assert 'system.update.test_command "pytest -q \'tests_smoke" cannot be split' in result.stdout, shown(result)
    assert not re.search(r"^(fetch|test|rollback)\s", result.stdout, re.MULTILINE), shown(result)
    assert snapshot(site) == before
    assert not (site.run_dir / "update.pending.json").exists()
    assert log_lines(site)[-1]["outcome"] == "refused"


def test_server_not_running_is_refused(site: ScratchDeployment, tmp_path: Path) -> None:
    config = site.write_config(
        tmp_path / "config.yaml", {"run_dir": str(tmp_path / "run"), "server": {"port": free_port()}}
    )
    site.harmless_commit("with no server")
    head = site.head()
    result = site.update(env={"HELLO_CONFIG": str(config)})
    assert result.returncode == 1, shown(result)
    assert "start the server first" in result.stdout
    assert site.head() == head


def test_bad_config_exits_2(site: ScratchDeployment, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("system:\n  update:\n    deploy: kubernetes\n")
    result = site.update(env={"HELLO_CONFIG": str(bad)})
    assert result.returncode == 2, shown(result)
    assert "system.update.deploy" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- one at a time; a killed run -------------------------------------------------------------------


def start_held_update(site: ScratchDeployment, processes, hold: Path) -> subprocess.Popen:
    """An update that waits inside its test step until hold.release exists."""
    proc = processes.start(
        [PYTHON, "update_protocol.py"],
        cwd=site.deploy,
        env={**site.env, "SMOKE_HOLD": str(hold)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until(lambda: Path(f"{hold}.started").exists() or proc.poll() is not None, 240, "the update's test step")
    assert proc.poll() is None, proc.stdout.read()
    return proc


def test_second_run_during_the_first_exits_75(site: ScratchDeployment, processes, tmp_path: Path) -> None:
    commit = site.harmless_commit("slow")
    hold = tmp_path / "hold"
    first = start_held_update(site, processes, hold)
    second = site.update()
    assert second.returncode == 75, shown(second)
    assert f"PID {first.pid}" in second.stdout
    Path(f"{hold}.release").touch()
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 0, output
    assert site.served() == commit


def test_kill_9_mid_update_then_a_new_run_recovers(site: ScratchDeployment, processes, tmp_path: Path) -> None:
    before = snapshot(site)
    commit = site.harmless_commit("interrupted")
    hold = tmp_path / "hold"
    first = start_held_update(site, processes, hold)
    kill_group(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    # Killed inside the test step: the live checkout not moved, the lock and the pending marker left behind.
    assert site.head() == before["served"] == site.served()
    assert (site.run_dir / "update.lock").read_text().strip() == str(first.pid)
    assert json.loads((site.run_dir / "update.pending.json").read_text())["from"] == before["served"]
    result = site.update()
    assert result.returncode == 0, shown(result)
    assert "taking over the stale lock" in result.stderr
    assert "interrupted" in result.stderr
    assert_step(result, "test")
    assert site.served() == commit == site.head()
    assert not (site.run_dir / "update.pending.json").exists()
    assert not (site.run_dir / "update.lock").exists()


# --- untested code never serves: the tests run in an isolated release --------------------------------


def workers(site: ScratchDeployment) -> set[int]:
    """The PIDs of the supervisor's worker processes."""
    pid = site.pid()
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.update(int(child) for child in (task / "children").read_text().split())
    return children


def validate_update(site: ScratchDeployment) -> tuple[int, dict[str, dict]]:
    """`validation_test.py --only update --json` of the deployment: exit code and results by check name."""
    result = subprocess.run(
        [PYTHON, "validation_test.py", "--only", "update", "--json"],
        cwd=site.deploy,
        env=site.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip().startswith("["), shown(result)
    return result.returncode, {entry["check"]: entry for entry in json.loads(result.stdout)}


GOOD_RELEASE = "/version serves the last good release"


def test_worker_killed_while_a_failing_update_tests_respawns_the_serving_code(
    site: ScratchDeployment, processes, tmp_path: Path
) -> None:
    good = site.harmless_commit("the recorded good release")
    assert site.update().returncode == 0 and site.served() == good
    text = (site.deploy / GREETING).read_text()
    rejected = site.commit(
        "a new greeting whose tests fail",
        {GREETING: text.replace("Hello, World!", "Goodbye, World!"), "SMOKE": "broken\n"},
    )
    hold = tmp_path / "hold"
    update = start_held_update(site, processes, hold)
    # Inside the test step: the new commit is checked out in the release only.
    release = site.run_dir / "release"
    assert git(release, "rev-parse", "HEAD") == rejected
    assert site.head() == good
    old_workers = workers(site)
    kill_group(next(iter(old_workers)), signal.SIGKILL)  # a worker dies (OOM, kill -9) during the tests

    def respawned() -> bool:
        fresh = workers(site) - old_workers
        return bool(fresh) and http_request(site.url + "/", timeout=2)[0] == 200

    wait_until(respawned, 60, "the supervisor to respawn the killed worker")
    assert http_request(site.url + "/")[2] == b"Hello, World!\n"
    assert site.served() == good
    Path(f"{hold}.release").touch()
    output, _ = update.communicate(timeout=120)
    assert update.returncode == 1, output
    assert f"tests failed: nothing deployed, still serving {good[:10]}" in output
    assert http_request(site.url + "/")[2] == b"Hello, World!\n" and site.served() == good == site.head()
    assert not release.exists()
    # The next run tests the rejected commit again and again does not deploy it.
    again = site.update()
    assert again.returncode == 1, shown(again)
    assert_step(again, "test", "FAILED")
    assert "nothing new" not in again.stdout
    assert http_request(site.url + "/")[2] == b"Hello, World!\n" and site.served() == good == site.head()
    code, checks = validate_update(site)
    assert checks[GOOD_RELEASE]["status"] == "PASS", checks
    assert checks["the last update succeeded"]["status"] == "FAIL" and code == 1, checks


def test_validate_update_fails_while_the_served_commit_is_not_the_recorded_good_one(site: ScratchDeployment) -> None:
    good = site.harmless_commit("tested and verified")
    assert site.update().returncode == 0
    code, checks = validate_update(site)
    assert checks[GOOD_RELEASE]["status"] == "PASS" and code == 0, checks
    # Code no update tested goes live: a local commit and a reload, by hand.
    (site.deploy / "CHANGES").write_text("edited on the server\n")
    git(site.deploy, "commit", "-q", "-am", "a change nobody tested")
    try:
        site.server("reload")
        untested = site.served()
        assert untested == site.head() != good
        code, checks = validate_update(site)
        assert code == 1, checks
        assert checks[GOOD_RELEASE]["status"] == "FAIL", checks
        assert f"the server runs {untested[:12]}, not {good[:12]}" in checks[GOOD_RELEASE]["detail"]
        assert checks["/version serves the checkout's HEAD"]["status"] == "PASS", checks
    finally:
        git(site.deploy, "reset", "-q", "--hard", good)
        site.server("reload")
    assert site.served() == good


def test_changed_requirements_are_installed_in_the_release_venv_only(
    site: ScratchDeployment, processes, tmp_path: Path
) -> None:
    live = Path(sys.prefix)
    stamp = live / ".dev-installed"
    stamp_before = stamp.stat().st_mtime_ns if stamp.exists() else None
    dev = (site.deploy / "requirements-dev.txt").read_text()
    site.commit("changed requirements, failing tests", {"requirements-dev.txt": dev + "# changed\n", "SMOKE": "no\n"})
    before = snapshot(site)
    hold = tmp_path / "hold"
    update = start_held_update(site, processes, hold)
    venv = site.run_dir / "release" / ".venv"
    assert venv.is_dir() and not venv.is_symlink() and (venv / "pyvenv.cfg").exists()
    Path(f"{hold}.release").touch()
    output, _ = update.communicate(timeout=300)
    assert update.returncode == 1, output
    assert "a copy of the live venv with requirements-dev.txt installed" in output
    assert snapshot(site) == before
    assert (stamp.stat().st_mtime_ns if stamp.exists() else None) == stamp_before  # the live venv untouched
    assert not venv.exists()


# --- history ---------------------------------------------------------------------------------------


def history(site: ScratchDeployment, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "update_protocol.py", "history", *args],
        cwd=site.deploy,
        env=site.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_history_lists_deploys_and_rollbacks_newest_first(site: ScratchDeployment) -> None:
    before = site.served()
    commit = site.harmless_commit("for the history")
    assert site.update().returncode == 0
    deployed = deploy_metric(site)
    assert list(deployed) == [("updated", commit, before, commit)]
    assert site.update().returncode == 0  # nothing new: not a deploy
    assert deploy_metric(site) == deployed  # carried on: the Pushgateway's group keeps the last deploy
    assert site.update("--force").returncode == 0
    assert list(deploy_metric(site)) == [("redeployed", commit, commit, commit)]
    result = history(site, "--json")
    assert result.returncode == 0, shown(result)
    newest, second = json.loads(result.stdout)[:2]
    assert (newest["outcome"], newest["from"], newest["to"]) == ("redeployed", commit, commit)
    assert (second["outcome"], second["from"], second["to"]) == ("updated", before, commit)
    assert second["to_subject"] == "harmless change for the history"
    assert second["user"] and set(second["steps"]) >= {"test", "checkout", "deploy", "verify"}
    every = json.loads(history(site, "--json", "--all").stdout)
    assert [entry["outcome"] for entry in every[:3]] == ["redeployed", "up-to-date", "updated"]
    text = history(site)
    assert text.returncode == 0, shown(text)
    assert re.search(r"^\S+Z  redeployed .* by \S+", text.stdout, re.MULTILINE), text.stdout
    assert f"    to    {commit[:10]}  harmless change for the history" in text.stdout


# --- rollback by hand ------------------------------------------------------------------------------


def rollback(site: ScratchDeployment, *args: str) -> subprocess.CompletedProcess:
    return site.update("rollback", *args)


def test_rollback_by_hand_two_commits_back_then_update_holds_until_forced(site: ScratchDeployment) -> None:
    released = []
    for label in ("one", "two", "three"):
        released.append(site.harmless_commit(f"release {label}"))
        assert site.update().returncode == 0 and site.served() == released[-1]
    dry = rollback(site, released[0], "--dry-run")
    assert dry.returncode == 0 and f"would roll back {released[2][:10]} -> {released[0][:10]}" in dry.stdout, shown(dry)
    assert site.served() == released[2]
    with Load(site.port, limit=5000) as load:
        result = rollback(site, released[0][:12])
    assert result.returncode == 0, shown(result)
    for name in ("preflight", "choose", "test", "checkout", "deploy", "verify"):
        assert_step(result, name)
    assert site.served() == released[0] == site.head()
    assert_quiet_load(load)
    entry = log_lines(site)[-1]
    assert (entry["outcome"], entry["from"], entry["to"], entry["good"]) == (
        "rollback",
        released[2],
        released[0],
        released[0],
    )
    # The remote still holds the commits rolled back from: update stays, and says how to go on.
    held = site.update()
    assert held.returncode == 0, shown(held)
    assert "make update FORCE=1 deploys it" in held.stdout and log_lines(site)[-1]["outcome"] == "held"
    assert not re.search(r"^(test|deploy)\s", held.stdout, re.MULTILINE), shown(held)
    assert site.served() == released[0]
    forced = site.update("--force")
    assert forced.returncode == 0, shown(forced)
    assert site.served() == released[2] == site.head()
    assert site.update().returncode == 0  # no longer held


def test_rollback_without_a_commit_goes_to_the_previous_good_release_and_may_skip_tests(
    site: ScratchDeployment,
) -> None:
    first = site.harmless_commit("good one")
    assert site.update().returncode == 0
    site.harmless_commit("good two")
    assert site.update().returncode == 0
    result = rollback(site, "--no-test")
    assert result.returncode == 0, shown(result)
    assert "test: skipped (--no-test)" in result.stdout
    assert not re.search(r"^test\s", result.stdout, re.MULTILINE), shown(result)
    assert site.served() == first == site.head()
    entry = log_lines(site)[-1]
    assert (entry["outcome"], entry["to"], entry["tests"]) == ("rollback", first, "skipped (--no-test)")


def test_rollback_to_a_commit_that_never_served_is_refused(site: ScratchDeployment) -> None:
    skipped = site.harmless_commit("never served alone")
    site.harmless_commit("deployed together with the one before")
    assert site.update().returncode == 0
    before = snapshot(site)
    for wanted, reason in (
        (skipped, "never served as a good release"),
        (before["served"], "is serving already"),
        ("no-such-ref", "'no-such-ref' is not a commit of this checkout"),
    ):
        result = rollback(site, wanted)
        assert result.returncode == 1, shown(result)
        assert reason in result.stdout, shown(result)
        assert snapshot(site) == before
        assert log_lines(site)[-1]["outcome"] == "refused"


# --- compose mode, with the recording docker stand-in ---------------------------------------------------


@pytest.mark.parametrize("image", ["per-commit", "fixed"])
def test_compose_update_builds_tags_and_waits_until_healthy(
    site: ScratchDeployment, tmp_path: Path, image: str
) -> None:
    commit = site.harmless_commit(f"compose, {image} image name")
    # per-commit: docker-compose.yml's image hello-world:${HELLO_COMMIT:-latest}; fixed: a name without the commit
    fixed = {"FAKE_DOCKER_IMAGE": "hello-world:latest"} if image == "fixed" else {}
    result = site.update(env=compose_env(site, tmp_path, FAKE_DOCKER_STARTING="2", **fixed))
    assert result.returncode == 0, shown(result)
    assert_step(result, "build")
    assert_step(result, "deploy")
    calls = docker_calls(tmp_path)
    build = (commit, "compose", "build", "--build-arg", f"COMMIT={commit}", "hello-world")
    tags = [call for call in calls if call[1] == "tag"]
    assert tags == ([(None, "tag", "hello-world:latest", f"hello-world:{commit}")] if fixed else []), calls
    up = calls.index((commit, *UP))
    assert calls.index(build) < up, calls
    assert calls[up + 1 :] == [(commit, *PS)] * 3, calls  # starting, starting, healthy
    assert site.served() == commit == site.head()
    assert json.loads((tmp_path / "docker.json").read_text())["images"][f"hello-world:{commit}"] == commit


@pytest.mark.parametrize("old_image", ["kept", "gone"])
def test_compose_unhealthy_commit_is_rolled_back(site: ScratchDeployment, tmp_path: Path, old_image: str) -> None:
    before = snapshot(site)
    served = before["served"]
    commit = site.harmless_commit(f"compose, unhealthy, old image {old_image}")
    images = {f"hello-world:{served}": served} if old_image == "kept" else {}
    (tmp_path / "docker.json").write_text(json.dumps({"images": images, "running": served, "ps_calls": 0}))
    result = site.update(env=compose_env(site, tmp_path, FAKE_DOCKER_UNHEALTHY=commit))
    assert result.returncode == 1, shown(result)
    assert_step(result, "deploy", "FAILED")
    assert_step(result, "rollback")
    calls = docker_calls(tmp_path)
    first_up = calls.index((commit, *UP))
    assert calls[first_up + 1] == (commit, *PS)  # unhealthy: no more waiting
    rollback = calls[first_up + 2 :]
    rebuild = (served, "compose", "build", "--build-arg", f"COMMIT={served}", "hello-world")
    assert (rebuild in rollback) == (old_image == "gone"), calls
    assert rollback[-2:] == [(served, *UP), (served, *PS)], calls
    assert site.served() == served == site.head()
    assert json.loads((tmp_path / "docker.json").read_text())["running"] == served
    assert log_lines(site)[-1]["outcome"] == "rolled-back"
