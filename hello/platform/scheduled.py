"""What the schedulers run: each scheduled job's script and arguments, for the cron lines and the systemd units.

    from hello.platform.scheduled import job_argv
    job_argv(Path("/srv/hello/.venv/bin/python"), Path("/srv/hello"), "backup")
    # ['/srv/hello/.venv/bin/python', '/srv/hello/backup_script.py', 'create']
    job_argv(Path("/srv/hello/.venv/bin/python"), Path("/srv/hello"), "start")
    # ['/srv/hello/.venv/bin/python', '-m', 'scripts.service', 'start', '--quiet']: run in the checkout

Cron and systemd run the venv's python on the script itself, never `make <target>`: make turns every
failure into its own exit code 2, and the scheduler must see the script's code (0 ok, 1 the job failed,
2 bad config, 75 another run holds the lock). The make targets of the same names are for humans. Both run
it in the checkout (cron: `cd <repo> &&`; the units: WorkingDirectory=), as the scripts of scripts/ need
(hello.base.checkout.command_argv).
"""

from __future__ import annotations

from pathlib import Path

from hello.base.checkout import command_argv

# make target -> (script relative to the checkout, its arguments)
JOBS: dict[str, tuple[str, tuple[str, ...]]] = {
    "backup": ("backup_script.py", ("create",)),
    "drill": ("backup_script.py", ("drill",)),
    "pull": ("backup_script.py", ("pull",)),  # on a vault host (system.backup.vault.pull_from)
    "validate": ("validation_test.py", ()),
    "update": ("update_protocol.py", ()),
    "start": ("scripts/service.py", ("start", "--quiet")),  # silent, exit 0, when it runs already
    "monitor": ("scripts/monitor.py", ("start",)),
}


def job_argv(python: Path, repo: Path, target: str) -> list[str]:
    """The command line that runs the job of `make <target>` with the script's own exit code, from the checkout."""
    script, args = JOBS[target]
    return [*command_argv(python, repo, script), *args]
