"""The worker's HTTP layer: an asyncio protocol of our own over httptools' public parser API, on uvloop.

Public APIs only: httptools.HttpRequestParser (its callbacks, feed_data, get_method, get_http_version,
should_keep_alive, should_upgrade; HttpParserUpgrade's offset argument; HttpParserCallbackError for an
exception raised in a callback) and asyncio's Protocol and Transport. Every route of the service is
answered from prebuilt bytes or one function call (the Site), as soon as a request's headers are parsed.

Per connection:
- HTTP by RFC 9110/9112: an HTTP/1.1 request without Host, or any with two, is 400; a version other than
  1.0 and 1.1 is 505 (a request line without one, HTTP/0.9, is 400); every answer carries Date.
- HTTP/1.0 keep-alive is not honoured: every HTTP/1.0 request is answered with `Connection: close` and
  the connection closes. Nothing after an answer that closes the connection is parsed or counted.
- Counts: an answer is counted as it is written, exactly once; a request whose answer is written already
  and whose body then turns out malformed closes the connection without a second answer.
- Deadlines: request headers within header_timeout (408), a request body that keeps coming (body_timeout,
  between two reads, as nginx's client_body_timeout), and keep_alive_timeout between requests that only a
  request resets, not stray bytes (a lone CRLF). Idle connections are closed by the worker's tick
  (close_idle), not by a timer per connection and answer.
- Limits: header count and bytes checked as each header arrives (431 before the worker holds more), pending
  header bytes on the wire; idle connections are closed first when the worker nears its file limit.
- Bounded work: a read bigger than READ_SLICE is parsed in slices; reading stops while more than a few
  answers wait in the transport (its high-water mark, QUEUED_HIGH) and after ANSWERS_PER_TURN answers in
  one turn of the loop (the rest is parsed on the next turn, after the other connections had theirs).
  A client that leaves its answers unread for write_timeout is dropped.
- Upgrade requests are answered as plain HTTP and what is pipelined behind them is parsed on.
- Repeats: a read whose bytes equal the last read, when that read was one whole request of a fixed route (a
  prebuilt answer) answered and kept alive, is answered without parsing it again: llhttp would call back the
  same and respond choose the same. The answer is still taken from the prebuilt answers (the Date, draining)
  and counted as it is written; what a repeat skips is the parse, never the answer.
- Warnings a client can cause (malformed requests, the file limit) are rate-limited.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import http
import logging
import os
import re
import resource
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from hello.server.metrics_files import RequestMetrics

MAX_HEADER_BYTES = 32 * 1024  # a request line and headers, as nginx's default large_client_header_buffers
READ_SLICE = 256  # a bigger read (pipelined requests, a body) is parsed in slices this big: a handful of answers
MAX_PENDING_HEADER_BYTES = 64 * 1024  # wire bytes of headers that never end, beyond the read they began in
QUEUED_HIGH, QUEUED_LOW = 32 * 1024, 8 * 1024  # answers waiting in the transport: stop reading, read again
ANSWERS_PER_TURN = 4  # then the rest of a pipeline waits for its next turn (new clients get theirs)
ANSWERS_PER_LOOP = 16  # turns in one iteration of the loop: iterations stay short, and each accepts a new client
FILE_RESERVE = 32  # descriptors kept free beyond those at start (metric files, logs, pipes, libuv's spare)
WARNING_INTERVAL = 60.0  # seconds: one line per kind of client-caused warning, then a count

IDLE, HEADERS, BODY = "idle", "headers", "body"  # where a connection is in its current request
HTTP09_LINE = re.compile(rb"(?:^|\n)[A-Z]+ \S+(?:\r\n?|\n)$")  # a request line without a version, at the end of a read
OTHER = "other"  # the route (and method) label of what matches no route (SPEC "Metrics")
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
METHOD_LABELS = {method.encode(): method for method in KNOWN_METHODS}  # any other method is counted as OTHER

log = logging.getLogger("hello_world.protocol")
access = logging.getLogger("hello_world.access")

Headers = tuple[tuple[bytes, bytes], ...]
Answer = tuple[int, Headers, bytes]  # status, headers (besides date, content-length, connection), body


class StopParsing(Exception):
    """Raised in a parser callback to stop feed_data; the connection's `stop` says why."""


