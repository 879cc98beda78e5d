"""The server's supervisor: holds the listening socket and runs generations of worker processes that share it.

    supervisor.serve(config, flags, command)    # hello_world.py: until SIGTERM or SIGINT; SIGHUP reloads

Each worker (hello/server/worker.py) is a new Python process started from the code on disk, serving the routes
of hello/server/routes.py, and counts each answer in prometheus_client's multiprocess files
(hello/server/metrics_files.py), so that /metrics sums every worker, past and present.

Reload (SIGHUP, `make reload`): the supervisor re-reads the config file's server settings (running the command
on disk with SETTINGS_FLAG, so new code whose command cannot start is refused), starts a new generation of
workers from the code now on disk and waits until each says it is ready. Only then does it tell the old workers
to drain: stop accepting, answer the next request on every open connection with `Connection: close`, wait up to
drain_timeout for the connections to leave, exit. New code that fails to import or to get ready within
reload_timeout is stopped, and the old generation keeps serving. A worker that dies is replaced. SIGTERM and
SIGINT drain every worker the same way. The supervisor itself keeps running the code it started with.

Files in system.run_dir (RunFiles): hello_world.pid (the supervisor), hello_world.log (background mode:
--log-file, rotated by hello/server/logfile.py), hello_world.state.json (URL, commit, last reload result, the
start history of hello/server/restarts.py), multiproc/ (the metric files of the workers, emptied at start; a dead
worker's are merged into one file per type, so /metrics takes no longer after many reloads).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hello.base.config import EXIT_FAILED, EXIT_OK, RunFiles, server_url
from hello.base.files import write_atomically
from hello.server import restarts, sdnotify
from hello.server.logfile import LogPipe
from hello.server.routes import CHECKOUT

log = logging.getLogger("hello_world.supervisor")

SETTINGS_ENV = "HELLO_SERVER_SETTINGS"  # system.server as the supervisor checked it, for its workers
SETTINGS_FLAG = "--print-settings"  # the command's flag that prints system.server as JSON: a reload runs it

# The worker command, run in the checkout (its cwd is on sys.path): imports the worker fresh from disk, so a
# reload serves the new code, and reports an import error (a syntax error in new code) on the ready pipe
# instead of dying silently.
WORKER_BOOTSTRAP = f"""
import json, os, sys
listen_fd, ready_fd = int(sys.argv[1]), int(sys.argv[2])
try:
    from hello.server import worker
except BaseException as exc:
    os.write(ready_fd, f"failed: cannot import hello/server/worker.py: {{type(exc).__name__}}: {{exc}}".encode())
    sys.exit(1)
