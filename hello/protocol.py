"""The worker's HTTP side: uvicorn's httptools protocol and Server, extended; request metrics in shared memory.

Everything here relies on internals of other libraries, and only this module does. Written against
(TESTED_WITH below; tests/test_protocol_internals.py fails loudly when an upgrade changes them):

- uvicorn 0.54.0, `uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`: its constructor, its parser
  callbacks (`on_message_begin`, `on_header`, `on_headers_complete`, `on_body`, `on_message_complete`), its
  per-connection attributes (`parser`, `url`, `headers`, `cycle`, `pipeline`, `flow`, `transport`,
  `timeout_keep_alive_task`, `server_state`, `connections`) and `_unset_keepalive_if_required`.
  `connection_made`, `on_message_begin`, `data_received` and `on_header` are replaced, not extended (their
  bodies are re-stated here, trimmed: no addresses or ASGI scope unless a request goes to the app).
  `uvicorn.Server`: `startup`, `on_tick`, `shutdown`, `servers`, `server_state`, `force_exit`.
- httptools 0.9.0: `HttpParserUpgrade.args[0]` is the offset of the bytes after the upgrade request's headers;
  an exception raised in a callback comes out of `feed_data` as `HttpParserCallbackError`.
- prometheus_client 0.26.0, multiprocess mode: a value's `_file` (`MmapedDict`: `_m`, the mmap, and
  `_positions`, key -> byte offset of its 8-byte double), its `_key`; a histogram child's `_sum` and
  `_buckets`. Requests are counted by writing those doubles directly (see RequestMetrics).

What it adds to uvicorn, per connection:
- GETs of static routes answered from prebuilt bytes, without an ASGI call (half the cost of a request).
- Deadlines: request headers within header_timeout (408), a request body that keeps coming (body_timeout,
  between two reads, as nginx's client_body_timeout), and keep_alive_timeout between requests that only a
  request resets, not stray bytes (a lone CRLF). Idle connections are closed by the server's 0.1 s tick
  (close_idle), not by a timer per connection and answer.
- Limits: header count and bytes checked as each header arrives (431 before the worker holds more), pending
  header bytes on the wire; idle connections are closed first when the worker nears its file limit.
- Back-pressure: reading pauses while the transport's write buffer is over its high-water mark (a big read
  is parsed in slices, the rest held), and a client that leaves its answers unread for write_timeout is dropped.
- Upgrade requests are answered as plain HTTP and what is pipelined behind them is parsed on.
- Warnings a client can cause (malformed requests, the file limit) are rate-limited.
"""

from __future__ import annotations

import asyncio
import bisect
import http
import logging
import os
import re
import resource
import socket
import time
import types
from dataclasses import dataclass, field
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_local_addr, get_remote_addr

TESTED_WITH = {"uvicorn": "0.54.0", "httptools": "0.9.0", "prometheus-client": "0.26.0"}

MAX_HEADER_BYTES = 32 * 1024  # a request line and headers, as nginx's default large_client_header_buffers
READ_SLICE = 16 * 1024  # a read is parsed in slices this big, so a paused write stops the answers soon
MAX_PENDING_HEADER_BYTES = 64 * 1024  # wire bytes of headers that never end, beyond the read they began in
FILE_RESERVE = 32  # descriptors kept free beyond those at start (metric files, logs, pipes, libuv's spare)
WARNING_INTERVAL = 60.0  # seconds: one line per kind of client-caused warning, then a count

IDLE, HEADERS, BODY = "idle", "headers", "body"  # where a connection is in its current request
HTTP09_LINE = re.compile(rb"(?:^|\n)[A-Z]+ \S+(?:\r\n?|\n)$")  # a request line without a version, at the end of a read

log = logging.getLogger("hello_world.protocol")


class HeadersTooLarge(Exception):
    """Raised in on_header to stop the parser: the request has too many or too big headers."""


class RateLimitedLog:
    """Warnings a client can cause: the first of a kind is logged, then at most one a WARNING_INTERVAL with a count."""

    def __init__(self, logger: logging.Logger, interval: float = WARNING_INTERVAL) -> None:
        self.logger, self.interval = logger, interval
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -self.interval) < self.interval:
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return
        self.last[kind] = now
        more = self.suppressed.pop(kind, 0)
        if more:
            message += " (and %d more since the last such line)"
            args = (*args, more)
        self.logger.warning(message, *args)


# --- request metrics --------------------------------------------------------------------------------


def shared_double(value: Any) -> tuple[memoryview, int]:
    """The 8-byte double behind a prometheus_client multiprocess value: (its mmap as doubles, index).

    MmapedDict keeps each value at an 8-aligned offset of a MAP_SHARED file. When it grows the file it maps
    it anew and leaves the old map open, so a view taken now stays valid for the offsets it covers.
    """
    mmaped = value._file
    return memoryview(mmaped._m).cast("d"), mmaped._positions[value._key] // 8


