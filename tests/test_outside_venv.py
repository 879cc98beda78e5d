"""Commands typed as README shows them, by a Python outside the venv (issue 24.1; hello/base/venv.py), and the
scripts of scripts/ as modules or by path (issue 22.2; scripts/_as_module.py).

On a fresh clone, `python3 backup_script.py list --offsite` gave a ModuleNotFoundError traceback. Now each command
run by the system's python3 runs in the checkout's .venv when there is one (os.execv), else says in one line what to
run first and exits 2. A script runs as `python -m scripts.<name>` from the checkout; by path (an old crontab's
line) it starts again as that module, from any folder, with no sys.path edit anywhere.
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
SYS_PATH_EDIT = re.compile(r"sys\.path\.(insert|append|extend)\b|sys\.path\s*(\+?=|\[)")


def as_typed(script: str) -> list[list[str]]:
    """The ways to type a command: by path, and for a script of scripts/ also as its module."""
    if script.startswith("scripts/"):
        return [[script], ["-m", "scripts." + Path(script).stem]]
    return [[script]]


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
    found = re.findall(
        r"\bpython3? (?:((?:scripts/)?\w+\.py)|-m scripts\.(\w+))\b", (CHECKOUT / "README.md").read_text()
    )
    shown = {path or f"scripts/{module}.py" for path, module in found}
    assert shown and shown <= set(COMMANDS), f"README commands not covered: {sorted(shown - set(COMMANDS))}"


@pytest.mark.parametrize("python", interpreters())
def test_without_a_venv_each_command_says_what_to_run_first(clone: Path, tmp_path: Path, python: str) -> None:
    config = write_config(tmp_path)
    assert not (clone / ".venv").exists()
    for script, args in {**COMMANDS, "backup_script.py": ["list", "--offsite"]}.items():  # README's recovery step
        for command in as_typed(script):
            done = typed(python, [*command, *args], clone, config)
            assert done.returncode == 2, f"{command}: {done.returncode} {done.stderr}"
            assert "Traceback" not in done.stderr and done.stdout == "", f"{command}: {done.stdout}{done.stderr}"
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
            for command in as_typed(script):
                done = typed(python, [*command, *args], clone, config)
                assert "Traceback" not in done.stderr and "lacks requirements.txt" not in done.stderr, done.stderr
                expected = 1 if args == ["status"] else 0  # status: exit 1 when nothing runs
                assert done.returncode == expected, f"{command}: {done.returncode} {done.stdout}{done.stderr}"
    finally:
        venv.unlink()


def test_a_script_runs_as_a_module_from_the_checkout_and_by_path_from_anywhere(tmp_path: Path) -> None:
    """`python -m scripts.cron` in the checkout, and an old crontab's `<repo>/.venv/bin/python <repo>/scripts/cron.py`
    from another folder, print the same lines: by path the script starts again as the module (scripts/_as_module.py)
    of this checkout, even where the cwd holds another `scripts` package."""
    config = write_config(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HELLO_CONFIG": str(config)}  # cron's bare environment
    python = str(CHECKOUT / ".venv" / "bin" / "python")
    decoy = tmp_path / "elsewhere" / "scripts"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    (decoy / "cron.py").write_text("raise SystemExit('the decoy ran')\n")

    def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)

    as_module = run([python, "-m", "scripts.cron"], CHECKOUT)
    by_path = run([python, str(CHECKOUT / "scripts" / "cron.py")], decoy.parent)
    by_relative_path = run(
        [python, "scripts/cron.py"], CHECKOUT
    )  # the units' and cron's `cd <repo> && ... scripts/x.py`
    for done in (as_module, by_path, by_relative_path):
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "-m scripts.service start --quiet" in as_module.stdout
    assert by_path.stdout == as_module.stdout == by_relative_path.stdout


def test_a_script_imported_by_name_is_not_started_again() -> None:
    """pytest's pythonpath has scripts/ on it: a test importing a script by name must not be replaced by it."""
    code = "import cron, sys; print(cron.__name__, sys.argv[0])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHECKOUT), str(CHECKOUT / "scripts")])}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.split() == ["cron", "-c"], done.stdout + done.stderr


def test_no_module_under_scripts_or_hello_edits_sys_path() -> None:
    wrong = [
        f"{path.relative_to(CHECKOUT)}:{number}: {line.strip()}"
        for folder in ("scripts", "hello")
        for path in sorted((CHECKOUT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SYS_PATH_EDIT.search(line)
    ]
    assert not wrong, wrong
