"""validation_test.py end to end: a real deployment passes, and each real fault fails exactly its checks.

One module-scoped deployment is shared by the fault cases (each restores what it broke):
a git remote and a checkout cloned from it, the server started from that checkout (so /version's commit
comes from git), one real update through update_protocol.py, Prometheus (scrape interval 1s, the repo's
alert rules), a Pushgateway, Alertmanager (its webhook receiver an HTTP server of the test) and
node_exporter on free ports, a fresh backup and a running `backup_script.py schedule` loop.
The operator path runs the Makefile targets from this repo with HELLO_CONFIG pointing at a tmp config.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hello.base import monitor_login
from hello.base.checkout import CHECKOUT
from hello.base.config import load_config
from hello.base.http_client import http_request
from hello.base.proc import free_port, wait_until
from hello.monitoring.webhook_sink import WebhookSink
from hello.validation import monitoring, scheduler
from hello.validation.components import Context
from hello.validation.core import GROUPS, CheckFailed, Result
from hello.validation.registry import CHECKS, FIXES
from hello.validation.report import render_table
from tests.support.configs import write_config
from tests.support.monitoring import (
    RULES_DIR,
    Prometheus,
    prometheus_query,
    start_alertmanager,
    start_node_exporter,
    start_prometheus,
    start_pushgateway,
)
from tests.support.processes import ProcessRegistry
from tests.support.tools import PYTHON, require_tool

CHECK = {func.__name__: (group, name) for group, name, func in CHECKS}
GROUP = {group: {key for key, (g, _) in CHECK.items() if g == group} for group in GROUPS}
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def checked(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> str:
    done = run(args, cwd, env, timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def hello_targets(url: str) -> list[dict[str, Any]]:
    body = http_request(f"{url}/api/v1/targets?state=active", timeout=2)[2]
    return [t for t in json.loads(body)["data"]["activeTargets"] if t["labels"]["job"] == "hello-world"]


def monitoring_settles(prometheus: str) -> bool:
    """Prometheus has scraped the service a few times and holds both jobs' metrics: queries have data."""
    return all(
        prometheus_query(prometheus, expr)
        for expr in (
            'count_over_time(up{job="hello-world"}[1m]) >= 3',
            'up{job="hello-world"} == 1',
            "sum(rate(hello_world_requests_total[4s]))",
            "hello_world_backup_last_success_timestamp_seconds",
            "hello_world_update_success",
        )
    )


def watchdog_in(alertmanager: str, headers: dict[str, str] | None = None) -> bool:
    url = alertmanager + '/api/v2/alerts?filter=alertname="Watchdog"'
    return bool(json.loads(http_request(url, timeout=2, headers=headers)[2]))


@dataclass
class Deployment:
    root: Path
    checkout: Path
    config: Path
    env: dict[str, str]
    server_url: str
    prometheus: str
    backups: Path
    registry: ProcessRegistry
    prometheus_server: Prometheus | None = None
    alertmanager: str = ""

    def validate(self, *args: str) -> tuple[int, dict[str, tuple[str, str]]]:
        """Run the checkout's validation_test.py --json; (exit code, {check function name: (status, detail)})."""
        done = run([PYTHON, str(self.checkout / "validation_test.py"), "--json", *args], self.checkout, self.env)
        assert "Traceback" not in done.stderr, done.stderr
        by_name = {(r["group"], r["check"]): (r["status"], r["detail"]) for r in json.loads(done.stdout)}
        return done.returncode, {key: by_name[where] for key, where in CHECK.items() if where in by_name}

    def hello(self, command: str) -> str:
        out = checked([PYTHON, str(self.checkout / "scripts" / "service.py"), command], self.checkout, self.env)
        if command == "start":
            self.registry.adopt(int((self.root / "run" / "hello_world.pid").read_text()))
        return out

    def reload_prometheus(self, hello_port: int) -> None:
        """Point Prometheus's hello-world job at hello_port and reload it."""
        assert self.prometheus_server is not None, "Prometheus is not started yet"
        self.prometheus_server.reload(hello_port)

    def git(self, *args: str) -> str:
        return checked(["git", *args], self.checkout, self.env).strip()


