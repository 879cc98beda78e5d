"""A worker's serving loop on uvloop: the inherited listening socket, a tick, and a drain before exit.

The tick (every TICK seconds, on the loop's clock) renews the Date header when the second changes, closes
keep-alive connections idle past keep_alive_timeout, and notices a supervisor that is gone. SIGTERM or
SIGINT (or the supervisor gone) drains: stop accepting, answer the next request on every open connection
with `Connection: close` (and /readyz with 503), close idle ones after keep_alive_timeout, and wait up to
drain_timeout for the rest to leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

import uvloop

from hello.server.protocol import HttpConnection, Service

TICK = 0.1  # seconds between ticks: the Date is never more than this late, a stop is noticed within it
BACKLOG = 2048  # the listening socket's queue (the supervisor's listen(); create_server calls listen again)


async def serve(service: Service, sock: socket.socket, ready: tuple[int, str], drain_timeout: float) -> None:
    """Serve on sock until told to stop; write ready[1] to the fd ready[0] once accepting."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    server = await loop.create_server(lambda: HttpConnection(service), sock=sock, backlog=BACKLOG)
    ready_fd, message = ready
    os.write(ready_fd, message.encode())
    os.close(ready_fd)
    parent = os.getppid()
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), TICK)
        service.refresh_date()
        service.close_idle(loop.time())
        if os.getppid() != parent:  # the supervisor is gone: do not serve on as an orphan
            break
    await drain(service, server, sock, drain_timeout)


async def drain(service: Service, server: asyncio.AbstractServer, sock: socket.socket, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    service.draining = True
    server.close()
    sock.close()
    deadline = loop.time() + timeout
    while service.connections and loop.time() < deadline:
        await asyncio.sleep(0.02)
        service.refresh_date()
        service.close_idle(loop.time())
    for connection in list(service.connections):
        connection.close()
    await asyncio.sleep(0)  # let the loop close them


def run(make_service, sock: socket.socket, ready: tuple[int, str], drain_timeout: float) -> None:
    """Run serve() on a new uvloop loop; make_service(loop) builds the worker's Service on it."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        service = make_service(runner.get_loop())
        runner.run(serve(service, sock, ready, drain_timeout))
