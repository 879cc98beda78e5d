"""The HTTP layer (hello/server/protocol.py) in-process: HttpConnection and Service driven through a fake transport.

No sockets and no event loop run: a FakeLoop (time, call_soon, call_later, all by hand) and a FakeTransport
(what is written, closed, paused and resumed is recorded; its write buffer pauses the protocol past a high-water
mark as asyncio's does) stand in for uvloop. The Site and the RequestMetrics are the real ones of
hello/server/routes.py's make_site, in prometheus_client's multiprocess mode on a scratch directory, so the counts
read here are the very doubles /metrics sums. tests/test_http_rfc.py checks the same over real sockets.
"""

from __future__ import annotations

import email.utils
import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import values as prometheus_values

from hello.server import protocol
from hello.server.protocol import HttpConnection, Limits, Service
from hello.server.routes import BuildInfo, make_site

pytestmark = pytest.mark.fast  # the in-process tier (make test-fast)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LIMITS = Limits(
    header_timeout=10.0,
    body_timeout=10.0,
    write_timeout=30.0,
    keep_alive_timeout=5.0,
    max_header_count=50,
    max_connections=1000,
)


# --- the fakes ---------------------------------------------------------------------------------------


class FakeTimer:
    def __init__(self, when: float, callback: Callable[..., Any], args: tuple) -> None:
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """What Service and HttpConnection use of a loop: time(), call_soon() and call_later(), run by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.soon: deque[tuple[Callable[..., Any], tuple]] = deque()
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.soon.append((callback, args))

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback, args)
        self.timers.append(timer)
        return timer

    def run_soon(self, limit: int = 100_000) -> int:
        """Run what was scheduled with call_soon (and what that schedules) until none is left; how many ran."""
        ran = 0
        while self.soon and ran < limit:
            callback, args = self.soon.popleft()
            callback(*args)
            ran += 1
        return ran

    def advance(self, seconds: float) -> None:
        """Move the clock; fire the timers that are due, in order."""
        self.now += seconds
        due = sorted((t for t in self.timers if not t.cancelled and t.when <= self.now), key=lambda t: t.when)
        self.timers = [t for t in self.timers if t not in due]
        for timer in due:
            if not timer.cancelled:
                timer.callback(*timer.args)

    def live_timers(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled]


class FakeTransport:
    """An asyncio transport that keeps what is written until the client reads it (read()).

    As asyncio's transports do, it calls the protocol's pause_writing() once the unread bytes pass the high-water
    mark the protocol set, and resume_writing() once they fall to the low one.
    """

    def __init__(self, protocol_: HttpConnection) -> None:
        self.protocol = protocol_
        self.written = b""  # everything ever written
        self.unread = 0
        self.high = self.low = 0
        self.writing_paused = False
        self.reading_paused = False
        self.events: list[str] = []  # pause_reading, resume_reading, close, abort, pause_writing, resume_writing
        self.closed = self.aborted = False
        self.writes_after_close = 0

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.high, self.low = high, low

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.7", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        if self.closed or self.aborted:
            self.writes_after_close += 1
        self.written += data
        self.unread += len(data)
        if self.unread > self.high and not self.writing_paused:
            self.writing_paused = True
            self.events.append("pause_writing")
            self.protocol.pause_writing()

    def read(self) -> None:
        """The client reads every answer waiting."""
        self.unread = 0
        if self.writing_paused:
            self.writing_paused = False
            self.events.append("resume_writing")
            self.protocol.resume_writing()

    def pause_reading(self) -> None:
        assert not self.reading_paused, "pause_reading twice"
        self.reading_paused = True
        self.events.append("pause_reading")

    def resume_reading(self) -> None:
        assert self.reading_paused, "resume_reading while reading"
        self.reading_paused = False
        self.events.append("resume_reading")

    def close(self) -> None:
        self.closed = True
        self.events.append("close")

    def abort(self) -> None:
        self.aborted = True
        self.events.append("abort")


# --- the real site and metrics, in multiprocess mode on a scratch directory --------------------------


@pytest.fixture(scope="module")
def site_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """make_site's Site and RequestMetrics; their metrics are unregistered again afterwards."""
    directory = tmp_path_factory.mktemp("multiproc")
    registry = prometheus_client.REGISTRY
    before = set(registry._collector_to_names)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
        patch.setattr(prometheus_values, "ValueClass", prometheus_values.MultiProcessValue())
        try:
            yield make_site(BuildInfo("1.0.0", COMMIT))
        finally:
            for collector in set(registry._collector_to_names) - before:
                registry.unregister(collector)