worker.main(listen_fd, ready_fd, json.loads(os.environ[{SETTINGS_ENV!r}]))
"""


@dataclass
class Worker:
    proc: subprocess.Popen
    ready_pipe: int
    message: str = ""
    stop_deadline: float = 0.0


class Supervisor:
    """Holds the listening socket; starts, reloads and stops generations of workers."""

    def __init__(self, config: dict, flags: dict, command: Path, listener: socket.socket, files: RunFiles) -> None:
        self.listener, self.files, self.url, self.command = listener, files, server_url(config), command
        self.server = config["server"]
        self.flags = flags  # command-line overrides of system.server, kept over a reload
        self.workers: list[Worker] = []
        self.retiring: list[Worker] = []
        self.signals: list[int] = []
        self.state: dict[str, Any] = {
            "pid": os.getpid(),
            "url": self.url,
            "workers": self.server["workers"],
            "reloads": 0,
        }

    # workers

    def spawn(self) -> Worker:
        read_end, write_end = os.pipe()
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(self.files.multiproc),
            SETTINGS_ENV: json.dumps(self.server),
        }
        args = [sys.executable, "-c", WORKER_BOOTSTRAP, str(self.listener.fileno()), str(write_end)]
        try:
            proc = subprocess.Popen(args, pass_fds=(self.listener.fileno(), write_end), env=env, cwd=CHECKOUT)
        finally:
            os.close(write_end)
        return Worker(proc, read_end)

    def wait_ready(self, workers: list[Worker], timeout: float) -> str | None:
        """None once every worker said 'ready', else why not (failure, early exit, timeout, a stop signal)."""
        deadline = time.monotonic() + timeout
        pending = {worker.ready_pipe: worker for worker in workers}
        while pending:
            if self.stop_requested():
                return "interrupted by a stop signal"
            left = deadline - time.monotonic()
            if left <= 0:
                return f"not ready within {timeout:g}s (system.server.reload_timeout)"
            readable, _, _ = select.select(list(pending), [], [], min(left, 0.5))
            for fd in readable:
                worker = pending.pop(fd)
                worker.message = os.read(fd, 4096).decode(errors="replace")
                os.close(fd)
                if not worker.message.startswith("ready"):
                    code = worker.proc.wait()
                    return worker.message or f"worker exited with code {code} before it was ready"
        return None

    def stop_requested(self) -> bool:
        return any(sig in (signal.SIGTERM, signal.SIGINT) for sig in self.signals)

    def stop_workers(self, workers: list[Worker], timeout: float) -> None:
        """Drain (SIGTERM) and wait; SIGKILL what is left at the deadline."""
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.terminate()
        deadline = time.monotonic() + timeout
        for worker in workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not drain in time: killed", worker.proc.pid)
                worker.proc.kill()
                worker.proc.wait()
            self.clean_up_exited(worker)

    def clean_up_exited(self, worker: Worker) -> None:
        """Merge an exited worker's metric files into the merged ones (so /metrics stays flat); close its pipe."""
        from prometheus_client import multiprocess

        from hello.server.metrics_files import merge_dead_quietly

        multiprocess.mark_process_dead(worker.proc.pid, str(self.files.multiproc))
        merge_dead_quietly(self.files.multiproc, worker.proc.pid)  # so /metrics stays flat over reloads
        with contextlib.suppress(OSError):
            os.close(worker.ready_pipe)

    def start_generation(self) -> tuple[list[Worker], str | None]:
        workers = [self.spawn() for _ in range(self.server["workers"])]
        error = self.wait_ready(workers, self.server["reload_timeout"])
        if error:
            # Some may be serving already (a stop during start): they drain like any other.
            self.stop_workers(workers, timeout=self.server["drain_timeout"] + 5)
        return workers, error

    # state

    def serving(self) -> str:
        parts = self.workers[0].message.split() if self.workers else []
        return f"version {parts[1]} commit {parts[2]}" if len(parts) == 3 else "nothing"

    def save_state(self, **changes: Any) -> None:
        parts = self.workers[0].message.split() if self.workers else []
        if len(parts) == 3:  # "ready <version> <commit>"; a failed replacement worker says otherwise
            self.state.update(version=parts[1], commit=parts[2], workers=len(self.workers))
        self.state.update(changes)
        write_atomically(self.files.statefile, json.dumps(self.state, indent=2).encode() + b"\n")

    # the life cycle

    def start(self) -> str | None:
        self.workers, error = self.start_generation()
        if error:
            self.workers = []
            return error
        now = time.time()
        history = restarts.starts_after(self.files.read_state(), now, os.getpid())  # before it is overwritten
        self.save_state(started=now, **{restarts.STARTS: history})
        log.info("started %s on %s with %d worker(s)", self.serving(), self.url, len(self.workers))
        sdnotify.notify(sdnotify.READY, sdnotify.status(f"serving {self.serving()} on {self.url}"))
        return None

    def reread_config(self) -> str | None:
        """Take the config file's server settings as they are now; why not, if the file or the command is bad.

        The code on disk reads it: its command in a child process, not this process's copy of hello.base.config,
        since an update may bring new keys that only the new code knows; and new code whose command cannot
        start (a syntax error) is refused here, as its next restart would fail.
        """
        args = [sys.executable, str(self.command), SETTINGS_FLAG]
        try:
            result = subprocess.run(args, cwd=CHECKOUT, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "reading the config took over 60 s"
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            return lines[-1] if lines else f"reading the config failed with exit code {result.returncode}"
        server = {**json.loads(result.stdout), **self.flags}
        if (server["host"], server["port"]) != (self.server["host"], self.server["port"]):
            log.warning(
                "reload keeps listening on %s:%d: a new host or port needs a restart",
                self.server["host"],
                self.server["port"],
            )
            server["host"], server["port"] = self.server["host"], self.server["port"]
        self.server = server
        return None

    def reload(self) -> None:
        before = self.serving()
        log.info("reload: starting new workers from the code on disk (serving %s)", before)
        error = self.reread_config()
        new: list[Worker] = []
        if not error:
            new, error = self.start_generation()
        count = self.state["reloads"] + 1
        if error:
            log.error("reload failed, still serving %s: %s", before, error)
            self.save_state(reloads=count, last_reload={"ok": False, "reason": error, "at": time.time()})
            return
        old, self.workers = self.workers, new
        for worker in old:
            worker.proc.terminate()  # drain: the new workers already accept on the same socket
            worker.stop_deadline = time.monotonic() + self.server["drain_timeout"] + 5
        self.retiring.extend(old)
        self.wait_until_not_accepting(old, timeout=5)
        log.info("reloaded: now serving %s (was %s)", self.serving(), before)
        self.save_state(reloads=count, last_reload={"ok": True, "reason": "", "at": time.time()})

    def wait_until_not_accepting(self, workers: list[Worker], timeout: float) -> None:
        """Wait until each worker has closed its copy of the listening socket (or exited).

        A worker notices SIGTERM on its next tick (0.1 s): until then it still takes new connections
        and answers them with the old code. Only after this is the new code all there is.
        """
        fd = self.listener.fileno()
        listener = os.fstat(fd).st_ino
        deadline = time.monotonic() + timeout
        for worker in workers:
            with contextlib.suppress(OSError):  # no such fd or process: not accepting
                while os.stat(f"/proc/{worker.proc.pid}/fd/{fd}").st_ino == listener and time.monotonic() < deadline:
                    time.sleep(0.005)

    def reap_and_replace(self) -> None:
        """Reap the old workers that drained (kill those past their deadline); replace a serving worker that died."""
        for worker in list(self.retiring):
            if worker.proc.poll() is None and time.monotonic() > worker.stop_deadline:
                log.warning("old worker %d did not drain in time: killed", worker.proc.pid)
                worker.proc.kill()
            if worker.proc.poll() is not None:
                self.retiring.remove(worker)
                self.clean_up_exited(worker)
        for index, worker in enumerate(self.workers):
            if worker.proc.poll() is not None:
                log.error("worker %d exited with code %s: starting another", worker.proc.pid, worker.proc.returncode)
                self.clean_up_exited(worker)
                replacement = self.spawn()
                error = self.wait_ready([replacement], self.server["reload_timeout"])
                if error:
                    log.error("replacement worker failed: %s", error)
                    time.sleep(1)  # no hot loop while the code on disk cannot start
                self.workers[index] = replacement

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; SIGHUP reloads."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, lambda signum, frame: self.signals.append(signum))
        error = self.start()
        if error and self.stop_requested():
            log.info("stopped while starting")
            return EXIT_OK
        if error:
            log.error("cannot start: %s", error)
            return EXIT_FAILED
        while True:
            select.select([wake_read], [], [], 1.0)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 512)
            while self.signals:
                sig = self.signals.pop(0)
                if sig in (signal.SIGTERM, signal.SIGINT):
                    return self.stop(signal.Signals(sig).name)
                if sig == signal.SIGHUP:
                    sdnotify.notify(sdnotify.reloading())
                    self.reload()
                    sdnotify.notify(sdnotify.READY, sdnotify.status(f"serving {self.serving()} on {self.url}"))
            self.reap_and_replace()

    def stop(self, reason: str) -> int:
        log.info("stopping (%s): draining %d worker(s), serving %s", reason, len(self.workers), self.serving())
        sdnotify.notify(sdnotify.STOPPING)
        self.listener.close()
        self.stop_workers(self.workers + self.retiring, timeout=self.server["drain_timeout"] + 5)
        self.save_state(**{restarts.STOPPED: time.time()})
        log.info("stopped")
        return EXIT_OK


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, inherited by every worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: dict, flags: dict, command: Path, log_file: Path | None = None) -> int:
    """Serve system.server until SIGTERM or SIGINT; the exit code.

    flags: the command line's overrides of system.server, kept over a reload; command: the command's file, which a
    reload runs with SETTINGS_FLAG to read the config as the code on disk does.

    EXIT_FAILED when it cannot start: already running, the port is taken, the workers do not get ready.
    """
    server, files = config["server"], RunFiles(Path(config["run_dir"]))
    files.run_dir.mkdir(parents=True, exist_ok=True)
    pid = files.running_pid()
    if pid and pid != os.getpid():
        log.error("already running as pid %d (see `make status`)", pid)
        return EXIT_FAILED
    try:
        listener = bind(server["host"], server["port"])
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", server["host"], server["port"], exc.strerror or exc)
        return EXIT_FAILED
    shutil.rmtree(files.multiproc, ignore_errors=True)
    files.multiproc.mkdir()
    files.pidfile.write_text(f"{os.getpid()}\n")
    log_pipe = LogPipe(log_file, server["log_max_size"], server["log_keep"]) if log_file else None
    if log_pipe:
        log_pipe.capture_stdout_and_stderr()
    supervisor = Supervisor(config, flags, command, listener, files)
    try:
        return supervisor.run()
    finally:
        if log_pipe:
            log_pipe.close()
        if files.running_pid() == os.getpid():
            files.pidfile.unlink(missing_ok=True)
        shutil.rmtree(files.multiproc, ignore_errors=True)
