"""The e2e tier's plugin (`make test-e2e`, marker `e2e`): the kit run as deployed, in real containers and hosts.

Every test under tests/e2e/ is marked `e2e`. Without podman (and debootstrap, which builds the base image) the
container tests are left out with ONE line at the end of the run naming what to install; in CI (CI=true), which
must have installed them (.ci/run), they run and fail on `podman_host`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import containers
from tests.support.tools import IN_CI

HERE = Path(__file__).resolve().parents[1] / "e2e"  # tests/e2e


def uses_podman(item: pytest.Item) -> bool:
    return "podman_host" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)
    if IN_CI or not containers.missing_tools():
        return
    left_out = [item for item in items if uses_podman(item)]
    if left_out:
        items[:] = [item for item in items if not uses_podman(item)]
        config.hook.pytest_deselected(items=left_out)


def runs_e2e(args: list[str]) -> bool:
    """Whether the session's paths include tests/e2e (or a folder above it: `make test`)."""
    paths = [Path(arg.split("::")[0]).resolve() for arg in args]
    return any(path == HERE or path in HERE.parents or HERE in path.parents for path in paths)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The one line of a run that left the tier out."""
    if not IN_CI and containers.missing_tools() and runs_e2e(config.args):
        terminalreporter.write_line(f"SKIPPED {containers.skip_reason()}", yellow=True, bold=True)


@pytest.fixture(scope="session")
def podman_host() -> None:
    """podman and debootstrap are here; in CI their absence fails the test naming the packages."""
    if containers.missing_tools():
        if IN_CI:
            pytest.fail(f"CI must run the {containers.skip_reason()}")
        pytest.skip(containers.skip_reason())
