"""Pytest's hooks and the shared fixtures, and nothing else: the helpers the tests import live in tests/support/.

Tests start real programs (the server, Prometheus, git). Every process a test starts is registered with the
`processes` fixture, which kills its whole process group by PID at teardown. Nothing is ever stopped by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hello.monitoring.webhook_sink import WebhookSink
from tests.support.processes import ProcessRegistry
from tests.support.servers import HelloServer

# The update tests' scratch deployment fixtures (`deployment`, `site`); the e2e tier's marking and `podman_host`.
pytest_plugins = ["tests.support.deployment", "tests.support.e2e"]

# The suite runs wherever an operator runs it: under `make update` (a parent make's MAKEFLAGS and MAKELEVEL make
# every child make print "make[2]: Entering directory ..."), under cron, with HELLO_CONFIG naming a deployment's
# file. Each test sets the environment it needs; nothing inherited steers the session.
INHERITED_ENV = ("HELLO_CONFIG", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")


def pytest_configure(config: pytest.Config) -> None:
    for name in INHERITED_ENV:
        os.environ.pop(name, None)
    config.addinivalue_line("markers", "fast: the in-process tier of `make test-fast`: no real servers, the inner loop")
    config.addinivalue_line(
        "markers", "update_e2e: the shipped `make update` end to end, one whole nested suite run (deselectable)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end update (a whole nested suite) first: under xdist one worker runs it beside all the rest."""
    items.sort(key=lambda item: item.get_closest_marker("update_e2e") is None)


@pytest.fixture
def processes() -> Iterator[ProcessRegistry]:
    registry = ProcessRegistry()
    try:
        yield registry
    finally:
        registry.cleanup()


@pytest.fixture
def hello_server(processes: ProcessRegistry, tmp_path: Path) -> Callable[..., HelloServer]:
    """Factory: hello_server(workers=1, overrides={...}) starts a server and waits until it is ready."""
    count = 0

    def start(workers: int = 1, overrides: dict | None = None) -> HelloServer:
        nonlocal count
        count += 1
        return HelloServer(processes, tmp_path / f"server{count}", workers, overrides)

    return start


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    sink = WebhookSink()
    try:
        yield sink
    finally:
        sink.close()


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 1 MiB tmpfs mount, or a skip saying why there can be none."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