@dataclass
class Client:
    """One connection of a fresh Service: send() bytes in, answers() out."""

    service: Service
    loop: FakeLoop
    connection: HttpConnection
    transport: FakeTransport
    metrics: Any

    def send(self, data: bytes) -> None:
        self.connection.data_received(data)

    def answers(self, heads: int | set[int] = frozenset()) -> list[Answer]:
        return split_answers(self.transport.written, {heads} if isinstance(heads, int) else heads)

    def count(self, method: str, route: str, status: int) -> float:
        return count(self.metrics, method, route, status)


@pytest.fixture
def connect(site_metrics: tuple[Any, Any]) -> Callable[..., Client]:
    site, metrics = site_metrics

    def make(limits: Limits = LIMITS, service: Service | None = None, loop: FakeLoop | None = None) -> Client:
        loop = loop or FakeLoop()
        service = service or Service(site, metrics, limits, loop)  # type: ignore[arg-type]
        connection = HttpConnection(service)
        transport = FakeTransport(connection)
        connection.connection_made(transport)  # type: ignore[arg-type]
        return Client(service, loop, connection, transport, metrics)

    return make


def count(metrics: Any, method: str, route: str, status: int) -> float:
    """The request counter's value for (method, route, status), as written to the shared file (0: none yet)."""
    slot = metrics.counts.get((method, route, status))
    if slot is None:
        return 0.0
    view, index = slot
    return view[index]


def counts(metrics: Any) -> dict[tuple[str, str, int], float]:
    return {key: count(metrics, *key) for key in metrics.counts}


def counted_since(metrics: Any, before: dict[tuple[str, str, int], float]) -> dict[tuple[str, str, int], float]:
    after = counts(metrics)
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0.0)}


# --- reading answers ---------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def split_answers(data: bytes, heads: set[int] = frozenset()) -> list[Answer]:
    """The answers in data, in order; the answers numbered in heads (from 0) answer a HEAD: no body."""
    found = []
    while data:
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, f"an answer without the end of its headers: {head!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, _phrase = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = [(name.lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
        lengths = [int(value) for name, value in headers if name == "content-length"]
        assert len(lengths) == 1, headers
        size = 0 if len(found) in heads else lengths[0]
        body, data = data[:size], data[size:]
        assert len(body) == size, "a body shorter than its content-length"
        found.append(Answer(int(status), headers, body))
    return found


def request(path: str = "/", method: str = "GET", version: str = "1.1", extra: str = "") -> bytes:
    host = "Host: hello.test\r\n" if version == "1.1" else ""
    return f"{method} {path} HTTP/{version}\r\n{host}{extra}\r\n".encode()


def assert_date(answer: Answer) -> None:
    (date,) = answer.header("date")
    assert email.utils.parsedate_to_datetime(date).tzname() == "UTC", date
    assert date.endswith(" GMT"), date


