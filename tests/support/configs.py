"""Config files for tests: the checkout's config.yaml with a test's own run dir and overrides (write_config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hello.base.config import DEFAULT_PATH
from hello.platform.kubernetes import deep_merge


def write_config(directory: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A config.yaml in directory: the repo's, with run_dir inside directory, then the overrides (under `system`)."""
    directory.mkdir(parents=True, exist_ok=True)
    system = yaml.safe_load(DEFAULT_PATH.read_text())["system"]
    system = deep_merge(system, {"run_dir": str(directory / "run")})
    system = deep_merge(system, overrides or {})
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump({"system": system}, sort_keys=False))
    return path