def copy_project(target: Path) -> None:
    """The repo's files as a deployment has them: tracked and new files, not what .gitignore names."""
    listed = checked(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], CHECKOUT, dict(os.environ)
    )
    for name in listed.split("\0"):
        path = CHECKOUT / name
        if name and path.is_file() and not name.startswith("tests/"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / name)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_tool("prometheus")
    require_tool("prometheus-pushgateway")
    require_tool("git")
    require_tool("prometheus-alertmanager")
    require_tool("prometheus-node-exporter")
    root = tmp_path_factory.mktemp("validation")
    registry = ProcessRegistry()
    server_port, prometheus_port, pushgateway_port = free_port(), free_port(), free_port()
    alertmanager_port, node_port = free_port(), free_port()
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    receiver = WebhookSink()
    source = root / "source"
    (source / "docs").mkdir(parents=True)
    (source / "docs" / "notes.txt").write_text("what the backup keeps\n")
    (source / "data.bin").write_bytes(os.urandom(64 * 1024))

    # The developers' repository, its bare remote, and the deployed checkout cloned from it.
    work, remote, checkout = root / "work", root / "remote.git", root / "checkout"
    work.mkdir()
    copy_project(work)
    overrides = {
        "run_dir": str(root / "run"),
        "server": {"host": "127.0.0.1", "port": server_port, "workers": 1},
        "monitoring": {
            "prometheus": {"scrape_interval": "1s", "url": prometheus},
            "pushgateway": {"url": f"http://127.0.0.1:{pushgateway_port}"},
            "grafana": {"url": None},
            "alertmanager": {
                "url": f"http://127.0.0.1:{alertmanager_port}",
                "receivers": {"webhook_url": receiver.url + "/alerts"},
                "heartbeat_url": receiver.url + "/heartbeat",
            },
            "node_exporter": {"url": f"http://127.0.0.1:{node_port}"},
        },
        "backup": {"source": str(source), "destination": str(root / "backups")},
        "update": {"test_command": "true", "remote": "origin", "branch": "main", "watch": 0},  # no traffic to watch
        "validation": {"timeout": "3s"},
    }
    write_config(work, overrides)
    env = {**os.environ, **GIT_ENV, "HELLO_CONFIG": str(checkout / "config.yaml")}
    for args in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "deployed"]):
        checked(args, work, env)
    checked(["git", "clone", "-q", "--bare", str(work), str(remote)], root, env)
    checked(["git", "remote", "add", "origin", str(remote)], work, env)
    checked(["git", "clone", "-q", str(remote), str(checkout)], root, env)

    deployment = Deployment(
        root,
        checkout,
        checkout / "config.yaml",
        env,
        f"http://127.0.0.1:{server_port}",
        prometheus,
        root / "backups",
        registry,
    )
    try:
        deployment.hello("start")
        pushgateway = start_pushgateway(registry, root, pushgateway_port)
        alertmanager = start_alertmanager(
            registry, root / "alertmanager", load_config(checkout / "config.yaml"), alertmanager_port
        )
        node = start_node_exporter(registry, root, root / "run" / "metrics", node_port)
        deployment.alertmanager = alertmanager
        deployment.prometheus_server = start_prometheus(
            registry,
            root,
            server_port,
            pushgateway,
            1.0,
            checkout / "monitoring" / "rules",
            prometheus_port,
            alertmanager_url=alertmanager,
            node_url=node,
            extra_args=("--rules.alert.resend-delay=1s",),  # the Watchdog reaches Alertmanager within seconds
        )
        checked([PYTHON, str(checkout / "backup_script.py"), "create"], checkout, env)
        registry.start(
            [PYTHON, str(checkout / "backup_script.py"), "schedule"],
            cwd=checkout,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        # One real update: a new commit on the remote, deployed by the protocol (it reloads the server).
        (work / "CHANGES.txt").write_text("a change to deploy\n")
        checked(["git", "add", "CHANGES.txt"], work, env)
        checked(["git", "commit", "-qm", "a change"], work, env)
        checked(["git", "push", "-q", "origin", "main"], work, env)
        checked([PYTHON, str(checkout / "update_protocol.py")], checkout, env, timeout=120)
        version = json.loads(http_request(deployment.server_url + "/version")[2])
        assert version["commit"] == deployment.git("rev-parse", "HEAD")

        wait_until(lambda: monitoring_settles(prometheus), 30, "Prometheus to hold the service's and jobs' metrics")
        wait_until(lambda: watchdog_in(alertmanager), 30, "the Watchdog to reach Alertmanager")
        yield deployment
    finally:
        with contextlib.suppress(Exception):
            run([PYTHON, str(checkout / "scripts" / "service.py"), "stop"], checkout, env, timeout=30)
        registry.cleanup()
        receiver.close()


def assert_only_failing(results: dict[str, tuple[str, str]], must: set[str], may: frozenset[str] = frozenset()):
    """The checks in must FAIL, those in may may FAIL, every other one PASSes (Grafana, offsite lock SKIP)."""
    assert set(results) == set(CHECK), f"checks missing from the output: {set(CHECK) - set(results)}"
    for key, (status, detail) in results.items():
        if key == "check_grafana":
            assert status == "SKIP" and "grafana.url is null" in detail
        elif key == "check_offsite_locked":  # tests/test_offsite_immutable.py runs it against a locked bucket
            assert status == "SKIP" and "immutable is null" in detail
        elif key in must:
            assert status == "FAIL", f"{key} should fail: {status} {detail}"
        elif key not in may:
            assert status == "PASS", f"{key} should pass: {status} {detail}"


def test_a_healthy_deployment_passes_every_check(deployment: Deployment) -> None:
    code, results = deployment.validate()
    assert_only_failing(results, set())
    assert code == 0
    assert "schedule loop: PID" in results["check_scheduler"][1]
    assert deployment.git("rev-parse", "HEAD")[:12] in results["check_served_commit"][1]
    assert results["check_last_update"][1].startswith("updated")
    # Every panel's query and the deploy annotation's answered, the Deploys ones with the real update's record.
    assert "empty" not in results["check_dashboard"][1], results["check_dashboard"]


def test_a_corrupted_archive_fails_its_checksum_and_read(deployment: Deployment) -> None:
    archive = max(deployment.backups.glob("hello-world-*.tar.gz"))
    original = archive.read_bytes()
    middle = len(original) // 2
    try:
        archive.write_bytes(
            original[:middle] + bytes(b ^ 0xFF for b in original[middle : middle + 64]) + original[middle + 64 :]
        )
        code, results = deployment.validate()
        assert_only_failing(results, {"check_archive_checksum", "check_archive_verify"})
        assert code == 1
        assert "checksum mismatch" in results["check_archive_checksum"][1]
        assert archive.name in results["check_archive_verify"][1]
    finally:
        archive.write_bytes(original)


def test_a_30_hour_old_newest_backup_is_stale_and_disagrees_with_the_metric(deployment: Deployment) -> None:
    aside = deployment.root / "aside"
    aside.mkdir()
    moved = sorted(deployment.backups.glob("hello-world-*"))
    for path in moved:
        path.rename(aside / path.name)
    stamp = datetime.fromtimestamp(time.time() - 30 * 3600, UTC).strftime("%Y%m%dT%H%M%SZ")
    old = deployment.backups / f"hello-world-{stamp}.tar.gz"
    newest = aside / max(p.name for p in moved if p.name.endswith(".tar.gz"))
    shutil.copyfile(newest, old)
    digest = (aside / f"{newest.name}.sha256").read_text().split()[0]
    old.with_name(old.name + ".sha256").write_text(f"{digest}  {old.name}\n")
    try:
        code, results = deployment.validate()
        assert_only_failing(results, {"check_archive_age", "check_backup_metric"})
        assert code == 1
        assert f"{old.name} is 30.0 h old, more than 26.0 h" in results["check_archive_age"][1]
        assert "hello_world_backup_last_success_timestamp_seconds says" in results["check_backup_metric"][1]
    finally:
        old.unlink()
        old.with_name(old.name + ".sha256").unlink()
        for path in moved:
            (aside / path.name).rename(path)
        aside.rmdir()


def test_a_checkout_one_commit_ahead_of_the_served_code_fails_the_commit_check(deployment: Deployment) -> None:
    served = deployment.git("rev-parse", "HEAD")
    deployment.git("commit", "-q", "--allow-empty", "-m", "checked out, not deployed")
    try:
        code, results = deployment.validate()
        assert_only_failing(results, {"check_served_commit"})
        assert code == 1
        assert f"is 1 commit(s) ahead of the served {served[:12]}" in results["check_served_commit"][1]
    finally:
        deployment.git("reset", "-q", "--hard", served)


def test_prometheus_scraping_a_wrong_port_fails_the_target_check(deployment: Deployment) -> None:
    wrong = free_port()
    right = urllib.parse.urlsplit(deployment.server_url).netloc
    deployment.reload_prometheus(wrong)
    try:
        wait_until(
            lambda: [
                t
                for t in hello_targets(deployment.prometheus)
                if t["health"] == "down" and f":{wrong}/" in t["scrapeUrl"]
            ],
            15,
            "Prometheus to scrape the wrong port",
        )
        # A reload restarts Prometheus's rule groups: the Watchdog is sent again within the resend delay.
        wait_until(lambda: watchdog_in(deployment.alertmanager), 30, "the Watchdog back in Alertmanager")
        code, results = deployment.validate()
        # The dashboard loses its request series with the target; HelloWorldDown may begin to fire.
        assert_only_failing(results, {"check_target"}, frozenset({"check_dashboard", "check_alerts"}))
        assert code == 1
        detail = results["check_target"][1]
        assert f"127.0.0.1:{wrong}" in detail and "connection refused" in detail, detail
        assert f"listens on port {right.split(':')[1]}" in detail
    finally:
        deployment.reload_prometheus(int(right.split(":")[1]))
        wait_until(
            lambda: (
                all(t["health"] == "up" and right in t["scrapeUrl"] for t in hello_targets(deployment.prometheus))
                and prometheus_query(
                    deployment.prometheus, 'sum(rate(hello_world_requests_total{job="hello-world"}[4s]))'
                )
            ),
            15,
            "Prometheus to scrape the service again",
        )


def test_a_stopped_server_fails_the_service_checks_and_the_served_commit(deployment: Deployment) -> None:
    deployment.hello("stop")
    try:
        code, results = deployment.validate()
        must = GROUP["service"] | {"check_served_commit", "check_good_release"}
        # Prometheus notices within a scrape interval or two: its checks may or may not fail yet.
        assert_only_failing(results, must, frozenset({"check_target", "check_dashboard", "check_alerts"}))
        assert code == 1
        for key in must:
            assert results[key][1] == f"hello-world server at {deployment.server_url} unreachable: connection refused"
    finally:
        deployment.hello("start")


def test_the_service_group_alone_needs_only_the_server(deployment: Deployment) -> None:
    code, results = deployment.validate("--only", "service")
    assert code == 0
    assert set(results) == GROUP["service"]
    assert {status for status, _ in results.values()} == {"PASS"}


# --- without a deployment -------------------------------------------------------------------------


def test_down_components_fail_fast_with_their_names_and_no_traceback(tmp_path: Path) -> None:
    # A server that accepts connections but never answers: the wait is bounded by validation.timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        dead, silent_port = free_port(), silent.getsockname()[1]
        config = write_config(
            tmp_path,
            {
                "server": {"port": silent_port},
                "monitoring": {
                    "prometheus": {"url": f"http://127.0.0.1:{dead}"},
                    "pushgateway": {"url": None},
                    "grafana": {"url": None},
                    "alertmanager": {"url": f"http://127.0.0.1:{dead}"},
                    "node_exporter": {"url": None},
                },
                "backup": {"destination": str(tmp_path / "none")},
                "validation": {"timeout": "1s"},
            },
        )
        env = {**os.environ, "HELLO_CONFIG": str(config)}
        started = time.monotonic()
        done = run([PYTHON, str(CHECKOUT / "validation_test.py"), "--json"], CHECKOUT, env)
        took = time.monotonic() - started
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    results = {r["check"]: r for r in json.loads(done.stdout)}
    root = results[CHECK["check_root"][1]]
    assert root["detail"] == f"hello-world server at http://127.0.0.1:{silent_port} unreachable: no answer within 1s"
    ready = results[CHECK["check_prometheus_ready"][1]]
    assert ready["detail"] == f"Prometheus at http://127.0.0.1:{dead} unreachable: connection refused"
    assert "no backup destination" in results[CHECK["check_archive_age"][1]]["detail"]
    # Once silent, the server is not waited for again: one timeout for the whole service group.
    assert took < 20, f"validation took {took:.1f}s with one silent component"


# A FAIL line says `; fix:` and names a command to run, a config key to set, or the runbooks (a firing alert).
FIX_HINT = re.compile(r"; fix: .*(`[^`]+`|system\.[a-z_.]+|docs/runbooks\.md)")


def test_a_fresh_system_fails_in_lines_that_fit_and_say_what_to_do(hello_server) -> None:
    # Right after `make start`: the server answers; no monitoring runs, no backup was taken, no scheduler.
    dead = free_port()
    urls = {key: {"url": f"http://127.0.0.1:{dead}"} for key in ("prometheus", "pushgateway", "alertmanager")}
    server = hello_server(overrides={"monitoring": urls | {"node_exporter": {"url": f"http://127.0.0.1:{dead}"}}})
    env, script = server.env, str(CHECKOUT / "validation_test.py")
    done = run([PYTHON, script], CHECKOUT, env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()  # stderr: only the Pushgateway's warning (the push failed; the textfile has it)
    assert max(map(len, lines)) <= 120, "\n".join(line for line in lines if len(line) > 120)
    failed = [line for line in lines if line.startswith("FAIL")]
    as_json = {(r["group"], r["check"]): r for r in json.loads(run([PYTHON, script, "--json"], CHECKOUT, env).stdout)}
    failed_json = sorted(f"{r['check']}: {r['detail']}" for r in as_json.values() if r["status"] == "FAIL")
    assert len(failed) == len(failed_json) >= 8, "\n".join([*failed, "--- and with --json:", *failed_json])
    assert all(FIX_HINT.search(line) for line in failed), "\n".join(failed)
    assert f"{CHECK['check_archive_age'][1]}; fix: run `make backup`" in done.stdout
    assert f"{CHECK['check_scheduler'][1]}; fix: run `make cron | crontab -` or `make systemd-install`" in done.stdout
    assert f"{CHECK['check_prometheus_ready'][1]}; fix: run `make monitor`" in done.stdout
    assert as_json[CHECK["check_archive_age"]]["fix"] == "run `make backup`"
    assert all(r["fix"] == "" for r in as_json.values() if r["status"] != "FAIL")
    # -v: every detail whole (the scheduler's names the checkout it looked for), with durations.
    verbose = run([PYTHON, script, "-v", "--only", "backup"], CHECKOUT, env).stdout
    assert as_json[CHECK["check_scheduler"]]["detail"] in verbose and " ms)" in verbose


def test_every_checks_fail_line_fits_120_columns_with_its_fix() -> None:
    """Each check's own fix (what a FAIL shows when its fault names none) fits beside its name on one line."""
    long = "x" * 500
    results = [Result(g, n, "FAIL", long, 0.0, FIXES[(g, n)]) for g, n, _ in CHECKS]
    lines = render_table(results).splitlines()
    assert max(map(len, lines)) <= 120, "\n".join(line for line in lines if len(line) > 120)
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == len(results) and all(FIX_HINT.search(line) for line in failed), "\n".join(failed)


def test_bad_usage_and_bad_config_exit_2_with_one_line(tmp_path: Path) -> None:
    done = run([PYTHON, str(CHECKOUT / "validation_test.py"), "--only", "service,nonsense"], CHECKOUT, dict(os.environ))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "validation_test.py: --only: unknown group 'nonsense' "
        "(choose from service, monitoring, backup, update, restarts)"
    ]
    bad = tmp_path / "config.yaml"
    bad.write_text("system:\n  validation:\n    timeout: soon\n")
    done = run([PYTHON, str(CHECKOUT / "validation_test.py")], CHECKOUT, {**os.environ, "HELLO_CONFIG": str(bad)})
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "system.validation.timeout" in done.stderr


def test_the_backup_line_of_make_cron_counts_as_a_scheduler() -> None:
    done = run([PYTHON, str(CHECKOUT / "scripts" / "cron.py")], CHECKOUT, dict(os.environ))
    assert done.returncode == 0, done.stderr
    found = scheduler.backup_cron_lines(done.stdout)
    assert len(found) == 1 and "backup" in found[0], done.stdout
    assert scheduler.backup_cron_lines("# 0 2 * * * make backup\n*/15 * * * * make validate\n") == []
    assert scheduler.backup_cron_lines("0 3 * * 0 cd /x && .venv/bin/python backup_script.py drill\n") == []


def test_pytest_collects_nothing_from_validation_test_py() -> None:
    done = run(
        [PYTHON, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-n", "0", "validation_test.py"],
        CHECKOUT,
        dict(os.environ),
    )
    assert done.returncode == 5, done.stdout  # 5: no tests collected


@pytest.mark.fast
def test_the_checks_run_in_the_order_of_validation_steps_md() -> None:
    """Each check has its step in the operator's guide (a row starting its table), and they come in the same order:
    the order hello/validation/__init__.py imports the group modules in."""
    steps = re.findall(r"^\| ([^|]+?) \|", (CHECKOUT / "validation_steps.md").read_text(encoding="utf-8"), re.MULTILINE)
    documented = [next((step for step in steps if name.startswith(step)), None) for _, name, _ in CHECKS]
    assert None not in documented, [name for (_, name, _), step in zip(CHECKS, documented, strict=True) if not step]
    assert documented == [step for step in steps if step in documented]


@pytest.mark.fast
def test_only_the_command_imports_hello_validation_and_its_groups_not_each_other() -> None:
    """The seam points one way (hello/validation/__init__.py): no other command, script or package imports it; and
    a group's module imports no other group's, so importing one never registers another group's checks early."""
    importers, crossings = [], []
    groups = {"service", "monitoring", "alert_delivery", "backup", "scheduler", "update", "restarts"}
    for path in sorted({*CHECKOUT.glob("*.py"), *CHECKOUT.glob("scripts/*.py"), *CHECKOUT.glob("hello/**/*.py")}):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
        inside = path.relative_to(CHECKOUT).parts[:2] == ("hello", "validation")
        if not inside and path.name != "validation_test.py" and any(n.startswith("hello.validation") for n in names):
            importers.append(str(path.relative_to(CHECKOUT)))
        if inside and path.stem in groups:
            crossings += [f"{path.stem} -> {n}" for n in names if n.removeprefix("hello.validation.") in groups]
    assert importers == [], "only validation_test.py and the tests may import hello.validation"
    assert crossings == [], "what two groups share belongs in hello/validation/last_runs.py"


# --- the operator's path --------------------------------------------------------------------------


def test_make_monitor_start_backup_validate_exits_0(tmp_path: Path, processes: ProcessRegistry) -> None:
    require_tool("prometheus")
    require_tool("prometheus-pushgateway")
    require_tool("make")
    require_tool("prometheus-alertmanager")
    require_tool("prometheus-node-exporter")
    prometheus = f"http://127.0.0.1:{free_port()}"
    alertmanager = f"http://127.0.0.1:{free_port()}"
    receiver = WebhookSink()
    source = tmp_path / "source"
    source.mkdir()
    (source / "file.txt").write_text("keep me\n")
    config = write_config(
        tmp_path,
        {
            "server": {"host": "127.0.0.1", "port": free_port(), "workers": 1},
            "monitoring": {
                "prometheus": {"scrape_interval": "1s", "url": prometheus},
                "pushgateway": {"url": f"http://127.0.0.1:{free_port()}"},
                "grafana": {"url": None},
                "alertmanager": {"url": alertmanager, "receivers": {"webhook_url": receiver.url + "/alerts"}},
                "node_exporter": {"url": f"http://127.0.0.1:{free_port()}"},
            },
            "backup": {"source": str(source), "destination": str(tmp_path / "backups")},
        },
    )
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    run_dir = tmp_path / "run"

    def make(target: str) -> subprocess.CompletedProcess[str]:
        return run(["make", "-s", "-C", str(CHECKOUT), target], CHECKOUT, env, timeout=120)

    try:
        done = make("monitor")
        with contextlib.suppress(OSError, ValueError):
            for entry in json.loads((run_dir / "monitor" / "monitor.json").read_text()).values():
                processes.adopt(entry["pid"])
        assert done.returncode == 0, done.stdout + done.stderr
        done = make("start")
        with contextlib.suppress(OSError, ValueError):
            processes.adopt(int((run_dir / "hello_world.pid").read_text()))
        assert done.returncode == 0, done.stdout + done.stderr
        done = make("backup")
        assert done.returncode == 0, done.stdout + done.stderr
        processes.start(
            ["make", "-s", "-C", str(CHECKOUT), "backup-schedule"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: scheduler.schedule_loops({CHECKOUT}, config), 30, "the `make backup-schedule` loop")
        wait_until(
            lambda: (
                prometheus_query(prometheus, 'count_over_time(up{job="hello-world"}[1m]) >= 3')
                and prometheus_query(prometheus, "sum(rate(hello_world_requests_total[4s]))")
                and prometheus_query(prometheus, "hello_world_backup_success")
            ),
            30,
            "Prometheus to scrape the service and the backup metrics",
        )
        login = monitor_login.auth_headers(load_config(config))  # make monitor's Alertmanager wants it
        wait_until(lambda: watchdog_in(alertmanager, login), 60, "the Watchdog to reach Alertmanager")
        done = make("validate")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 failed" in done.stdout
        # The run's results are metrics: in the textfile node_exporter reads, and on the Pushgateway.
        textfile = (run_dir / "metrics" / "hello_world_validation.prom").read_text()
        assert "hello_world_validation_success 1.0" in textfile
        assert (
            'hello_world_validation_check_success{check="a receiver is configured",group="monitoring"} 1.0' in textfile
        )
        wait_until(
            lambda: prometheus_query(prometheus, 'hello_world_validation_success{job="hello_world_validation"} == 1'),
            30,
            "Prometheus to hold the pushed validation result",
        )
    finally:
        receiver.close()
        make("stop")
        make("monitor-stop")
        for proc in processes.popens:  # the backup-schedule loop: its own session, stopped by its PID group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)


def test_a_schedule_loop_counts_as_the_scheduler_only_of_the_config_it_reads(
    tmp_path: Path, processes: ProcessRegistry
) -> None:
    """Another deployment's loop from this checkout (another config) is not this one's scheduler: the check looked
    only at the checkout, and a test's loop running beside made the fresh-system test see a scheduler."""
    ours, other = write_config(tmp_path / "ours", {}), write_config(tmp_path / "other", {})
    env = {**os.environ, "HELLO_CONFIG": str(ours)}
    loop = processes.start([PYTHON, str(CHECKOUT / "backup_script.py"), "schedule"], env=env, cwd=tmp_path)
    wait_until(lambda: scheduler.schedule_loops({CHECKOUT}, ours), 30, "the loop found by the config it reads")
    assert loop.poll() is None
    assert scheduler.schedule_loops({CHECKOUT}, other) == [], "a loop reading another config"


def test_the_kits_webhook_sink_prints_each_alert_it_receives(tmp_path: Path, processes: ProcessRegistry) -> None:
    """README "First run": `python -m hello.monitoring.webhook_sink PORT` is a receiver to try alert delivery with."""
    port, out = free_port(), tmp_path / "sink.out"
    with out.open("w") as stdout:
        processes.start([PYTHON, "-m", "hello.monitoring.webhook_sink", str(port)], cwd=CHECKOUT, stdout=stdout)
    wait_until(lambda: f"http://127.0.0.1:{port}/alerts" in out.read_text(), 10, "the sink's webhook_url line")
    alert = {"status": "firing", "labels": {"alertname": "HelloWorldDown"}}
    body = json.dumps({"version": "4", "status": "firing", "alerts": [alert]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/alerts", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    wait_until(lambda: " firing HelloWorldDown\n" in out.read_text(), 10, "the sink's line for the alert")


def test_the_slo_check_fails_without_the_rules_and_reports_the_budget_with_them(
    tmp_path: Path, processes: ProcessRegistry, hello_server
) -> None:
    """Issue 25: validation reports each objective's 30-day budget left, and fails when Prometheus has not loaded
    the SLO rules (here: a Prometheus given no rules at all)."""
    server = hello_server()
    empty = tmp_path / "no-rules"
    empty.mkdir()
    for name, rules_dir in (("without", empty), ("with", RULES_DIR)):
        (tmp_path / name).mkdir()
        prometheus = start_prometheus(processes, tmp_path / name, server.port, None, 1.0, rules_dir)
        config = load_config(write_config(tmp_path / name, {"monitoring": {"prometheus": {"url": prometheus.url}}}))
        context = Context(config)
        if rules_dir == empty:
            with pytest.raises(CheckFailed, match="has not loaded the SLO rules"):
                monitoring.check_slo_budget(context)
            continue

        def reported(context: Context = context) -> str:
            http_request(server.url + "/")  # user traffic: the budget has something to be over
            detail = monitoring.check_slo_budget(context)
            return detail if "no user traffic" not in detail else ""

        detail = wait_until(reported, 30, "the SLO budget to be recorded", interval=0.5)
        # No 5xx: all the availability budget is left; a loaded machine may answer one request slower than 100ms.
        assert re.fullmatch(
            r"budget left: availability 99\.90%: hello-world 100\.0%; latency 99\.00%: hello-world -?[\d.]+%", detail
        ), detail
