"""Python Hello Printer: the "Hello, World!" HTTP service.

Run it:

    python hello_world.py [--host H] [--port N] [--workers N] [--log-file PATH]    # foreground (make run)

In the background (make start, stop, status, reload) it is run by scripts/service.py.

Endpoints: / (Hello, World!), /healthz, /readyz, /version, /metrics (see README and hello/server/routes.py).

How it is built: a small supervisor process (hello/server/supervisor.py) binds the listening socket and runs N
worker processes that share it (hello/server/worker.py), each serving the routes with the project's own HTTP
layer (hello/server/protocol.py). SIGHUP (`make reload`) starts a new generation of workers from the code on disk
and drains the old one once the new one is ready; SIGTERM and SIGINT drain every worker and exit.

Files in system.run_dir: hello_world.pid, hello_world.log (with --log-file), hello_world.state.json, multiproc/
(see hello/server/supervisor.py).

Exit codes: 0 success; 1 failed (the port is taken, the workers cannot start);
2 bad usage or config.
"""

from __future__ import annotations

import hello.base.venv  # noqa: F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
import argparse
import json
import logging
import sys
from pathlib import Path

from hello.base.config import EXIT_CONFIG, EXIT_OK, ConfigError, add_server_flags, apply_server_flags, load_config
from hello.server import supervisor
from hello.server.logfile import LOG_FORMAT


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    parser = argparse.ArgumentParser(description="Serve Hello, World! in the foreground (see module docstring).")
    add_server_flags(parser)
    parser.add_argument("--log-file", type=Path, help="log there, rotated (system.server.log_max_size, log_keep)")
    parser.add_argument(
        supervisor.SETTINGS_FLAG,
        action="store_true",
        help="print system.server as JSON, as it would serve, and exit (a reload asks the code on disk so)",
    )
    options = parser.parse_args(argv)
    try:
        config = load_config()
        flags = apply_server_flags(config, options.host, options.port, options.workers)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if options.print_settings:
        print(json.dumps(config["server"]))
        return EXIT_OK
    return supervisor.serve(config, flags, Path(__file__).resolve(), options.log_file)


if __name__ == "__main__":
    sys.exit(main())