# --- routes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "body", "no_store"),
    [
        ("/", 200, b"Hello, World!\n", False),
        ("/healthz", 200, b"ok\n", True),
        ("/readyz", 200, b"ready\n", True),
        ("/version", 200, None, True),
        ("/nope", 404, b"not found\n", False),
        ("/?a=b", 200, b"Hello, World!\n", False),
        ("/health%7a", 200, b"ok\n", True),  # percent-encoded: the same route
        ("http://hello.test/version", 200, None, True),  # absolute-form
    ],
)
def test_each_route_answers_with_date_and_its_cache_rule(
    connect: Callable[..., Client], path: str, status: int, body: bytes | None, no_store: bool
) -> None:
    client = connect()
    client.send(request(path))
    (answer,) = client.answers()
    assert answer.status == status
    assert_date(answer)
    assert answer.header("content-length") == [str(len(answer.body))]
    assert (answer.header("cache-control") == ["no-store"]) == no_store
    assert answer.header("connection") == [], "HTTP/1.1 stays open"
    if body is not None:
        assert answer.body == body
    else:
        assert json.loads(answer.body) == {"version": "1.0.0", "commit": COMMIT}
        assert answer.header("content-type") == ["application/json"]
    assert not client.transport.closed


def test_metrics_is_rendered_with_no_store_and_counts_the_answers_before_it(connect: Callable[..., Client]) -> None:
    client = connect()
    before = client.count("GET", "/healthz", 200)
    client.send(request("/healthz") * 3)
    client.send(request("/metrics", extra="Accept: text/plain\r\n"))
    *_, answer = client.answers()
    assert answer.status == 200 and answer.header("cache-control") == ["no-store"]
    assert answer.header("content-type")[0].startswith("text/plain")
    text = answer.body.decode()
    assert f'hello_world_build_info{{commit="{COMMIT}",version="1.0.0"}} 1.0' in text
    line = next(line for line in text.splitlines() if 'path="/healthz"' in line and "requests_total" in line)
    assert float(line.split()[-1]) == before + 3, line
    openmetrics = connect()
    openmetrics.send(request("/metrics", extra="Accept: application/openmetrics-text; version=1.0.0\r\n"))
    (answer,) = openmetrics.answers()
    assert answer.header("content-type")[0].startswith("application/openmetrics-text")
    assert answer.body.endswith(b"# EOF\n")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "BREW"])
def test_other_methods_are_405_with_allow(connect: Callable[..., Client], method: str) -> None:
    client = connect()
    before = counts(client.metrics)
    client.send(request("/healthz", method=method))
    if method == "BREW":  # not a method llhttp knows: a malformed request
        (answer,) = client.answers()
        assert answer.status == 400 and client.transport.closed
        assert counted_since(client.metrics, before) == {("other", "other", 400): 1.0}
        return
    (answer,) = client.answers()
    assert answer.status == 405
    assert answer.header("allow") == ["GET, HEAD"]
    assert answer.body == b"method not allowed\n"
    assert counted_since(client.metrics, before) == {(method, "/healthz", 405): 1.0}


def test_unknown_path_is_404_counted_as_other(connect: Callable[..., Client]) -> None:
    client = connect()
    before = counts(client.metrics)
    client.send(request("/admin") + request("/admin", method="POST"))
    assert [a.status for a in client.answers()] == [404, 404], "a route that does not exist: 404 for any method"
    assert counted_since(client.metrics, before) == {("GET", "other", 404): 1.0, ("POST", "other", 404): 1.0}


def test_head_gets_the_headers_of_get_without_the_body(connect: Callable[..., Client]) -> None:
    get, head = connect(), connect()
    get.send(request("/version"))
    head.send(request("/version", method="HEAD"))
    (got,) = get.answers()
    (headed,) = head.answers(heads=0)
    assert headed.status == 200 and headed.body == b""
    assert headed.header("content-length") == [str(len(got.body))]
    assert [h for h in headed.headers if h[0] != "date"] == [h for h in got.headers if h[0] != "date"]
    assert head.transport.written.endswith(b"\r\n\r\n")


def test_draining_makes_readyz_503_and_closes_every_connection(connect: Callable[..., Client]) -> None:
    client = connect()
    client.service.draining = True
    client.send(request("/readyz"))
    (answer,) = client.answers()
    assert (answer.status, answer.body) == (503, b"draining\n")
    assert answer.header("connection") == ["close"] and client.transport.closed


