"""Commands typed as README shows them, by a Python outside the venv (issue 24.1; hello/base/venv.py).

On a fresh clone, `python3 backup_script.py list --offsite` gave a ModuleNotFoundError traceback. Now each command
run by the system's python3 runs in the checkout's .venv when there is one (os.execv), else says in one line what to
run first and exits 2.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hello.base.checkout import CHECKOUT
from tests.support.configs import write_config
from tests.support.scratch import deploy_files

# Every command README shows as `python <script>`, with arguments that only read or print.
COMMANDS = {
    "hello_world.py": ["--help"],
    "backup_script.py": ["list"],
    "update_protocol.py": ["history"],
    "validation_test.py": ["--help"],
    "scripts/monitor.py": ["status"],
    "scripts/service.py": ["status"],
    "scripts/backup_hook_monitoring.py": ["--help"],
    "scripts/bench_backup.py": ["--help"],
    "scripts/bench_hostile.py": ["--help"],
    "scripts/bench_server.py": ["--help"],
    "scripts/k8s.py": ["--help"],
}
SETUP = "make .venv/.runtime-installed"


def interpreters() -> list[str]:
    """Pythons outside any venv: the system's, and the one this suite's venv was made from."""
    found = [
        path
        for path in ("/usr/bin/python3", str(Path(sys.base_prefix) / "bin" / "python3"))
        if os.access(path, os.X_OK)
    ]
    return list(dict.fromkeys(os.path.realpath(path) for path in found))


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's files as a fresh clone has them: no .venv, no run/."""
    root = tmp_path_factory.mktemp("clone")
    for name in deploy_files(CHECKOUT):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CHECKOUT / name, root / name)
    return root


def typed(python: str, args: list[str], cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """The command as an operator types it: cron's bare environment, no venv active."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(config.parent), "HELLO_CONFIG": str(config)}
    return subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_readme_shows_no_command_this_test_does_not_run() -> None:
    shown = set(re.findall(r"\bpython3? ((?:scripts/)?\w+\.py)\b", (CHECKOUT / "README.md").read_text()))
    assert shown and shown <= set(COMMANDS), f"README commands not covered: {sorted(shown - set(COMMANDS))}"


@pytest.mark.parametrize("python", interpreters())
def test_without_a_venv_each_command_says_what_to_run_first(clone: Path, tmp_path: Path, python: str) -> None:
    config = write_config(tmp_path)
    assert not (clone / ".venv").exists()
    for script, args in {**COMMANDS, "backup_script.py": ["list", "--offsite"]}.items():  # README's recovery step
        done = typed(python, [script, *args], clone, config)
        assert done.returncode == 2, f"{script}: {done.returncode} {done.stderr}"
        assert "Traceback" not in done.stderr and done.stdout == "", f"{script}: {done.stdout}{done.stderr}"
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"{Path(script).name}: ") and f"`{SETUP}` first" in line and len(line) <= 120, line
    # From another folder, the line says where to run make.
    done = typed(python, [str(clone / "backup_script.py"), "list"], tmp_path, config)
    assert done.returncode == 2 and f"`make -C {clone} .venv/.runtime-installed` first" in done.stderr


@pytest.mark.parametrize("python", interpreters())
def test_with_a_venv_each_command_runs_in_it(clone: Path, tmp_path: Path, python: str) -> None:
    config = write_config(tmp_path)
    venv = clone / ".venv"
    venv.symlink_to(Path(sys.prefix), target_is_directory=True)  # the venv `make` would have made, here
    try:
        for script, args in COMMANDS.items():
            done = typed(python, [script, *args], clone, config)
            assert "Traceback" not in done.stderr and "lacks requirements.txt" not in done.stderr, done.stderr
            expected = 1 if args == ["status"] else 0  # status: exit 1 when nothing runs
            assert done.returncode == expected, f"{script}: {done.returncode} {done.stdout}{done.stderr}"
    finally:
        venv.unlink()