TOO_LARGE, CLOSING = "headers too large", "closing"


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


def connection_limit(reserve: int = FILE_RESERVE) -> int:
    """How many connections this process can hold: its file limit less what it uses now and a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, soft - len(os.listdir("/proc/self/fd")) - reserve)


# --- what is answered ---------------------------------------------------------------------------------


@dataclass
class Site:
    """What the worker serves: the routes, and the answer to a GET of each (a HEAD gets it without its body).

    answer(route, accept, draining) gives the answer of a route (accept: the request's Accept header); the
    answers of `fixed` routes depend on nothing but draining, so the protocol keeps their whole bytes
    (rebuilt when the Date changes).
    """

    routes: dict[bytes, str]  # request path -> route label
    answer: Callable[[str, bytes | None, bool], Answer]
    fixed: frozenset[str]
    not_found: Answer
    not_allowed: Answer


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())


def http_date(now: float) -> bytes:
    """An IMF-fixdate (RFC 9110 5.6.7), as the Date header wants it."""
    return email.utils.formatdate(now, usegmt=True).encode()


def frame(answer: Answer, date: bytes, keep_alive: bool, head: bool) -> bytes:
    """The whole HTTP/1.1 answer: status line, Date, the answer's headers, Content-Length, then its body."""
    status, headers, body = answer
    lines = [status_line(status), b"date: ", date, b"\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"content-length: %d\r\n" % len(body))
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(body)
    return b"".join(lines)


def route_path(url: bytes) -> bytes | None:
    """The path of a request target (origin-form or absolute-form), percent-decoded; None if it is no URL."""
    if not url.startswith(b"/"):
        try:
            url = httptools.parse_url(url).path or b"/"
        except httptools.HttpParserInvalidURLError:
            return None
    path = url.partition(b"?")[0]
    return urllib.parse.unquote_to_bytes(path) if b"%" in path else path


def rejection(status: int) -> Answer:
    body = http.HTTPStatus(status).phrase.encode() + b"\n"
    return status, ((b"content-type", b"text/plain; charset=utf-8"),), body


@dataclass
class Limits:
    header_timeout: float
    body_timeout: float
    write_timeout: float
    keep_alive_timeout: float
    max_header_count: int
    max_connections: int


@dataclass
class Service:
    """What every connection of a worker shares: the site, its metrics, the limits, the clock and the answers."""

    site: Site
    metrics: RequestMetrics
    limits: Limits
    loop: asyncio.AbstractEventLoop
    access_log: bool = False
    draining: bool = False
    connections: set[HttpConnection] = field(default_factory=set)
    warnings: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))
    date: bytes = b""
    second: int = -1
    built: dict[tuple, bytes] = field(default_factory=dict)  # whole answers of fixed routes, this second
    turns: collections.deque[HttpConnection] = field(default_factory=collections.deque)  # pipelines waiting
    turns_scheduled: bool = False

    def __post_init__(self) -> None:
        self.refresh_date()

    def refresh_date(self) -> None:
        """Called on every tick of the worker: a new second gives a new Date and new prebuilt answers."""
        now = time.time()
        if int(now) != self.second:
            self.second, self.date = int(now), http_date(now)
            self.built = {}

    def prebuilt(self, route: str, status: int, keep_alive: bool, head: bool) -> tuple[int, bytes]:
        """(status, whole answer) of a fixed route (status 200 asked) or of a 404 or 405, built once a second."""
        key = (route, status, keep_alive, head, self.draining)
        built = self.built.get(key)
        if built is None:
            site = self.site
            if status == 404:
                answer = site.not_found
            elif status == 405:
                answer = site.not_allowed
            else:
                answer = site.answer(route, None, self.draining)
            built = self.built[key] = (answer[0], frame(answer, self.date, keep_alive, head))
        return built

    def wait_turn(self, connection: HttpConnection) -> None:
        """Queue a connection whose pipeline has more requests than one turn answers (ANSWERS_PER_TURN)."""
        self.turns.append(connection)
        if not self.turns_scheduled:
            self.turns_scheduled = True
            self.loop.call_soon(self.run_turns)

    def run_turns(self) -> None:
        """Give the waiting connections their turns, ANSWERS_PER_LOOP answers in all; the rest on the next iteration.

        The loop accepts a new connection once per iteration: a few hundred pipelines answered in one iteration
        would keep a new client waiting for seconds.
        """
        budget = ANSWERS_PER_LOOP
        while self.turns and budget > 0:
            self.turns.popleft().take_turn()
            budget -= ANSWERS_PER_TURN
        if self.turns:
            self.loop.call_soon(self.run_turns)
        else:
            self.turns_scheduled = False

    def close_idle(self, now: float) -> None:
        """Close the connections with no request begun since their last answer or their start."""
        timeout = self.limits.keep_alive_timeout
        for connection in list(self.connections):
            since = connection.idle_since
            if since is not None and now - since > timeout and not connection.closing:
                connection.close()


