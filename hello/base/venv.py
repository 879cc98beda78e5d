"""Commands typed outside the checkout's virtual environment run in it, or say in one line what to run first.

Every command imports this module before anything else (before any third-party import):

    import hello.base.venv  # noqa: F401

- In the checkout's .venv: nothing happens.
- Outside any virtual environment (`python3 backup_script.py list` on a fresh host) while the checkout's .venv
  exists: the command is started again by .venv/bin/python (os.execv: the same PID, arguments and environment).
- Otherwise (no .venv yet, or another environment: an image's, the update protocol's isolated release's): it runs
  if the packages of requirements.txt are installed there; else one line says what to run first, exit 2.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from hello.base.checkout import CHECKOUT

VENV = CHECKOUT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
REQUIREMENTS = CHECKOUT / "requirements.txt"
SETUP_TARGET = ".venv/.runtime-installed"  # the Makefile's RUNTIME_STAMP: creates .venv from requirements.txt
EXIT_CONFIG = 2  # hello.base.config.EXIT_CONFIG, not imported from there: it needs PyYAML
_STARTED_AGAIN = "HELLO_VENV_STARTED"  # set across the exec only: a .venv python that is no venv cannot loop


def _same(one: str | Path, other: Path) -> bool:
    try:
        return Path(one).resolve() == other.resolve()
    except OSError:
        return False


def _command() -> list[str] | None:
    """How this process was started, minus the interpreter: [script, args...] or [[-P,] -m, module, args...].

    -P (a script run by path, started again as a module by scripts/_as_module.py): the cwd stays off sys.path.
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        safe_path = ["-P"] if sys.flags.safe_path else []
        return [*safe_path, "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    if not sys.argv or sys.argv[0] in ("", "-c", "-"):
        return None  # python -c or stdin: nothing to start again
    return list(sys.argv)


def missing_requirements() -> list[str]:
    """The distributions requirements.txt pins that this interpreter cannot find."""
    import importlib.metadata  # here: it costs a server start 10 ms, and only a run outside the .venv needs it

    try:
        lines = REQUIREMENTS.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    names = [match.group(1) for line in lines if (match := re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==", line))]
    missing = []
    for name in names:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def _what_to_run() -> str:
    where = "" if _same(Path.cwd(), CHECKOUT) else f" -C {CHECKOUT}"
    if sys.prefix != sys.base_prefix:  # another virtual environment is active
        fix = f"run it with {VENV_PYTHON} (`make{where} {SETUP_TARGET}` makes it)"
    else:
        fix = f"run `make{where} {SETUP_TARGET}` first"
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return f"{name}: requirements.txt is not installed for {Path(sys.executable).name}: {fix}"


def ensure() -> None:
    """Run in the checkout's .venv, or say in one line what to run first (exit 2); see the module docstring."""
    started_again = os.environ.pop(_STARTED_AGAIN, None) is not None
    if _same(sys.prefix, VENV):
        return
    command = _command()
    if sys.prefix == sys.base_prefix and not started_again and command and os.access(VENV_PYTHON, os.X_OK):
        os.environ[_STARTED_AGAIN] = "1"
        try:
            os.execv(VENV_PYTHON, [str(VENV_PYTHON), *command])
        except OSError as exc:  # a broken .venv (its python gone): one line, not a traceback
            os.environ.pop(_STARTED_AGAIN, None)
            print(
                f"{VENV_PYTHON}: cannot run ({exc.strerror}); remove .venv and run make {SETUP_TARGET}", file=sys.stderr
            )
            sys.exit(EXIT_CONFIG)
    if missing_requirements():
        print(_what_to_run(), file=sys.stderr)
        sys.exit(EXIT_CONFIG)


ensure()