# --- keep-alive, close, pipelining -------------------------------------------------------------------


def test_keep_alive_answers_request_after_request_on_one_connection(connect: Callable[..., Client]) -> None:
    client = connect()
    for n, path in enumerate(["/", "/healthz", "/version", "/readyz"]):
        client.send(request(path))
        assert len(client.answers()) == n + 1 and not client.transport.closed
    assert client.connection.idle_since == client.loop.now, "idle again after its last answer"


def test_connection_close_closes_after_the_answer_and_nothing_behind_it_is_answered_or_counted(
    connect: Callable[..., Client],
) -> None:
    client = connect()
    before = counts(client.metrics)
    client.send(request("/", extra="Connection: close\r\n") + request("/healthz") + request("/version"))
    (answer,) = client.answers()
    assert answer.header("connection") == ["close"] and client.transport.closed
    client.send(request("/healthz"))  # arrives before the close took effect: ignored
    assert len(client.answers()) == 1
    assert counted_since(client.metrics, before) == {("GET", "/", 200): 1.0}
    assert client.transport.writes_after_close == 0


@pytest.mark.parametrize("extra", ["", "Connection: keep-alive\r\n"])
def test_http_1_0_is_answered_then_closed_even_when_it_asks_for_keep_alive(
    connect: Callable[..., Client], extra: str
) -> None:
    client = connect()
    client.send(request("/", version="1.0", extra=extra) + request("/healthz", version="1.0"))
    (answer,) = client.answers()
    assert answer.status == 200 and answer.header("connection") == ["close"]
    assert client.transport.closed


def test_pipelined_requests_are_answered_in_order_and_counted_once(connect: Callable[..., Client]) -> None:
    paths = ["/", "/healthz", "/nope", "/version", "/readyz", "/"] * 5
    client = connect()
    before = counts(client.metrics)
    client.send(b"".join(request(path) for path in paths))
    client.loop.run_soon()  # more than ANSWERS_PER_TURN: the rest on later turns
    statuses = [a.status for a in client.answers()]
    assert statuses == [404 if path == "/nope" else 200 for path in paths]
    assert sum(counted_since(client.metrics, before).values()) == len(paths)
    assert not client.transport.reading_paused, "reading again once the pipeline is answered"


PATHS = ["/", "/healthz", "/readyz", "/version", "/x", "/healthz?q=1"]


@settings(max_examples=40, deadline=5000, database=None)  # ms: a loaded machine
@given(
    paths=st.lists(st.sampled_from(PATHS), min_size=1, max_size=40),
    cuts=st.lists(st.integers(1, 4000), max_size=8),
)
def test_any_split_of_a_pipeline_gets_the_same_answers(
    site_metrics: tuple[Any, Any], paths: list[str], cuts: list[int]
) -> None:
    """However the bytes of a pipeline arrive (split anywhere, even inside a request line), the same answers."""
    site, metrics = site_metrics
    loop = FakeLoop()
    connection = HttpConnection(Service(site, metrics, LIMITS, loop))  # type: ignore[arg-type]
    transport = FakeTransport(connection)
    connection.connection_made(transport)  # type: ignore[arg-type]
    data = b"".join(request(path) for path in paths)
    positions = sorted({cut % len(data) for cut in cuts} - {0})
    for start, end in zip([0, *positions], [*positions, len(data)], strict=True):
        connection.data_received(data[start:end])
        loop.run_soon()
    statuses = [a.status for a in split_answers(transport.written)]
    assert statuses == [404 if path == "/x" else 200 for path in paths]
    assert not transport.closed


# --- repeats: a read that equals the last one -------------------------------------------------------


class Unrepeating(HttpConnection):
    """The protocol with repeats turned off: every read is parsed. What a repeating connection must equal."""

    def data_received(self, data: bytes) -> None:
        self.repeatable = None
        super().data_received(data)


