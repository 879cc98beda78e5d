"""The shipped update path end to end: `make update` with config.yaml as shipped deploys a good commit.

A bare remote seeded from this working tree (the whole project, this suite included), a deployment cloned from
it and served by `make start`. Its config is the shipped config.yaml but for the port (a free one), the
Pushgateway (null: an operator's own Pushgateway on the default port must not receive a test's update metrics),
the watch (2s: no traffic flows) and the test user (null: see shipped_config), in a file beside the checkout
named by HELLO_CONFIG (a changed config.yaml in the checkout would be a dirty tree, which the update refuses).
A good commit is pushed and `make update` runs with the shipped test_command, `make test-fast`: the in-process
tier of this suite, inside the update's release, under a parent make, with HELLO_CONFIG set.
There this test skips itself (NESTED_ENV, set for the update it runs).

It costs about a minute (the fast tier, with 200 generated restore cases, not 2000). It runs in `make test`;
deselect it with `make test PYTEST_ARGS='-m "not update_e2e"'`.
The deployment shares this suite's venv through a `.venv` symlink (a real install would take minutes and the
network); its requirements files get the venv's make stamp times, so make installs nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hello.base.checkout import CHECKOUT
from hello.base.git import git as hello_git
from hello.base.http_client import http_request
from hello.base.proc import free_port
from hello.update.release import MAKE_STAMPS
from tests.support.processes import ProcessRegistry
from tests.support.scratch import GIT_IDENTITY
from tests.support.tools import require_tool

NESTED_ENV = "HELLO_UPDATE_E2E_NESTED"  # the recursion guard: set inside the nested suite of this test's update
UPDATE_TIMEOUT = 900.0  # the fast tier and the deploy on a busy 2-core machine, with room

pytestmark = pytest.mark.update_e2e


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def git(cwd: Path, *args: str) -> str:
    result = hello_git(cwd, *args, check=False, env=GIT_IDENTITY)
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def shipped_config(port: int) -> str:
    """config.yaml as shipped, with the port, the Pushgateway and the watch changed; every other line as it is."""
    text = (CHECKOUT / "config.yaml").read_text()
    assert "    test_command: make test-fast " in text, "the shipped test_command is no longer `make test-fast`"
    # watch: 2s, not 30s: no traffic flows here, the watch says "too little traffic to judge" sooner
    edits = (
        ("    port: 8000\n", f"    port: {port}\n"),
        ("url: http://127.0.0.1:9091", "url: null"),
        ("watch: 30s ", "watch: 2s "),
        # test_user: null: the nested suite runs as root, as before; this host's Python lives under /root (0700),
        # which nobody cannot run (tests/test_update_trust.py runs a deployment's tests as nobody)
        ("test_user: nobody ", "test_user: null "),
    )
    for old, new in edits:
        assert text.count(old) == 1, f"config.yaml no longer has one {old!r}"
        text = text.replace(old, new)
    return text


def seed_remote(root: Path) -> Path:
    """A bare remote holding this working tree (tracked and untracked, not ignored files) as one commit."""
    seed = root / "seed"
    listed = git(CHECKOUT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, listed):
        if (CHECKOUT / name).is_file():
            (seed / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(CHECKOUT / name, seed / name)
    git(seed, "init", "-q", "-b", "main")
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "the project as shipped")
    remote = root / "remote.git"
    git(root, "init", "-q", "--bare", "-b", "main", str(remote))
    git(seed, "push", "-q", str(remote), "main")
    return remote


def make(deploy: Path, target: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return run(["make", "-C", str(deploy), target], deploy, env, timeout)


def test_make_update_with_the_shipped_config_deploys_a_good_commit(tmp_path: Path, processes: ProcessRegistry):
    if os.environ.get(NESTED_ENV):
        pytest.skip(f"inside the nested suite of the end-to-end update ({NESTED_ENV} is set)")
    require_tool("git")
    require_tool("make")
    venv = Path(sys.prefix)
    if sys.prefix == sys.base_prefix or not (venv / MAKE_STAMPS["requirements-dev.txt"]).exists():
        pytest.skip(f"{sys.executable} is not a venv made by make: the deployment has none to share")
    port = free_port()
    remote = seed_remote(tmp_path)
    config = tmp_path / "conf" / "config.yaml"  # its run_dir, `run`, is tmp_path/conf/run
    config.parent.mkdir()
    config.write_text(shipped_config(port))
    deploy, dev = tmp_path / "deploy", tmp_path / "dev"
    git(tmp_path, "clone", "-q", str(remote), str(deploy))
    git(tmp_path, "clone", "-q", str(remote), str(dev))
    (deploy / ".venv").symlink_to(venv, target_is_directory=True)
    for name, stamp in MAKE_STAMPS.items():  # make sees the shared venv as up to date
        when = (venv / stamp).stat().st_mtime
        os.utime(deploy / name, (when, when))
    # The nested suite generates 200 hostile archives, not 2000: this suite's own run generates the 2000.
    env = {**os.environ, "HELLO_CONFIG": str(config), NESTED_ENV: "1", "HELLO_RESTORE_CASES": "200"}
    url = f"http://127.0.0.1:{port}"
    started = make(deploy, "start", env)
    assert started.returncode == 0, started.stdout + started.stderr
    run_dir = config.parent / "run"
    processes.adopt(int((run_dir / "hello_world.pid").read_text()))
    try:
        first = json.loads(http_request(url + "/version")[2])["commit"]
        assert first == git(deploy, "rev-parse", "HEAD")
        (dev / "CHANGES").write_text("a good change\n")
        git(dev, "add", "CHANGES")
        git(dev, "commit", "-q", "-m", "a good change")
        git(dev, "push", "-q", "origin", "main")
        good = git(dev, "rev-parse", "HEAD")
        result = make(deploy, "update", env, timeout=UPDATE_TIMEOUT)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        assert "test: make test-fast" in output and " passed" in output, output[-6000:]
        assert f"updated {first[:10]} -> {good[:10]}" in output, output[-3000:]
        assert json.loads(http_request(url + "/version")[2])["commit"] == good == git(deploy, "rev-parse", "HEAD")
        assert http_request(url + "/")[2] == b"Hello, World!\n"
        assert not (run_dir / "release").exists()
        assert git(deploy, "status", "--porcelain") == ""
    finally:
        make(deploy, "stop", env)
