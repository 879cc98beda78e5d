"""The scratch deployment of tests/test_update*.py: serving for a test module, consistent for each test.

@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with serving_deployment(tmp_path_factory.mktemp("update")) as pair:
        yield pair                                  # (ScratchDeployment, ProcessRegistry)

served = consistent(deployment)                      # in the per-test fixture: the served commit
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from conftest import PYTHON, ProcessRegistry, require_tool
from tests.support.scratch import ScratchDeployment, git


@contextlib.contextmanager
def serving_deployment(root: Path) -> Iterator[tuple[ScratchDeployment, ProcessRegistry]]:
    """A ScratchDeployment in root whose server runs for the block; every process it started killed after."""
    require_tool("git")
    registry = ProcessRegistry()
    site = ScratchDeployment(root, python=PYTHON)
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
