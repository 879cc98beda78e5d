"""The e2e tier's plugin (`make test-e2e`, marker `e2e`): the kit run as deployed, in real containers and hosts.

Every test under tests/e2e/ is marked `e2e`. The container tests ask for the `podman_host` fixture: without
podman (and debootstrap, which builds the base image) they skip with one line naming what to install, and in CI
(CI=true), which must have installed them (.ci/run), they fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import IN_CI
from tests.support import containers

HERE = Path(__file__).resolve().parents[1] / "e2e"  # tests/e2e


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def podman_host() -> None:
    """podman and debootstrap are here, or the test skips (fails in CI) with the one line naming the packages."""
    if containers.missing_tools():
        if IN_CI:
            pytest.fail(f"CI must run the {containers.skip_reason()}")
        pytest.skip(containers.skip_reason())
