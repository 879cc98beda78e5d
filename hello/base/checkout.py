"""Where this checkout is, and how its commands are run.

    CHECKOUT                                                  # the folder that holds hello/, config.yaml, scripts/
    command_argv(python, repo, "scripts/service.py")          # [python, "-m", "scripts.service"]
    command_argv(python, repo, "backup_script.py")            # [python, "<repo>/backup_script.py"]

The four commands of the design card run by path. The operator scripts of scripts/ run as modules of the
package `scripts` from the checkout root (the cwd of make, cron's `cd <repo> &&`, the units' WorkingDirectory=,
the update's children), whose root is then on sys.path: no sys.path edits, nothing installed into the venv.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

CHECKOUT = Path(__file__).resolve().parents[2]
SCRIPTS = "scripts"  # the operator scripts' folder and package


def command_argv(python: str | Path, repo: Path, script: str) -> list[str]:
    """The argv that runs one command of the checkout (script: its path relative to the checkout) with python.

    A script of scripts/ runs as `python -m scripts.<name>` and needs the checkout as its cwd; the others by path.
    """
    path = PurePosixPath(script)
    if path.parent == PurePosixPath(SCRIPTS) and path.suffix == ".py":
        return [str(python), "-m", f"{SCRIPTS}.{path.stem}"]
    return [str(python), str(repo / script)]
