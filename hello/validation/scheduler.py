"""Group `backup`, its last check: a scheduler exists (a crontab line, an enabled systemd timer, or a running
`backup_script.py schedule` loop of this checkout reading this config)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from hello.base.config import DEFAULT_NAME
from hello.platform import units
from hello.validation.components import Context
from hello.validation.core import CHECKOUT, FIX_SCHEDULER, CheckFailed
from hello.validation.registry import check


def backup_cron_lines(crontab_text: str) -> list[str]:
    """The uncommented lines of a crontab that run a backup (`backup_script.py [create]` as `make cron` has it, or
    an older `make backup`); not the drill's or another subcommand's line."""
    lines = [line.strip() for line in crontab_text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    other = r"backup_script\.py\s+(drill|verify|list|prune|restore|pull|schedule)\b"
    runs = [line for line in lines if "backup_script" in line and not re.search(other, line)]
    return runs + [line for line in lines if re.search(r"\bmake\b.*\bbackup\b", line) and line not in runs]


def _cron_lines() -> tuple[list[str], str]:
    """The user's crontab lines that run a backup, and why there are none."""
    crontab = shutil.which("crontab")
    if not crontab:
        return [], "crontab is not installed"
    try:
        done = subprocess.run([crontab, "-l"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"crontab -l failed: {exc}"
    return backup_cron_lines(done.stdout), "no crontab line runs backup_script.py or make backup"


def _loop_config(entry: Path, cwd: Path, script: Path) -> Path | None:
    """The config file a running loop reads (HELLO_CONFIG, from its cwd; else the one beside its script, as
    hello/base/config.py has it); None when its environment is not ours to read."""
    try:
        environ = (entry / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    chosen = next((item[len(b"HELLO_CONFIG=") :] for item in environ if item.startswith(b"HELLO_CONFIG=")), b"")
    return (cwd / os.fsdecode(chosen)).resolve() if chosen else script.parent / DEFAULT_NAME


def schedule_loops(directories: set[Path], config_file: Path | None = None) -> list[tuple[int, str]]:
    """(PID, command) of running `backup_script.py schedule` loops of code in directories (reads /proc only); with
    config_file, only the loops that read it: a loop of this checkout with another config schedules another
    deployment's backups."""
    loops = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = [a.decode("utf-8", "replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            script = next((i for i, a in enumerate(args) if a.endswith("backup_script.py")), None)
            if script is None or "schedule" not in args[script + 1 :]:
                continue
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue  # gone, or not ours to read
        path = (cwd / args[script]).resolve()  # an absolute script path stays as it is
        if path.parent not in directories:
            continue
        if config_file is None or _loop_config(entry, cwd, path) == config_file.resolve():
            loops.append((int(entry.name), " ".join(args)))
    return loops


@check("backup", "a scheduler exists", fix=FIX_SCHEDULER)
def check_scheduler(ctx: Context) -> str:
    cron, why_not = _cron_lines()
    if cron:
        return f"crontab line: {cron[0]}"
    timer = units.enabled_timer(CHECKOUT, "backup")
    if timer:
        return f"systemd timer: {timer} (enabled)"
    config_file = Path(ctx.config["config_file"])
    loops = schedule_loops({CHECKOUT, config_file.parent}, config_file)
    if loops:
        pid, command = loops[0]
        return f"schedule loop: PID {pid} ({command})"
    raise CheckFailed(
        f"no scheduler: {why_not}, and no `backup_script.py schedule` process of {CHECKOUT} runs with "
        f"{config_file} (install the `make cron` lines or `make systemd-install`, or run `make backup-schedule`)"
    )
