"""Tell systemd how a Type=notify service is doing: sd_notify(3) over NOTIFY_SOCKET, no library needed.

    from hello.server import sdnotify
    sdnotify.notify(sdnotify.READY)             # every worker is serving
    sdnotify.notify(sdnotify.reloading())       # a reload starts; READY=1 again when it ended
    sdnotify.notify(sdnotify.STOPPING)          # draining before exit

Outside systemd (NOTIFY_SOCKET unset: make run, make start) every call does nothing. The protocol is
one datagram of newline-separated KEY=VALUE lines to the unix socket NOTIFY_SOCKET names; a name
starting with '@' is in the abstract namespace. A failed send is logged, never raised: the service
must keep serving whatever the service manager does.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("sdnotify")

READY = "READY=1"
STOPPING = "STOPPING=1"
ENV = "NOTIFY_SOCKET"


def reloading() -> str:
    """RELOADING=1 with the monotonic time systemd 253+ expects beside it (older ones ignore it)."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def status(text: str) -> str:
    """A STATUS= line, what `systemctl status` shows; one line only."""
    return "STATUS=" + " ".join(text.split())


def notify(*lines: str) -> bool:
    """Send lines to the service manager; True if sent, False when not under systemd or the send failed."""
    address = os.environ.get(ENV)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ.get(ENV), exc)
        return False
    return True
