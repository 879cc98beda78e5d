"""Benchmark the update protocol on a scratch deployment (tests/support/scratch.py, as tests/test_update.py uses).

Run it (it is a benchmark, not a test):

    make bench-update                       # or: .venv/bin/python -m scripts.bench_update [--rounds 5] [--json]

What it builds, all in a temp dir, nothing touching this checkout or its server:
a bare git repository seeded from this working tree (the remote), a clone of it (the deployment) serving
with `scripts/service.py start` on a free port, and a second clone to push new commits from.

What it measures, over --rounds rounds, with a keep-alive and a connection-per-request client running
(--no-load: without them):
  no-op      `python update_protocol.py` with nothing new, process start to exit (goal: under 2 s)
  full       `python update_protocol.py` deploying a new commit, process start to exit
  serving    from the test step passing to the new version serving: checkout + build + deploy (the reload returns
             once the new code answers) (goal: under 5 s); "verified" adds the verify step
  load       requests answered, failed and with a wrong body during all updates (failed must be 0)
The deployment's test step is one tiny pytest file; it and the backup step (system.update.backup_first, a
backup of the deployment checkout) are timed apart and excluded from the goals. backup_first is on for the
bench whatever config.yaml says (it is the default): each full update must show its backup step, whose
duration is the backup's cost ("full_without_backup" is the rest), and a no-op must show none (nothing new,
no backup). The machine's load average (1, 5, 15 min) at the start and the end is reported beside the figures.

Exit 0 when every request during the updates was answered with the right 200 (whatever the timings), 1 when
any failed or had a wrong body (a zero-downtime regression) or the bench could not run, 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split

from hello.base.git import GitError  # noqa: E402
from tests.support.scratch import Load, ScratchDeployment  # noqa: E402 - a benchmark is a test-side tool

# --- the benchmark --------------------------------------------------------------------------------


def step_seconds(output: str) -> dict[str, float]:
    """The JSON summary's step durations (update_protocol.py --json prints it last on stdout)."""
    return json.loads(output.strip().splitlines()[-1])["steps"]


def bench(rounds: int, workers: int, load_on: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-update-") as temp:
        site = ScratchDeployment(Path(temp), workers=workers)
        site.write_config(site.config_path, {"update": {"backup_first": True}})
        load_before = os.getloadavg()
        pid: int | None = None
        noop: list[float] = []
        full: list[float] = []
        after_tests: list[float] = []
        verified: list[float] = []
        tests: list[float] = []
        backups: list[float] = []
        try:
            site.server("start")
            pid = site.pid()
            with Load(site.port, limit=100000 if load_on else 0) as load:
                for index in range(rounds):
                    started = time.monotonic()
                    result = site.update("--json")
                    noop.append(time.monotonic() - started)
                    if result.returncode != 0:
                        raise RuntimeError(f"no-op update failed: {result.stdout}{result.stderr}")
                    if "backup" in step_seconds(result.stdout):
                        raise RuntimeError(f"the no-op update took a backup: {result.stdout}")
                    commit = site.harmless_commit(f"round {index}")
                    started = time.monotonic()
                    result = site.update("--json")
                    full.append(time.monotonic() - started)
                    if result.returncode != 0 or site.served() != commit:
                        raise RuntimeError(f"update failed: {result.stdout}{result.stderr}")
                    steps = step_seconds(result.stdout)
                    tests.append(steps["test"])
                    if "backup" not in steps:
                        raise RuntimeError(f"no backup step although backup_first is on: {result.stdout}")
                    backups.append(steps["backup"])
                    after_tests.append(steps["checkout"] + steps["build"] + steps["deploy"])
                    verified.append(after_tests[-1] + steps["verify"])
            counts = dict(load.counts)
        finally:
            if pid is None:
                pid = site.running_pid()  # a start that failed after the server came up
            site.server("stop", check=False)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
    return {
        "rounds": rounds,
        "workers": workers,
        "noop_seconds": summary(noop),
        "full_update_seconds": summary(full),
        "test_step_seconds": summary(tests),
        "backup_step_seconds": summary(backups),
        "full_without_backup_seconds": summary([whole - backup for whole, backup in zip(full, backups, strict=True)]),
        "tests_passed_to_serving_seconds": summary(after_tests),
        "tests_passed_to_verified_seconds": summary(verified),
        "load": counts,
        "loadavg": {"start": [round(value, 2) for value in load_before], "end": [round(v, 2) for v in os.getloadavg()]},
        "goals": {"noop_under_2s": max(noop) < 2.0, "serving_within_5s_of_tests": max(after_tests) < 5.0},
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time a no-op and a full update on a scratch deployment.")
    parser.add_argument("--rounds", type=int, default=5, help="updates of each kind (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="server workers (default: %(default)s)")
    parser.add_argument("--no-load", action="store_true", help="no clients on / during the updates")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        print("--rounds: expected at least 1", file=sys.stderr)
        return 2
    try:
        figures = bench(args.rounds, args.workers, load_on=not args.no_load)
    except (RuntimeError, GitError, OSError) as exc:
        print(f"bench-update failed: {exc}", file=sys.stderr)
        return 1
    load = figures["load"]
    status = 1 if load["failed"] or load["wrong_body"] else 0  # a request lost during an update: a regression
    if args.json:
        print(json.dumps(figures, indent=2))
        return status
    load_text = "no load" if args.no_load else "a keep-alive and a connection-per-request client on / throughout"
    print(f"update benchmark: {args.rounds} rounds, {args.workers} worker(s), {load_text}")
    for key, goal in (
        ("noop_seconds", "goal < 2 s"),
        ("full_update_seconds", ""),
        ("test_step_seconds", ""),
        ("backup_step_seconds", "(system.update.backup_first: on)"),
        ("full_without_backup_seconds", "(full minus the backup step)"),
        ("tests_passed_to_serving_seconds", "goal < 5 s"),
        ("tests_passed_to_verified_seconds", "(+ verify)"),
    ):
        values = figures[key]
        print(f"  {key:<32} median {values['median']:6.3f}  min {values['min']:6.3f}  max {values['max']:6.3f}  {goal}")
    loadavg = figures["loadavg"]
    print(f"  load average (1, 5, 15 min): {loadavg['start']} at the start, {loadavg['end']} at the end")
    print(
        f"  requests during the run: {load['ok']} ok, {load['failed']} failed, {load['wrong_body']} wrong body, "
        f"{load['reconnects']} keep-alive reconnects"
    )
    met = all(figures["goals"].values()) and load["failed"] == 0 and load["wrong_body"] == 0
    print("  goals met" if met else f"  goals NOT met: {figures['goals']}")
    return status


if __name__ == "__main__":
    sys.exit(main())
