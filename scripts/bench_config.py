"""Time and peak memory of refusing hostile config files (issue 9: within a second, under 100 MiB).

    python -m scripts.bench_config [--checker PATH] [--limit-mib 2048] [--deadline 30]

Each case is written to a temporary file and checked by `python <checker> FILE` (default: this checkout's
hello/base/config.py) in a child process under an address-space limit (RLIMIT_AS) and a deadline, so that a checker
without the defence cannot take the machine down: it is killed instead, and its figures are lower bounds.
Peak RSS is GNU time's %M (also for a killed child); prlimit (util-linux) sets the limit.
Prints one line per case: exit code, seconds, peak RSS, the first line of stderr. Exit code 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.hostile_configs import alias_bomb

REPO = Path(__file__).resolve().parent.parent
PRLIMIT = shutil.which("prlimit") or "/usr/bin/prlimit"  # util-linux
TIME = "/usr/bin/time"  # GNU time (Debian package time)


CASES = {
    "shipped config.yaml": lambda: (REPO / "config.yaml").read_text(),
    "alias bomb (496 bytes)": alias_bomb,
    "10 MiB file": lambda: "system:\n  server:\n    host: " + "a" * (10 << 20) + "\n",
    "deep nesting (32 KiB)": lambda: "system:\n  server:\n    port: " + "[" * 16_000 + "]" * 16_000 + "\n",
    "16k values (32 KiB)": lambda: "system:\n  server:\n    port: [" + "1," * 16_000 + "]\n",
    "3k keys (27 KiB)": lambda: "system:\n  server: {" + ",".join(f"k{i}: 1" for i in range(3_000)) + "}\n",
}


def measure(checker: Path, text: str, limit_mib: int, deadline: float) -> tuple[int | str, float, float, str]:
    """(exit code or 'killed', seconds, peak RSS in MiB, first stderr line) of checking text."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        handle.write(text)
        handle.flush()
        # GNU time forks the checker from its own small process, so the peak RSS it reports is the checker's
        # (a child forked from this Python process would start with this process's peak); prlimit sets the cap.
        command = [TIME, "-f", "%M", PRLIMIT, f"--as={limit_mib << 20}", sys.executable, str(checker), handle.name]
        started = time.monotonic()
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
            killed = False
            try:
                proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                killed = True
                for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                    os.kill(int(child), signal.SIGKILL)  # the checker (prlimit execs it), never time itself
                proc.wait()
            seconds = time.monotonic() - started
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
        peak_kib = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        said = [line for line in lines[:-1] if not line.startswith("Command ")]
        code = "killed" if killed else proc.returncode
    return code, seconds, peak_kib / 1024, (said[-1] if said else "")[:140]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checker", type=Path, default=REPO / "hello/base/config.py", help="the hello/base/config.py to run"
    )
    parser.add_argument("--limit-mib", type=int, default=2048, help="address-space limit of the child")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds before the child is killed")
    args = parser.parse_args(argv)
    print(f"checker {args.checker} (RLIMIT_AS {args.limit_mib} MiB, deadline {args.deadline:g} s)")
    for name, make in CASES.items():
        code, seconds, peak, line = measure(args.checker, make(), args.limit_mib, args.deadline)
        print(f"  {name:<24} exit {code!s:<6} {seconds:6.2f} s  peak RSS {peak:7.1f} MiB  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
