"""The scratch deployment of tests/test_update*.py: serving for a test module, consistent for each test.

A pytest plugin (conftest.py's pytest_plugins): the fixtures `deployment` (one per test module) and `site`
(consistent for each test); a module may override `site` (tests/test_update_kubernetes.py does).

    served = consistent(deployment)                  # in a per-test fixture: the served commit
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ProcessRegistry
from tests.support.scratch import ScratchDeployment, git
from tests.support.tools import PYTHON, require_tool


@contextlib.contextmanager
def serving_deployment(root: Path, **options: bool) -> Iterator[tuple[ScratchDeployment, ProcessRegistry]]:
    """A ScratchDeployment(root, **options) whose server runs for the block; every process it started killed after."""
    require_tool("git")
    registry = ProcessRegistry()
    site = ScratchDeployment(root, python=PYTHON, **options)
    try:
        site.server("start")
        registry.adopt(site.pid())
        yield site, registry
    finally:
        site.server("stop", check=False)
        registry.cleanup()


def consistent(deployment: tuple[ScratchDeployment, ProcessRegistry]) -> str:
    """Server up, checkout clean on main at the served commit, remote there too, no lock or pending marker;
    the served commit."""
    site, registry = deployment
    if site.server("status", check=False).returncode != 0:
        site.server("start")
        registry.adopt(site.pid())
    git(site.deploy, "remote", "set-url", "origin", str(site.remote))
    git(site.deploy, "checkout", "-q", "-f", "main")
    served = site.served()
    git(site.deploy, "reset", "-q", "--hard", served)
    git(site.deploy, "clean", "-q", "-fd")
    git(site.remote, "update-ref", "refs/heads/main", served)
    for name in ("update.lock", "update.pending.json"):
        (site.run_dir / name).unlink(missing_ok=True)
    return served


@pytest.fixture(scope="module")
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ScratchDeployment, ProcessRegistry]]:
    """A serving scratch deployment of the test module's own."""
    with serving_deployment(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])) as pair:
        yield pair


@pytest.fixture
def site(deployment: tuple[ScratchDeployment, ProcessRegistry]) -> ScratchDeployment:
    """The deployment, consistent: server up, checkout clean on main at the served commit, remote there too."""
    consistent(deployment)
    return deployment[0]


STEP_LINE = r"^{name}\s+{outcome}\s+\d+\.\d\ds"  # how update_protocol.py prints a step


def shown(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def assert_step(result: subprocess.CompletedProcess, name: str, outcome: str = "ok") -> None:
    assert re.search(STEP_LINE.format(name=name, outcome=outcome), result.stdout, re.MULTILINE), shown(result)


def log_lines(site: ScratchDeployment) -> list[dict]:
    path = site.run_dir / "update.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def metric(site: ScratchDeployment, name: str) -> float:
    text = (site.run_dir / "metrics" / "hello_world_update.prom").read_text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in the update textfile:\n{text}"
    return float(match.group(1))