# --- the protocol -----------------------------------------------------------------------------------


class HttpConnection(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer each from the Site (module docstring)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.loop = service.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.phase = IDLE
        self.url = b""
        self.accept: bytes | None = None
        self.host_count = self.header_count = self.header_bytes = self.pending_bytes = self.body_bytes = 0
        self.has_body = self.answered = self.keep_alive = False  # of the current request
        self.closing = False  # its last answer said `Connection: close` (or it was closed): nothing more is parsed
        self.stop: str | None = None  # why a callback stopped the parser
        self.request_timer: asyncio.TimerHandle | None = None
        self.timer_body_bytes = 0
        self.write_timer: asyncio.TimerHandle | None = None
        self.write_paused = self.read_paused = False
        self.held = b""  # read but not parsed yet: the client is not reading its answers, or the turn is over
        self.turn_answers = 0
        self.idle_since: float | None = None
        self.fixed_answer: tuple[str, str, int, bool] | None = None  # the last request's, when it had one (respond)
        self.repeatable: bytes | None = None  # the last read, when a read of the same bytes may be repeated

    # the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=QUEUED_HIGH, low=QUEUED_LOW)  # type: ignore[attr-defined]
        connections = self.service.connections
        connections.add(self)
        self.idle_since = self.loop.time()  # close_idle closes it if no request comes
        if len(connections) > self.service.limits.max_connections:
            self.shed_connections()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.service.connections.discard(self)
        self.cancel_request_timer()
        if self.write_timer is not None:
            self.write_timer.cancel()
        self.held = b""

    def close(self) -> None:
        self.closing = True
        self.transport.close()

    def shed_connections(self) -> None:
        """Near the file limit: close idle connections first, then ones still sending a request, to 90%."""
        service = self.service
        rank = {IDLE: 0, HEADERS: 1, BODY: 2}
        candidates = sorted(
            (other for other in service.connections if other is not self and not other.closing),
            key=lambda other: rank[other.phase],
        )
        excess = len(service.connections) - int(service.limits.max_connections * 0.9)
        for other in candidates[:excess]:
            other.close()
        service.warnings.warning(
            "file-limit",
            "near the file limit (%d connections): closed %d idle or unfinished connections",
            service.limits.max_connections,
            min(excess, len(candidates)),
        )

    # flow control

    def pause_writing(self) -> None:
        self.write_paused = True
        self.pause_reading()  # a client that does not read its answers gets no more of them made
        self.write_timer = self.loop.call_later(self.service.limits.write_timeout, self.write_timed_out)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        if self.held:
            self.take_turn()
        else:
            self.resume_reading()

    def write_timed_out(self) -> None:
        self.service.warnings.warning("unread", "dropped a connection whose answers went unread too long")
        self.closing = True
        self.transport.abort()  # close() would wait for the unread answers to be sent: forever

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.closing:
            self.read_paused = False
            self.transport.resume_reading()

    # bytes in

    def data_received(self, data: bytes) -> None:
        if data == self.repeatable:
            return self.repeat(data)
        if self.closing:
            return
        if self.held:  # read before the pause took effect: parsed after what is held
            self.held += data
            return
        self.turn_answers = 0
        self.fixed_answer = self.repeatable = None
        if len(data) <= READ_SLICE and not self.write_paused:
            self.parse(data)  # the usual read: one request or a few, parsed at once
            if self.fixed_answer is not None and self.turn_answers == 1 and self.phase == IDLE and self.keep_alive:
                self.repeatable = data  # one whole request, answered from prebuilt bytes and kept alive
        else:
            self.feed(data)

    def repeat(self, read: bytes) -> None:
        """Answer a read that repeats the last one (module docstring) as respond did, or parse it when it must be."""
        started = time.perf_counter()
        service = self.service
        if service.draining or self.closing or self.write_paused or self.held or service.access_log:
            self.repeatable = None
            return self.data_received(read)
        label, route, asked, head = self.fixed_answer
        keep_alive = True
        status, data = service.prebuilt(route, asked, keep_alive, head)
        self.turn_answers = 0
        self.write_answer(label, route, status, data, keep_alive, started)

    def feed(self, data: bytes) -> None:
        """Parse data, in slices if it is big; hold the rest while answers wait or the turn's answers are made."""
        while data:
            if self.write_paused or self.turn_answers >= ANSWERS_PER_TURN:
                self.held = data
                self.pause_reading()
                self.idle_since = None  # not idle: write_timeout or the next turn takes it on
                if not self.write_paused:
                    self.service.wait_turn(self)
                return
            if len(data) > READ_SLICE:
                piece, data = data[:READ_SLICE], data[READ_SLICE:]
            else:
                piece, data = data, b""
            self.parse(piece)
            if self.closing:
                return
        if not self.write_paused:
            self.resume_reading()

    def take_turn(self) -> None:
        """Parse on what was held, when the answers are read (resume_writing) or on its turn (run_turns)."""
        if self.closing or self.write_paused or not self.held:
            return
        data, self.held = self.held, b""
        self.turn_answers = 0
        self.feed(data)

    def parse(self, data: bytes) -> None:
        if self.phase == HEADERS:  # on_message_begin resets it: the bytes of reads since the headers began
            self.pending_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.refuse_upgrade(data[upgrade.args[0] :])
            return
        except httptools.HttpParserCallbackError:
            self.parser_stopped()
            return
        except httptools.HttpParserError as exc:
            self.malformed(exc)
            return
        if self.phase == HEADERS and self.pending_bytes > MAX_PENDING_HEADER_BYTES:
            self.reject(431)  # a header that never ends: llhttp buffers it
            return
        # Most requests arrive whole; only an unfinished one starts a clock (a timer per request costs).
        if self.phase != IDLE and self.request_timer is None and not self.closing:
            if self.phase == HEADERS and HTTP09_LINE.search(data):
                self.reject(400)  # HTTP/0.9: llhttp would wait for headers that never come
                return
            self.arm_request_timer()

    def parser_stopped(self) -> None:
        stop, self.stop = self.stop, None
        if stop == TOO_LARGE:
            self.reject(431)
        elif stop != CLOSING:  # an exception of ours in a callback: a bug, not the client's doing
            log.exception("error while handling a request")
            self.closing = True
            self.transport.abort()

    def malformed(self, exc: Exception) -> None:
        if self.closing:
            return  # bytes after an answer that closes: llhttp refuses them, and nobody reads them
        self.service.warnings.warning("malformed", "invalid HTTP request received: %s", exc)
        if self.answered and self.phase == BODY:
            self.close()  # its answer is written: a second one would answer no request
        else:
            self.reject(400)

    def refuse_upgrade(self, rest: bytes) -> None:
        """No protocol switch here: the request was answered as plain HTTP; parse what follows it likewise."""
        self.parser = httptools.HttpRequestParser(self)
        self.phase, self.fixed_answer = IDLE, None  # a new parser: the read is not repeated without one
        if self.has_body:
            # llhttp took its body for the new protocol: what follows cannot be told apart from it. Close.
            self.close()
        elif rest and not self.closing:
            self.parse(rest)

    # the parser's callbacks

    def on_message_begin(self) -> None:
        if self.closing:
            self.stop = CLOSING
            raise StopParsing
        self.url = b""
        self.accept = None
        self.host_count = self.header_count = self.header_bytes = self.pending_bytes = 0
        self.has_body = self.answered = False
        self.idle_since = None  # only a request ends idleness, not stray bytes
        self.phase = HEADERS

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        self.header_count += 1
        if self.header_bytes > MAX_HEADER_BYTES or self.header_count > self.service.limits.max_header_count:
            self.stop = TOO_LARGE
            raise StopParsing
        name = name.lower()
        if name == b"host":
            self.host_count += 1
        elif name == b"accept":
            self.accept = value
        elif (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
            self.has_body = True

    def on_headers_complete(self) -> None:
        self.phase, self.body_bytes = BODY, 0
        self.cancel_request_timer()
        self.respond()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        self.phase = IDLE
        self.cancel_request_timer()
        if self.answered and not self.keep_alive and not self.closing:
            self.close()  # answered before its body was read: closed once it is

    # answers

    def respond(self) -> None:
        """Answer the request whose headers are complete: at once, from the Site."""
        started = time.perf_counter()
        parser = self.parser
        version = parser.get_http_version()
        if len(self.url) + self.header_bytes > MAX_HEADER_BYTES:
            return self.reject(431)
        if version != "1.1" and version != "1.0":
            return self.reject(400 if version == "0.9" else 505)  # 0.9: a request line without a version
        if self.host_count > 1 or (self.host_count == 0 and version == "1.1"):
            return self.reject(400)  # RFC 9112 3.2
        method = parser.get_method()
        service = self.service
        site = service.site
        route = site.routes.get(self.url)
        if route is None:  # not a route as it stands: with a query, percent-encoded, absolute-form, or none
            path = route_path(self.url)
            if path is None:
                return self.reject(400)
            route = site.routes.get(path, OTHER)
        # A request with a body is answered at once and closed once its body is read: nothing here uses one.
        keep_alive = version == "1.1" and not (service.draining or self.has_body) and parser.should_keep_alive()
        head = method == b"HEAD"
        label = METHOD_LABELS.get(method, OTHER)
        if route == OTHER:
            asked: int | None = 404
        elif method != b"GET" and not head:
            asked = 405
        else:
            asked = 200 if route in site.fixed else None
        if asked is None:
            answer = site.answer(route, self.accept, service.draining)
            status, data = answer[0], frame(answer, service.date, keep_alive, head)
        else:
            self.fixed_answer = (label, route, asked, head)
            status, data = service.prebuilt(route, asked, keep_alive, head)
        self.write_answer(label, route, status, data, keep_alive, started)

    def write_answer(self, method: str, route: str, status: int, data: bytes, keep_alive: bool, started: float) -> None:
        """Count the answer and write it, one step (nothing can come between); close after it unless keep_alive."""
        self.service.metrics.observe(method, route, status, time.perf_counter() - started)
        self.transport.write(data)
        self.answered, self.keep_alive = True, keep_alive
        self.turn_answers += 1
        if self.service.access_log:
            self.log_access(status)
        if keep_alive or (self.has_body and self.phase == BODY):
            self.idle_since = self.loop.time()  # a body still coming after its answer: at most keep_alive_timeout
        else:
            self.close()

    def log_access(self, status: int) -> None:
        peer = self.transport.get_extra_info("peername") or ("-", 0)
        access.info(
            '%s:%s - "%s %s HTTP/%s" %d',
            peer[0],
            peer[1],
            self.parser.get_method().decode("latin-1"),
            self.url.decode("latin-1"),
            self.parser.get_http_version(),
            status,
        )

    def reject(self, status: int) -> None:
        """Answer a request that cannot be served (400, 408, 431, 505), then close."""
        if self.closing:
            return
        answer = frame(rejection(status), self.service.date, keep_alive=False, head=False)
        self.phase = IDLE  # closed at once, whatever of the request is still to come
        self.write_answer(OTHER, OTHER, status, answer, keep_alive=False, started=time.perf_counter())

    # deadlines

    def arm_request_timer(self) -> None:
        limits = self.service.limits
        timeout = limits.header_timeout if self.phase == HEADERS else limits.body_timeout
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
        elif self.phase == HEADERS:
            self.reject(408)
        else:
            self.close()  # answered already; its body stopped coming
