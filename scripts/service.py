"""Run the hello server in the background: start, stop, status, reload.

    python -m scripts.service start [--host H] [--port N] [--workers N] [--quiet]   # make start [QUIET=1]
    python -m scripts.service stop                                        # make stop
    python -m scripts.service status [--json]                             # make status
    python -m scripts.service reload                                      # make reload

The server's files are in system.run_dir (see hello.base.config.RunFiles). This
module never imports hello_world.py, so that `reload` still works, and says
why the new code was refused, when the code on disk is broken.

start: exit 0 once /readyz answers, and also when it already runs (silent with
--quiet: what cron's every-minute line runs); 1 if the server did not come up;
75 if another start held run_dir/start.lock for longer than a start may take
(two starts at once, e.g. cron's @reboot and every-minute lines, take turns).
stop: SIGTERM, then wait until it has drained and exited.
status: 0 running and ready, 1 not. reload: SIGHUP, then wait for the server's
verdict: 0 the new code serves, 1 refused (the old code keeps serving).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split

from hello.base.config import (  # noqa: E402
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_OK,
    ConfigError,
    RunFiles,
    add_server_flags,
    apply_server_flags,
    load_config,
    server_url,
)
from hello.base.http_client import http_get  # noqa: E402
from hello.base.locks import LockHeld, job_lock, pid_alive  # noqa: E402


def start(config: dict, files: RunFiles, server_args: list[str], quiet: bool = False) -> int:
    """One start at a time: a second waits for the first, then finds the server running."""
    files.run_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + config["server"]["reload_timeout"] + 10
    while True:
        try:
            with job_lock(files.run_dir / "start.lock"):
                return start_unlocked(config, files, server_args, quiet)
        except LockHeld as exc:
            if time.monotonic() > deadline:
                print(f"start failed: another start still holds the lock ({exc})", file=sys.stderr)
                return EXIT_LOCKED
            time.sleep(0.1)


def start_unlocked(config: dict, files: RunFiles, server_args: list[str], quiet: bool) -> int:
    pid = files.running_pid()
    if pid:
        if not quiet:
            print(f"already running: pid {pid}, {files.read_state().get('url', '')}")
        return EXIT_OK
    with open(files.logfile, "ab") as logfile:
        proc = subprocess.Popen(
            [sys.executable, str(REPO_DIR / "hello_world.py"), *server_args, "--log-file", str(files.logfile)],
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd=REPO_DIR,
            start_new_session=True,
        )
    url = server_url(config)
    deadline = time.monotonic() + config["server"]["reload_timeout"] + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = files.logfile.read_text(errors="replace").strip().splitlines()
            reason = lines[-1] if lines else f"see {files.logfile}"
            print(f"start failed (exit {proc.returncode}): {reason}", file=sys.stderr)
            return EXIT_FAILED
        with contextlib.suppress(OSError):
            # The state file names the new PID once every worker is ready.
            if files.read_state().get("pid") == proc.pid and http_get(url + "/readyz", timeout=1)[0] == 200:
                print(f"started: pid {proc.pid}, {url}, log {files.logfile}")
                return EXIT_OK
        time.sleep(0.1)
    print(
        f"start failed: not ready in time; the server (pid {proc.pid}) is left running, see {files.logfile}",
        file=sys.stderr,
    )
    return EXIT_FAILED


def stop(config: dict, files: RunFiles) -> int:
    pid = files.running_pid()
    if not pid:
        print("not running")
        return EXIT_OK
    with contextlib.suppress(ProcessLookupError):  # it may have exited since we read the pidfile
        os.kill(pid, signal.SIGTERM)
    drain = config["server"]["drain_timeout"]
    print(f"stopping pid {pid}: /readyz says 503 while open connections finish (up to {drain:g}s)", flush=True)
    deadline = time.monotonic() + drain + 15
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            print(f"stopped: pid {pid}")
            return EXIT_OK
        time.sleep(0.05)
    print(f"stop failed: pid {pid} still running after the drain timeout", file=sys.stderr)
    return EXIT_FAILED


def status(files: RunFiles, as_json: bool) -> int:
    pid = files.running_pid()
    url = files.read_state().get("url", "")
    report: dict = {"running": bool(pid), "pid": pid, "url": url}
    if pid:
        try:
            report["readyz"] = http_get(url + "/readyz", timeout=2)[0]
            report.update(json.loads(http_get(url + "/version", timeout=2)[1]))
        except (OSError, ValueError) as exc:
            report["error"] = f"{url} does not answer: {exc}"
    if as_json:
        print(json.dumps(report))
    elif not pid:
        print("not running")
    elif "error" in report:
        print(f"pid {pid} is running but {report['error']}")
    else:
        print(
            f"running: pid {pid}, {url}, readyz {report['readyz']}, version {report['version']}, "
            f"commit {report['commit']}"
        )
    return EXIT_OK if report.get("readyz") == 200 else EXIT_FAILED


def reload(config: dict, files: RunFiles) -> int:
    pid = files.running_pid()
    if not pid:
        print("reload failed: the server is not running", file=sys.stderr)
        return EXIT_FAILED
    before = files.read_state().get("reloads", 0)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + config["server"]["reload_timeout"] + 15
    while time.monotonic() < deadline and pid_alive(pid):
        state = files.read_state()
        if state.get("reloads", 0) > before:
            outcome = state.get("last_reload", {})
            if outcome.get("ok"):
                print(f"reloaded: now serving version {state.get('version')} commit {state.get('commit')}")
                return EXIT_OK
            print(f"reload failed, old code still serving: {outcome.get('reason')}", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.05)
    print(f"reload failed: no answer from the server (pid {pid}); see {files.logfile}", file=sys.stderr)
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Control the background hello server.")
    parser.add_argument("command", choices=["start", "stop", "status", "reload"])
    add_server_flags(parser, when="start: ")
    parser.add_argument("--json", action="store_true", help="status: one JSON object")
    parser.add_argument("--quiet", action="store_true", help="start: say nothing when it already runs (for cron)")
    args = parser.parse_args(argv)
    try:
        config = load_config()
        flags = apply_server_flags(config, args.host, args.port, args.workers)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    server_args = [part for key, value in flags.items() for part in (f"--{key}", str(value))]
    files = RunFiles(Path(config["run_dir"]))
    if args.command == "start":
        return start(config, files, server_args, args.quiet)
    if args.command == "stop":
        return stop(config, files)
    if args.command == "status":
        return status(files, args.json)
    return reload(config, files)


if __name__ == "__main__":
    sys.exit(main())
