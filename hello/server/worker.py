"""A worker process: serves the routes (hello/server/routes.py) on the listening socket its supervisor passed it.

The supervisor (hello/server/supervisor.py) starts each worker as a new Python process from the code on disk, so a
reload serves the new code; it calls main() with the inherited socket's fd, a pipe to say "ready <version>
<commit>" on once serving, and system.server as the supervisor checked it. Serving, draining and the stop on
SIGTERM are hello/server/http_server.py's; the HTTP layer is hello/server/protocol.py (httptools' parser on uvloop:
deadlines, limits, back-pressure).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from hello.server import http_server
from hello.server.logfile import LOG_FORMAT
from hello.server.protocol import Limits, Service, connection_limit
from hello.server.routes import make_site, read_build_info


def main(listen_fd: int, ready_fd: int, settings: dict[str, Any]) -> None:
    """Serve on the inherited listening socket until told to stop; say 'ready' on ready_fd once serving."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    build = read_build_info()
    site, metrics = make_site(build)
    limits = Limits(
        header_timeout=settings["header_timeout"],
        body_timeout=settings["body_timeout"],
        write_timeout=settings["write_timeout"],
        keep_alive_timeout=settings["keep_alive_timeout"],
        max_header_count=settings["max_header_count"],
        max_connections=connection_limit(),
    )

    def make_service(loop) -> Service:
        return Service(site, metrics, limits, loop, access_log=settings["access_log"])

    ready = (ready_fd, f"ready {build.version} {build.commit}")
    http_server.run(make_service, socket.socket(fileno=listen_fd), ready, settings["drain_timeout"])
