"""Group `backup`, its last check: a scheduler exists (a crontab line, an enabled systemd timer, or a running
`backup_script.py schedule` loop of this checkout)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

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


def schedule_loops(directories: set[Path]) -> list[tuple[int, str]]:
    """(PID, command) of running `backup_script.py schedule` loops of code in directories (reads /proc only)."""
    loops = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = [a.decode("utf-8", "replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue  # gone, or not ours to read
        script = next((i for i, a in enumerate(args) if a.endswith("backup_script.py")), None)
        if script is None or "schedule" not in args[script + 1 :]:
            continue
        path = Path(args[script])
        if not path.is_absolute():
            try:
                path = Path(os.readlink(entry / "cwd")) / path
            except OSError:
                continue
        if path.resolve().parent in directories:
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
    loops = schedule_loops({CHECKOUT, Path(ctx.config["config_file"]).parent})
    if loops:
        pid, command = loops[0]
        return f"schedule loop: PID {pid} ({command})"
    raise CheckFailed(
        f"no scheduler: {why_not}, and no `backup_script.py schedule` process of {CHECKOUT} runs "
        "(install the `make cron` lines or `make systemd-install`, or run `make backup-schedule`)"
    )
