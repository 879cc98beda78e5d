"""The checkout's own commands that an update runs as children, with the update's config file.

    run_script(repo, config_file, "backup_script.py", "create", timeout)    # its last output line
    run_script(repo, config_file, "scripts/service.py", "reload", timeout)  # as `python -m scripts.service`, in repo
    validate_service(repo, config_file, say)                                 # validation_test.py --only service

Each raises ScriptFailed, one line naming the command and why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hello.base.checkout import command_argv

VALIDATION_TIMEOUT = 120.0


class ScriptFailed(Exception):
    """A child script failed, could not run or did not finish; str() is the reason, one line."""


def run_script(repo: Path, config_file: str | Path, script: str, command: str, timeout: float) -> str:
    """`python <repo>/<script> <command>` (scripts/: `python -m scripts.<name>`) in repo with HELLO_CONFIG=config_file;
    its last line. ScriptFailed when it fails."""
    argv = [*command_argv(sys.executable, repo, script), command]
    env = {**os.environ, "HELLO_CONFIG": str(config_file)}
    name = f"{Path(script).name} {command}"
    try:
        result = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ScriptFailed(f"{name} did not finish within {timeout:g}s") from None
    said = (result.stdout.strip() + "\n" + result.stderr.strip()).strip().splitlines()
    if result.returncode != 0:
        raise ScriptFailed(f"{name} exited {result.returncode}: {said[-1] if said else ''}")
    return said[-1] if said else ""


def validate_service(repo: Path, config_file: str | Path, say: Callable[[str], None]) -> None:
    """`validation_test.py --only service` of the checkout against config_file; its last lines to say on failure."""
    script = repo / "validation_test.py"
    if not script.exists():
        raise ScriptFailed(f"{script} not found: cannot validate the service")
    env = {**os.environ, "HELLO_CONFIG": str(config_file)}
    command = [sys.executable, str(script), "--only", "service"]
    try:
        result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=VALIDATION_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ScriptFailed(f"validation_test.py did not finish within {VALIDATION_TIMEOUT:g}s") from None
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).splitlines()
        failed = [line.strip() for line in lines if "FAIL" in line] or lines[-3:]
        for line in lines[-20:]:
            say(f"  | {line}")
        raise ScriptFailed(f"validation_test.py --only service exited {result.returncode}: {'; '.join(failed)[:300]}")