class RequestMetrics:
    """The request counter and latency histogram, written straight into prometheus_client's shared files.

    prometheus_client's own update costs about 9 us a request here (a lock and a struct write per value).
    Adding to the mmapped doubles costs well under 1 us, and a request is in the shared file the moment
    it is counted: a worker that is killed (SIGKILL, OOM) loses nothing it counted. The protocol and the
    app count a request just before writing its answer. Nothing may call inc() or observe() on these
    metrics' children: their cached values would overwrite the shared ones.
    """

    def __init__(self, routes: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        from prometheus_client import Counter, Histogram

        self.requests_total = Counter(
            "hello_world_requests",
            "Requests answered, by method, route and status code; each is counted as its answer is written.",
            ["method", "path", "code"],
        )
        duration = Histogram(
            "hello_world_request_duration_seconds",
            "Time from a request's headers to its answer being ready to write.",
            ["path"],
            buckets=buckets,
        )
        self.bounds = (*buckets, float("inf"))
        children = {route: duration.labels(route) for route in routes}
        view = None
        for child in children.values():  # every child exists before the view: it covers all their offsets
            view, _ = shared_double(child._sum)
        self.latency = {
            route: (view, shared_double(child._sum)[1], tuple(shared_double(b)[1] for b in child._buckets))
            for route, child in children.items()
        }
        self.counts: dict[tuple[str, str, int], tuple[memoryview, int]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        slot = self.counts.get((method, route, status))
        if slot is None:
            slot = self.counts[(method, route, status)] = shared_double(
                self.requests_total.labels(method, route, str(status))._value
            )
        view, index = slot
        view[index] += 1.0
        view, sum_index, bucket_indexes = self.latency[route]
        view[sum_index] += seconds
        view[bucket_indexes[bisect.bisect_left(self.bounds, seconds)]] += 1.0


# --- the protocol -----------------------------------------------------------------------------------


class DirectAnswers:
    """The whole HTTP answer to a GET of each static route, rebuilt when uvicorn renews its date header."""

    def __init__(self, static: dict[str, tuple[int, list, bytes]]) -> None:
        self.static = static
        self.routes = {path.encode(): path for path in static}
        self.built: dict[tuple[str, bool], tuple[list, bytes]] = {}

    def get(self, route: str, keep_alive: bool, default_headers: list) -> bytes:
        cached = self.built.get((route, keep_alive))
        if cached is not None and cached[0] is default_headers:
            return cached[1]
        status, headers, body = self.static[route]
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())]
        lines += [b"%s: %s\r\n" % header for header in (*default_headers, *headers)]
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        data = b"".join(lines) + b"\r\n" + body
        self.built[(route, keep_alive)] = (default_headers, data)
        return data


def connection_limit(reserve: int = FILE_RESERVE) -> int:
    """How many connections this process can hold: its file limit less what it uses now and a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, soft - len(os.listdir("/proc/self/fd")) - reserve)


@dataclass
class ProtocolSettings:
    """What every connection of a worker shares: the app's metrics and answers, the limits and deadlines."""

    metrics: RequestMetrics
    state: Any  # has .draining
    direct: DirectAnswers | None  # None: every request goes through the app (the access log needs that)
    header_timeout: float
    body_timeout: float
    write_timeout: float
    max_header_count: int
    max_connections: int
    warnings: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))


# What uvicorn's callbacks see as this request's cycle after a direct answer or a rejection: complete.
ANSWERED = types.SimpleNamespace(
    response_started=True, response_complete=True, message_event=asyncio.Event(), keep_alive=False
)


class HelloProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with direct answers, deadlines, limits and back-pressure (module docstring).

    uvicorn builds one per connection; pass it as `http=functools.partial(HelloProtocol, settings=...)`.
    """

    def __init__(self, *args: Any, settings: ProtocolSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.phase = IDLE
        self.pending_bytes = self.header_bytes = self.body_bytes = 0
        self.request_timer: asyncio.TimerHandle | None = None
        self.timer_body_bytes = 0
        self.held = b""  # read but not parsed yet: the client is not reading its answers
        self.write_timer: asyncio.TimerHandle | None = None

    # the connection

    def connection_made(self, transport: asyncio.Transport) -> None:
        # uvicorn's connection_made without the two addresses (a socket object and two syscalls);
        # app_scope() looks them up only for a request that goes to the app.
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = self.client = None
        self.scheme = "http"  # the workers serve no TLS
        if len(self.connections) > self.settings.max_connections:
            self.shed_connections()
        self.idle_since: float | None = self.loop.time()  # close_idle closes it if no request comes

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_request_timer()
        if self.write_timer is not None:
            self.write_timer.cancel()
        super().connection_lost(exc)

    @staticmethod
    def close_idle(connections: set, now: float, timeout: float) -> None:
        """Close the connections with no request begun since their last direct answer or their start."""
        for connection in list(connections):
            since = getattr(connection, "idle_since", None)
            if since is not None and now - since > timeout and not connection.transport.is_closing():
                connection.transport.close()

    def shed_connections(self) -> None:
        """Near the file limit: close idle connections first, then ones still sending a request, to 90%."""
        settings = self.settings
        rank = {IDLE: 0, HEADERS: 1, BODY: 2}
        candidates = sorted(
            (
                other
                for other in self.connections
                if other is not self
                and (other.cycle is None or other.cycle.response_complete)
                and not other.transport.is_closing()
            ),
            key=lambda other: rank[other.phase],
        )
        excess = len(self.connections) - int(settings.max_connections * 0.9)
        for other in candidates[:excess]:
            other.transport.close()
        settings.warnings.warning(
            "file-limit",
            "near the file limit (%d connections): closed %d idle or unfinished connections",
            settings.max_connections,
            min(excess, len(candidates)),
        )

    def pause_writing(self) -> None:
        super().pause_writing()
        self.flow.pause_reading()  # a client that does not read its answers gets no more of them made
        # uvicorn resumes reading after each ASGI answer; data_received holds what it reads meanwhile.
        self.write_timer = self.loop.call_later(self.settings.write_timeout, self.write_timed_out)

    def write_timed_out(self) -> None:
        self.settings.warnings.warning("unread", "dropped a connection whose answers went unread too long")
        self.transport.abort()  # close() would wait for the unread answers to be sent: forever

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        if not self.pipeline:  # uvicorn pauses reading for pipelined requests too: it resumes those itself
            self.flow.resume_reading()
        if self.held and not self.transport.is_closing():
            self.data_received(b"")

    # bytes in

    def data_received(self, data: bytes) -> None:
        """Parse a read; a big one (pipelined requests) in slices, holding the rest while writes wait."""
        if self.held:  # uvicorn resumed reading (after an ASGI answer) before the held bytes were parsed
            data, self.held = self.held + data, b""
        while len(data) > READ_SLICE and not self.transport.is_closing():
            self.parse(data[:READ_SLICE])
            data = data[READ_SLICE:]
            if self.flow.write_paused:
                self.held = data  # parsed when the client has read enough of its answers (resume_writing)
                self.flow.pause_reading()
                self.idle_since = None  # not idle: write_timeout watches it now
                self._unset_keepalive_if_required()
                return
        if not self.transport.is_closing():
            self.parse(data)

    def parse(self, data: bytes) -> None:
        # uvicorn's data_received, except: only a request (on_message_begin) stops the keep-alive timer, not
        # any bytes; warnings are rate-limited; an upgrade request is answered as plain HTTP and parsing goes on.
        if self.phase == HEADERS:  # on_message_begin resets it: the bytes of reads since the headers began
            self.pending_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.refuse_upgrade(data[upgrade.args[0] :])
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadersTooLarge):
                self.reject(431, "Request Header Fields Too Large")
            else:
                self.settings.warnings.warning("malformed", "invalid HTTP request received: %s", exc)
                self.send_400_response("Invalid HTTP request received.")
            return
        if self.phase == HEADERS and self.pending_bytes > MAX_PENDING_HEADER_BYTES:
            self.reject(431, "Request Header Fields Too Large")  # a header that never ends: llhttp buffers it
            return
        # Most requests arrive whole; only an unfinished one starts a clock (a timer per request costs).
        if self.phase != IDLE and self.request_timer is None and not self.transport.is_closing():
            if self.phase == HEADERS and HTTP09_LINE.search(data):
                self.reject(400, "Bad Request")  # HTTP/0.9: llhttp would wait for headers that never come
                return
            self.arm_request_timer()

    def refuse_upgrade(self, rest: bytes) -> None:
        """No protocol switch here: the request was answered as plain HTTP; parse what follows it likewise."""
        declares_body = any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers)
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        if declares_body:
            # llhttp took its body for the new protocol: what follows cannot be told apart from it. Close.
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()
            else:
                self.cycle.keep_alive = False
        elif rest and not self.transport.is_closing():
            self.data_received(rest)

    # the parser's callbacks

    def on_message_begin(self) -> None:
        # uvicorn's, without the ASGI scope: app_scope() builds it only for a request that goes to the app.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.idle_since = None  # only a request ends idleness, not stray bytes
        self._unset_keepalive_if_required()  # uvicorn's timer, armed after an ASGI answer
        self.phase, self.pending_bytes, self.header_bytes = HEADERS, 0, 0

    def app_scope(self) -> None:
        """uvicorn's per-request ASGI scope and the connection's addresses, for a request the app answers."""
        if self.client is None:
            self.server = get_local_addr(self.transport)
            self.client = get_remote_addr(self.transport)
        self.scope = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's on_header, with the limits checked before the worker holds more.
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES or len(self.headers) >= self.settings.max_header_count:
            raise HeadersTooLarge
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.phase, self.body_bytes = BODY, 0
        self.cancel_request_timer()
        if len(self.url) + self.header_bytes > MAX_HEADER_BYTES:
            self.reject_request(431, "Request Header Fields Too Large")
        elif self.parser.get_http_version() == "0.9":
            self.reject_request(400, "Bad Request")  # a request line without a version: llhttp takes it
        elif not self.answer_directly():
            self.app_scope()
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.phase = IDLE
        self.cancel_request_timer()
        super().on_message_complete()

    # deadlines

    def arm_request_timer(self) -> None:
        timeout = self.settings.header_timeout if self.phase == HEADERS else self.settings.body_timeout
        self.timer_body_bytes = self.body_bytes
        self.request_timer = self.loop.call_later(timeout, self.request_timed_out)

    def cancel_request_timer(self) -> None:
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None

    def request_timed_out(self) -> None:
        self.request_timer = None
        if self.phase == BODY and self.body_bytes != self.timer_body_bytes:
            self.arm_request_timer()  # the body is still coming: another body_timeout for the next bytes
        elif self.phase == HEADERS or self.cycle is None or not self.cycle.response_started:
            self.reject(408, "Request Timeout")
        else:
            self.transport.close()  # answered already; its body stopped coming

    # answers

    def answer_directly(self) -> bool:
        """Write the prebuilt answer to a GET of a static route; False leaves the request to the app.

        The app keeps everything else: other methods and routes, a query string, draining (its answers
        say `Connection: close`), and a request pipelined behind one whose answer is not complete.
        """
        direct = self.settings.direct
        route = direct.routes.get(self.url) if direct is not None else None
        if (
            route is None
            or self.settings.state.draining
            or self.parser.get_method() != b"GET"
            or (self.cycle is not None and not self.cycle.response_complete)
        ):
            return False
        started = time.perf_counter()
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        data = direct.get(route, keep_alive, self.server_state.default_headers)
        self.cycle = ANSWERED  # what uvicorn's other callbacks look at: this request's answer is complete
        self.server_state.total_requests += 1
        self.settings.metrics.observe("GET", route, 200, time.perf_counter() - started)
        self.transport.write(data)
        if keep_alive:
            self.idle_since = self.loop.time()
        else:
            self.transport.close()
        return True

    def reject_request(self, status: int, reason: str) -> None:
        self.cycle = ANSWERED  # uvicorn's callbacks for the rest of this request see it finished
        self.reject(status, reason)

    def send_400_response(self, msg: str) -> None:
        self.settings.metrics.observe("other", "other", 400, 0.0)
        super().send_400_response(msg)

    def reject(self, status: int, reason: str) -> None:
        if self.transport.is_closing():
            return
        self.settings.metrics.observe("other", "other", status, 0.0)
        body = reason.encode() + b"\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
        )
        self.transport.close()


# --- the server -------------------------------------------------------------------------------------


class DrainingServer(uvicorn.Server):
    """uvicorn's Server that says when it is ready, leaves when its supervisor does, and drains before exit."""

    def __init__(self, config: uvicorn.Config, state: Any, ready: tuple[int, str], drain_timeout: float) -> None:
        super().__init__(config)
        self.state, self.drain_timeout = state, drain_timeout
        self.ready_fd, self.ready_message = ready
        self.parent = os.getppid()

    @staticmethod
    def loop_time() -> float:
        return asyncio.get_running_loop().time()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            os.write(self.ready_fd, self.ready_message.encode())
            os.close(self.ready_fd)

    async def on_tick(self, counter: int) -> bool:
        HelloProtocol.close_idle(self.server_state.connections, self.loop_time(), self.config.timeout_keep_alive)
        if os.getppid() != self.parent:  # the supervisor is gone: do not serve on as an orphan
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Drain before uvicorn's own shutdown, which closes idle keep-alive connections
        # without a word and so loses a request that is on its way.
        self.state.draining = True
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        deadline = time.monotonic() + self.drain_timeout
        while self.server_state.connections and time.monotonic() < deadline and not self.force_exit:
            # No ticks while draining: idle connections are closed here, as on a tick.
            HelloProtocol.close_idle(self.server_state.connections, self.loop_time(), self.config.timeout_keep_alive)
            await asyncio.sleep(0.02)
        await super().shutdown()
