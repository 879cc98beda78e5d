"""Issue 24.6: messages that say what is wrong and what to do (config, git, make, validation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hello.base.checkout import CHECKOUT
from hello.base.config import ConfigError, load_config
from hello.base.git import GitError, git
from hello.validation.components import Context
from hello.validation.core import CheckFailed
from hello.validation.update import check_last_update

pytestmark = pytest.mark.fast  # the in-process tier (make test-fast)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_number_in_quotes_is_named_as_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, 'system:\n  server: {port: "8000"}\n'))
    assert "system.server.port" in str(caught.value) and "without the quotes" in str(caught.value)


def test_a_duration_in_quotes_is_plain_seconds(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'system:\n  update: {watch: "45"}\n'))["update"]["watch"] == 45.0


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hello.base.config", *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=60
    )


def test_check_config_prints_a_verdict_and_what_differs(tmp_path: Path) -> None:
    path = write(tmp_path, "system:\n  server: {port: 8123}\n")
    result = check_config(str(path))
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[0] == f"{path}: OK, 1 key(s) differ from the defaults"
    assert lines[1:] == ["  system.server.port: 8123 (default 8000)"]
    assert json.loads(check_config(str(path), "--json").stdout)["server"]["port"] == 8123


def test_a_failed_git_command_quotes_the_line_that_says_what_failed(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    with pytest.raises(GitError) as caught:
        git(tmp_path, "ls-remote", "--heads", "origin", "main")
    assert "does not appear to be a git repository" in str(caught.value)
    assert "the repository exists" not in str(caught.value)


def test_make_help_writes_no_escape_codes_into_a_pipe() -> None:
    result = subprocess.run(["make", "-s", "-C", str(CHECKOUT), "help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "  run " in result.stdout
    assert "\033" not in result.stdout


def test_make_restore_usage_names_every_option() -> None:
    result = subprocess.run(["make", "-s", "-C", str(CHECKOUT), "restore"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "KEEP_SETUID=1" in result.stderr


def test_monitor_help_names_the_four_services() -> None:
    result = subprocess.run(
        [sys.executable, str(CHECKOUT / "scripts/monitor.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert "Prometheus, Alertmanager, the Pushgateway and node_exporter" in result.stdout


def test_a_refused_update_says_what_was_refused_and_why(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"system:\n  run_dir: {tmp_path / 'run'}\n"))
    (tmp_path / "run").mkdir()
    entry = {"time": "2026-12-04T10:00:00Z", "from": None, "to": None, "outcome": "refused", "exit": 2,
             "reason": "the checkout has uncommitted changes: hello_world.py"}  # fmt: skip
    (tmp_path / "run/update.log").write_text(json.dumps(entry) + "\n")
    with pytest.raises(CheckFailed) as caught:
        check_last_update(Context(config))
    assert "None" not in str(caught.value)
    assert "uncommitted changes: hello_world.py" in str(caught.value)
