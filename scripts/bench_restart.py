"""Time the service's way back after its supervisor is SIGKILLed under load and cron's line starts it again.

    python -m scripts.bench_restart [--rounds N] [--workers N] [--clients N] [--json]    (make bench-restart)

Each round, with a scratch config and run dir in a temp folder and a free port on 127.0.0.1:
  1. `scripts/service.py start` (as `make start`), then load: N keep-alive clients GET / in a loop;
  2. SIGKILL the supervisor (the OOM killer's way); time until its workers are gone too (each
     notices the dead parent on its next 0.1 s tick, drains and exits);
  3. run cron's every-minute line (`make start QUIET=1`, taken from `scripts/cron.py --json`, through
     /bin/sh in cron's bare environment) and time until /readyz answers 200 again.
Prints per round: workers gone, start -> ready, kill -> ready; then the median and the max of each.
Not in the numbers: the wait for cron's next minute (0 to 60 s; systemd's Restart=on-failure waits
RestartSec=1s instead). Load and processes stay on 127.0.0.1 and stop by themselves.

Exit codes: 0 measured; 1 a round failed; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
from hello.base.config import EXIT_FAILED, EXIT_OK  # noqa: E402
from hello.base.proc import free_port  # noqa: E402
from tests.support.restart import (  # noqa: E402
    Load,
    Round,
    RoundFailed,
    every_minute_start,
    kill_and_restart,
    run_cron_line,
    scratch_config,
)


def stop_server(config_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "service.py"), "stop"],
        env={**os.environ, "HELLO_CONFIG": str(config_path)},
        capture_output=True,
        timeout=120,
    )


def bench(rounds: int, workers: int, clients: int) -> list[Round]:
    with tempfile.TemporaryDirectory(prefix="hello-bench-restart-") as scratch:
        directory = Path(scratch)
        port = free_port()
        config_path = scratch_config(directory, port, workers)
        command = every_minute_start(config_path)
        if run_cron_line(command, config_path).returncode != 0:
            raise RoundFailed(f"the first start failed: see {directory / 'run' / 'hello_world.log'}")
        load = Load(port, clients)
        try:
            results = []
            for number in range(1, rounds + 1):
                result = kill_and_restart(directory, port, command, config_path, load)
                print(
                    f"round {number}: workers gone {result.workers_gone:.2f} s, start -> ready "
                    f"{result.start_to_ready:.2f} s, kill -> ready {result.kill_to_ready:.2f} s",
                    file=sys.stderr,
                )
                results.append(result)
            return results
        finally:
            load.stop()
            stop_server(config_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.workers < 1 or args.clients < 1:
        parser.error("--rounds, --workers and --clients must be at least 1")
    try:
        results = bench(args.rounds, args.workers, args.clients)
    except (RoundFailed, subprocess.SubprocessError) as exc:
        print(f"bench_restart failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    summary = {
        name: {
            "median": statistics.median(getattr(r, name) for r in results),
            "max": max(getattr(r, name) for r in results),
        }
        for name in ("workers_gone", "start_to_ready", "kill_to_ready")
    }
    if args.json:
        print(json.dumps({"rounds": [r.__dict__ for r in results], "summary": summary}, indent=2))
    else:
        print(f"{args.rounds} rounds, {args.workers} workers, {args.clients} load clients on /:")
        for name, values in summary.items():
            print(f"  {name.replace('_', ' '):16} median {values['median']:.2f} s, max {values['max']:.2f} s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
