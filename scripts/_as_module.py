"""A script run by path starts again as the module of the checkout's `scripts` package; no sys.path edit.

Each script, before its first `hello` import:

    if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
        import _as_module  # noqa: F401

`python scripts/service.py start --quiet` (the cron lines and systemd units written before the scripts ran as
modules) has scripts/ on sys.path, not the checkout, so `import hello` would fail. This module replaces the process
(os.execve: the same PID, interpreter and arguments) with `python -P -m scripts.service start --quiet`, the checkout
prepended to PYTHONPATH: only the environment changes, and the checkout's own code runs from any cwd. -P keeps the
cwd off sys.path, so a `scripts` folder there cannot stand in for the checkout's. The children inherit PYTHONPATH
(the same checkout first).

Imported any other way (a program that imports a script by name, e.g. pytest with scripts/ on its pythonpath), it
does nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent


def module_argv(script: Path, args: list[str]) -> list[str]:
    """`python -P -m scripts.<name> args...` for scripts/<name>.py."""
    return [sys.executable, "-P", "-m", f"{HERE.name}.{script.stem}", *args]


def start_as_module() -> None:
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or not sys.executable:
        return  # run as a module already (or nothing to start again with)
    try:
        script = Path(main.__file__).resolve()
    except (AttributeError, TypeError, OSError):
        return
    if script.parent != HERE or script.suffix != ".py":
        return  # __main__ is another program that imported a script by name
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT), *filter(None, [os.environ.get("PYTHONPATH")])])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, module_argv(script, sys.argv[1:]), env)


start_as_module()