def parses(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The reads the connection hands to llhttp from now on."""
    fed: list[bytes] = []
    parse = client.connection.parse
    monkeypatch.setattr(client.connection, "parse", lambda data: (fed.append(data), parse(data))[1])
    return fed


def test_a_repeated_read_is_answered_and_counted_without_a_parse(
    connect: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = connect()
    fed = parses(client, monkeypatch)
    before = counts(client.metrics)
    for _ in range(5):
        client.send(request("/"))
    assert fed == [request("/")], "only the first read is parsed"
    answers = client.answers()
    assert [(a.status, a.body) for a in answers] == [(200, b"Hello, World!\n")] * 5
    assert counted_since(client.metrics, before) == {("GET", "/", 200): 5.0}
    assert client.connection.idle_since == client.loop.now and not client.transport.closed


@pytest.mark.parametrize(
    "read",
    [
        request("/metrics"),  # answered per request: never repeated
        request("/") * 2,  # two requests in one read
        request("/", extra="Connection: close\r\n"),  # closes
        request("/", method="POST", extra="Content-Length: 2\r\n") + b"hi",  # a body
        request("/")[:10],  # part of a request
        request("/", extra="Upgrade: websocket\r\nConnection: Upgrade\r\n"),
    ],
    ids=["metrics", "pipeline", "close", "body", "partial", "upgrade"],
)
def test_only_one_whole_fixed_request_answered_and_kept_alive_is_repeated(
    connect: Callable[..., Client], monkeypatch: pytest.MonkeyPatch, read: bytes
) -> None:
    client = connect()
    fed = parses(client, monkeypatch)
    client.send(read)
    client.send(read)
    assert fed == [read, read] or client.transport.closed, fed


READS = [request("/"), request("/"), request("/healthz", method="HEAD"), request("/x"), request("/", "PUT")]
READS += [request("/") * 2, request("/")[:9], request("/")[9:], b"\r\n"]
STEPS = st.one_of(st.sampled_from(READS), st.sampled_from(["tick", "drain", "read", "turns"]))


@settings(max_examples=300, deadline=5000, database=None)  # ms: a loaded machine
@given(steps=st.lists(STEPS, min_size=1, max_size=20))
def test_repeats_change_nothing_a_client_or_the_counts_see(
    site_metrics: tuple[Any, Any], steps: list[bytes | str]
) -> None:
    """Any run of reads, ticks of the clock, draining and unread answers: the same bytes written, the same counts,
    the same closes, with repeats as with every read parsed."""
    site, metrics = site_metrics
    seen = []
    for kind in (Unrepeating, HttpConnection):
        now = [1_700_000_000.5]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(protocol.time, "time", lambda now=now: now[0])
            loop = FakeLoop()
            service = Service(site, metrics, LIMITS, loop)  # type: ignore[arg-type]
            connection = kind(service)
            transport = FakeTransport(connection)
            connection.connection_made(transport)  # type: ignore[arg-type]
            transport.high = 300  # a few answers left unread pause the writing
            before = counts(metrics)
            for step in steps:
                if step == "tick":
                    now[0] += 1
                    service.refresh_date()
                elif step == "drain":
                    service.draining = True
                elif step == "read":
                    transport.read()
                elif step == "turns":
                    loop.run_soon()
                elif not (transport.closed or transport.aborted):
                    connection.data_received(step)
            loop.run_soon()
            transport.read()
            loop.run_soon()
        seen.append((transport.written, counted_since(metrics, before), transport.closed, transport.aborted))
    assert seen[0] == seen[1]


# --- malformed requests and the RFC's rules ----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two Hosts
        (b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", 400),  # two, even in HTTP/1.0
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # malformed request line
        (b"GET  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS ClientHello to the plain port
        (b"GET /\r\n", 400),  # HTTP/0.9: no version
    ],
)
def test_bad_requests_get_one_answer_with_date_then_close(
    connect: Callable[..., Client], data: bytes, status: int
) -> None:
    client = connect()
    before = counts(client.metrics)
    client.send(data + request("/"))  # what follows a bad request is never answered
    (answer,) = client.answers()
    assert answer.status == status
    assert_date(answer)
    assert answer.header("connection") == ["close"] and client.transport.closed
    assert counted_since(client.metrics, before) == {("other", "other", status): 1.0}


def test_http_1_0_without_host_is_served(connect: Callable[..., Client]) -> None:
    client = connect()
    client.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    (answer,) = client.answers()
    assert (answer.status, answer.body) == (200, b"ok\n")


def test_a_stray_crlf_between_requests_is_no_request(connect: Callable[..., Client]) -> None:
    client = connect()
    client.send(request("/") + b"\r\n" + request("/healthz"))
    assert [a.status for a in client.answers()] == [200, 200]


# --- limits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [LIMITS.max_header_count - 1, LIMITS.max_header_count + 1])
def test_header_count_over_the_limit_is_431(connect: Callable[..., Client], headers: int) -> None:
    client = connect()
    extra = "".join(f"X-Header-{n}: {n}\r\n" for n in range(headers))  # plus Host
    client.send(request("/", extra=extra))
    (answer,) = client.answers()
    if headers + 1 > LIMITS.max_header_count:
        assert answer.status == 431 and client.transport.closed
        assert_date(answer)
    else:
        assert answer.status == 200 and not client.transport.closed


@pytest.mark.parametrize("size", [protocol.MAX_HEADER_BYTES - 200, protocol.MAX_HEADER_BYTES + 1])
def test_header_bytes_over_the_limit_are_431(connect: Callable[..., Client], size: int) -> None:
    client = connect()
    client.send(request("/", extra=f"X-Big: {'a' * size}\r\n"))
    (answer,) = client.answers()
    assert answer.status == (431 if size > protocol.MAX_HEADER_BYTES else 200)


def test_a_header_that_never_ends_is_431_before_the_worker_holds_much_of_it(connect: Callable[..., Client]) -> None:
    client = connect()
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
    sent = 0
    while not client.transport.closed and sent < 10 * protocol.MAX_PENDING_HEADER_BYTES:
        client.send(b"a" * 4096)
        sent += 4096
    (answer,) = client.answers()
    assert answer.status == 431
    assert sent <= protocol.MAX_PENDING_HEADER_BYTES + 4096


def test_a_long_url_counts_towards_the_header_limit(connect: Callable[..., Client]) -> None:
    client = connect()
    client.send(request("/?" + "q" * protocol.MAX_HEADER_BYTES))
    (answer,) = client.answers()
    assert answer.status == 431


# --- Upgrade -----------------------------------------------------------------------------------------


def test_upgrade_is_answered_as_plain_http_and_what_follows_is_parsed(connect: Callable[..., Client]) -> None:
    client = connect()
    upgrade = request("/healthz", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n")
    client.send(upgrade + request("/version") + upgrade + request("/"))
    answers = client.answers()
    assert [a.status for a in answers] == [200, 200, 200, 200], "no 101: no protocol switch"
    assert [a.body for a in answers][::2] == [b"ok\n", b"ok\n"] and answers[3].body == b"Hello, World!\n"
    assert not client.transport.closed


def test_upgrade_with_a_body_closes_after_its_answer(connect: Callable[..., Client]) -> None:
    client = connect()
    client.send(
        request("/", method="POST", extra="Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 4\r\n")
        + b"abcd"
        + request("/healthz")
    )
    (answer,) = client.answers()
    assert answer.status == 405 and client.transport.closed, "its body cannot be told from what follows"


# --- request bodies ----------------------------------------------------------------------------------


def test_a_request_with_a_body_is_answered_at_once_and_closed_when_its_body_is_read(
    connect: Callable[..., Client],
) -> None:
    client = connect()
    client.send(request("/", method="POST", extra="Content-Length: 10\r\n") + b"12345")
    (answer,) = client.answers()
    assert answer.status == 405 and answer.header("connection") == ["close"]
    assert not client.transport.closed, "the body is still coming"
    client.send(b"67890" + request("/healthz"))
    assert client.transport.closed and len(client.answers()) == 1


def test_a_malformed_body_after_the_answer_closes_without_a_second_answer(connect: Callable[..., Client]) -> None:
    client = connect()
    client.send(request("/", method="POST", extra="Transfer-Encoding: chunked\r\n") + b"zz\r\n")
    (answer,) = client.answers()
    assert answer.status == 405 and client.transport.closed


# --- deadlines ---------------------------------------------------------------------------------------


def test_headers_that_stop_coming_get_408_after_header_timeout(connect: Callable[..., Client]) -> None:
    client = connect()
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
    client.loop.advance(LIMITS.header_timeout - 0.5)
    assert client.answers() == []
    client.loop.advance(1.0)
    (answer,) = client.answers()
    assert answer.status == 408 and client.transport.closed
    assert_date(answer)


def test_a_whole_request_starts_no_timer(connect: Callable[..., Client]) -> None:
    client = connect()
    client.send(request("/") * 3)
    assert client.loop.live_timers() == []


def test_idle_connections_are_closed_after_keep_alive_timeout_and_busy_ones_kept(
    connect: Callable[..., Client],
) -> None:
    idle = connect()
    busy = connect(service=idle.service, loop=idle.loop)
    idle.send(request("/"))
    busy.send(request("/"))
    idle.loop.now += LIMITS.keep_alive_timeout - 1
    busy.send(b"GET / HTTP/1.1\r\n")  # a request has begun: not idle
    idle.service.close_idle(idle.loop.now)
    assert not idle.transport.closed
    idle.loop.now += 2
    idle.service.close_idle(idle.loop.now)
    assert idle.transport.closed and not busy.transport.closed


def test_a_lone_crlf_does_not_reset_the_idle_clock(connect: Callable[..., Client]) -> None:
    client = connect()
    client.send(request("/"))
    since = client.connection.idle_since
    client.loop.now += 3
    client.send(b"\r\n")
    assert client.connection.idle_since == since


# --- back-pressure -----------------------------------------------------------------------------------


def test_a_client_not_reading_its_answers_stops_the_reading_and_gets_them_all_once_it_reads(
    connect: Callable[..., Client],
) -> None:
    client = connect()
    transport = client.transport
    before = counts(client.metrics)
    total = 2000
    client.send(request("/version") * total)
    client.loop.run_soon()
    assert "pause_writing" in transport.events and transport.reading_paused
    answered = len(client.answers())
    assert answered < total, "answers stop while the client does not read them"
    assert transport.unread <= transport.high + 2 * 1024, "about the high-water mark waits, no more"
    assert client.loop.run_soon() == 0 and len(client.answers()) == answered, "nothing more while unread"
    # A bounded number of rounds: each read lets a buffer's worth of answers through.
    for _ in range(100):
        if len(client.answers()) == total:
            break
        transport.read()
        client.loop.run_soon()
    assert len(client.answers()) == total
    assert sum(counted_since(client.metrics, before).values()) == total, "counted once each, as written"
    assert not transport.reading_paused and not transport.closed
    assert [t for t in client.loop.live_timers() if t.callback == client.connection.write_timed_out] == []


def test_small_reads_stop_too_once_the_answers_pass_the_high_water_mark(connect: Callable[..., Client]) -> None:
    client = connect()
    transport = client.transport
    sent = 0
    while "pause_writing" not in transport.events:
        client.send(request("/version"))  # one small read a request: parsed at once, no slicing
        sent += 1
        assert sent < 1000
    assert transport.reading_paused, "the answer that filled the buffer stops the reading at once"
    client.send(request("/") * 3)  # read before the pause took effect: held, not answered
    assert len(client.answers()) == sent
    transport.read()
    assert len(client.answers()) == sent + 3 and not transport.reading_paused


def test_answers_left_unread_for_write_timeout_drop_the_connection(connect: Callable[..., Client]) -> None:
    client = connect()
    client.send(request("/version") * 1000)
    client.loop.run_soon()
    assert client.transport.reading_paused
    client.loop.advance(LIMITS.write_timeout + 1)
    assert client.transport.aborted, "close() would wait forever for the unread answers"
    written = len(client.answers())
    client.send(request("/"))
    assert len(client.answers()) == written


def test_one_turn_answers_at_most_answers_per_turn_then_yields(connect: Callable[..., Client]) -> None:
    client = connect()
    other = connect(service=client.service, loop=client.loop)
    client.send(request("/healthz") * 50)
    assert len(client.answers()) <= protocol.ANSWERS_PER_TURN + 1
    other.send(request("/"))  # a new client is answered at once, not after the whole pipeline
    assert len(other.answers()) == 1
    client.loop.run_soon()
    assert len(client.answers()) == 50


def test_near_the_connection_limit_idle_connections_are_closed_first(connect: Callable[..., Client]) -> None:
    limits = Limits(10.0, 10.0, 30.0, 5.0, 50, max_connections=10)
    first = connect(limits=limits)
    service, loop = first.service, first.loop
    clients = [first] + [connect(limits=limits, service=service, loop=loop) for _ in range(9)]
    for client in clients[:5]:
        client.send(b"GET / HTTP/1.1\r\n")  # sending a request: closed last
    assert not any(c.transport.closed for c in clients)
    newest = connect(limits=limits, service=service, loop=loop)  # the 11th: over the limit
    closed = [c for c in clients if c.transport.closed]
    assert closed and all(c in clients[5:] for c in closed), "idle ones go first"
    assert not newest.transport.closed
    assert len(service.connections) - len(closed) <= 9 + 1


def test_connection_lost_forgets_the_connection_and_its_timers(connect: Callable[..., Client]) -> None:
    client = connect()
    client.send(b"GET / HTTP/1.1\r\n")
    assert client.loop.live_timers()
    client.connection.connection_lost(None)
    assert client.connection not in client.service.connections
    assert client.loop.live_timers() == []
    client.send(request("/"))
    assert client.answers() == []


def test_the_date_changes_with_the_second_and_fixed_answers_are_rebuilt(
    connect: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_700_000_000.25]
    monkeypatch.setattr(protocol.time, "time", lambda: now[0])
    client = connect()
    client.send(request("/readyz"))
    now[0] += 1
    client.service.refresh_date()
    client.send(request("/readyz"))  # a repeat (the same read): the new Date all the same
    client.service.draining = True
    client.send(request("/readyz"))  # a repeat no more: 503 and close
    first, second, third = client.answers()
    assert first.header("date") == ["Tue, 14 Nov 2023 22:13:20 GMT"]
    assert second.header("date") == ["Tue, 14 Nov 2023 22:13:21 GMT"]
    assert (third.status, third.header("connection")) == (503, ["close"]) and client.transport.closed


def test_the_access_log_names_the_peer_the_request_and_the_status(
    connect: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    client = connect()
    client.service.access_log = True
    with caplog.at_level("INFO", logger="hello_world.access"):
        client.send(request("/nope?x=1", method="HEAD"))
    assert [r.getMessage() for r in caplog.records] == ['192.0.2.7:40000 - "HEAD /nope?x=1 HTTP/1.1" 404']


def test_a_bug_in_a_callback_aborts_the_connection_and_is_logged(
    connect: Callable[..., Client], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = connect()

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(client.service.site, "answer", broken)
    with caplog.at_level("ERROR", logger="hello_world.protocol"):
        client.send(request("/metrics"))
    assert client.transport.aborted and client.answers() == []
    assert any("error while handling a request" in r.getMessage() for r in caplog.records)


def test_paths_in_routes_are_the_documented_ones(site_metrics: tuple[Any, Any]) -> None:
    site, _ = site_metrics
    assert set(site.routes) == {b"/", b"/healthz", b"/readyz", b"/version", b"/metrics"}
