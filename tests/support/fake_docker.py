"""The compose-mode tests' docker stand-in (tests/bin/docker): its environment and the calls it recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.support.scratch import ScratchDeployment
from tests.support.tools import PYTHON

STAND_INS = Path(__file__).resolve().parent.parent / "bin"  # docker and kubectl stand-ins
UP = ("compose", "up", "-d", "--no-deps", "hello-world")
PS = ("compose", "ps", "--all", "--format", "json", "hello-world")


def compose_env(
    site: ScratchDeployment, tmp_path: Path, update: dict[str, Any] | None = None, **extra: str
) -> dict[str, str]:
    """The environment of an update in compose mode (plus `update` settings) through the docker stand-in."""
    config = site.write_config(tmp_path / "compose.yaml", {"update": {"deploy": "compose", **(update or {})}})
    return {
        "HELLO_CONFIG": str(config),
        "PATH": f"{STAND_INS}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
        "FAKE_DOCKER_STATE": str(tmp_path / "docker.json"),
        "FAKE_DOCKER_RELOAD": "1",  # `compose up` reloads the real local server, which /version is read from
        "FAKE_DOCKER_PYTHON": PYTHON,
        **extra,
    }


def docker_calls(tmp_path: Path) -> list[tuple[str, ...]]:
    """Each docker call as (HELLO_COMMIT, *argv)."""
    lines = (tmp_path / "docker.log").read_text().splitlines()
    return [(entry["HELLO_COMMIT"], *entry["argv"]) for entry in map(json.loads, lines)]
