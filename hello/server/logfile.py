"""The server's background log: one writer that rotates it by size, shared by the supervisor and its workers.

In the background (`make start`), hello_world.py points its stdout and stderr at a pipe, which the workers
inherit. A thread of the supervisor copies each line from the pipe to run/hello_world.log through logging's
RotatingFileHandler (system.server.log_max_size, log_keep): one process writes and rotates, so several
workers never race on a rename. A line of up to 4 KiB (PIPE_BUF) goes through the pipe whole.

The file is opened for appending, so logrotate's `copytruncate` works beside it; set log_max_size to 0 to
leave rotation to logrotate alone. (logrotate's default, rename and create, would leave the writer writing to
the renamed file until its own next rotation.)
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(message)s"  # every line of the supervisor and its workers


class LogPipe:
    """stdout and stderr of this process and its children, written to a size-rotated file by one thread."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=keep, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self.thread: threading.Thread | None = None

    def capture_stdout_and_stderr(self) -> None:
        """Point fds 1 and 2 (inherited by the workers) at the pipe; start the thread that writes it to the file."""
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self.thread = threading.Thread(target=self.copy, args=(read_end,), name="log-writer", daemon=True)
        self.thread.start()

    def copy(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                text = line.decode("utf-8", errors="replace").rstrip("\n")
                self.handler.emit(logging.makeLogRecord({"msg": text, "levelno": logging.INFO}))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is still in the pipe, then stop: our stdout and stderr go to /dev/null from here."""
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        if self.thread is not None:
            self.thread.join(timeout)  # EOF once the workers, which share the pipe, are gone too
        self.handler.close()
