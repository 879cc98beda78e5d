"""hello/protocol.py relies on internals of uvicorn, httptools and prometheus_client (its docstring names them).

These tests fail loudly, naming what changed, when an upgrade changes one of them, instead of the server
turning silently slower or wrong. After an upgrade: re-read the internals the docstring lists, adjust
hello/protocol.py, then update TESTED_WITH and the digests below.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import inspect
import json
import os
import subprocess
import textwrap

import httptools
import pytest
import uvicorn
import uvicorn.protocols.utils
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from conftest import PYTHON, REPO
from hello import protocol

# uvicorn methods whose bodies hello/protocol.py re-states rather than extends: a change must be carried over.
REPLACED = {
    "connection_made": "ba1915817ccf6c1b7d6d9982ca74b6fb9e43eebbd3f588fff1e1f8f17af5e161",
    "on_message_begin": "0efab6f9456c4987cb366d90c1d3f4a36f28a271cf9b5b2d276c631d387e55ea",
    "data_received": "02c2572f1df559070eba7f206a3f7e251782f5af4aaae194fc1ffb67f24c3873",
    "on_header": "374f1e380c062750017f779f155889a6b9dc6340be49861d3640aafb337b30ca",
}


def source_digest(function) -> str:
    return hashlib.sha256(textwrap.dedent(inspect.getsource(function)).encode()).hexdigest()


def test_the_installed_versions_are_the_ones_the_module_was_written_against():
    pins = dict(
        line.split("#")[0].strip().split("==")
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if "==" in line
    )
    for dist, version in protocol.TESTED_WITH.items():
        installed = importlib.metadata.version(dist)
        assert installed == version, (
            f"{dist} {installed} is installed; hello/protocol.py was written against {version}: "
            "re-check the internals its docstring names, then update TESTED_WITH"
        )
        pinned = pins.get(dist) or pins.get(dist.replace("-", "_"))
        assert pinned == version, f"requirements.txt pins {dist} {pinned}, hello/protocol.py names {version}"


def test_uvicorn_protocol_methods_have_the_signatures_used():
    expected = {
        "__init__": ["self", "config", "server_state", "app_state", "_loop"],
        "connection_made": ["self", "transport"],
        "connection_lost": ["self", "exc"],
        "data_received": ["self", "data"],
        "on_message_begin": ["self"],
        "on_header": ["self", "name", "value"],
        "on_headers_complete": ["self"],
        "on_body": ["self", "body"],
        "on_message_complete": ["self"],
        "_unset_keepalive_if_required": ["self"],
        "timeout_keep_alive_handler": ["self"],
        "send_400_response": ["self", "msg"],
        "pause_writing": ["self"],
        "resume_writing": ["self"],
    }
    for name, parameters in expected.items():
        method = getattr(HttpToolsProtocol, name, None)
        assert method is not None, f"uvicorn's HttpToolsProtocol has no {name} any more"
        assert list(inspect.signature(method).parameters) == parameters, f"HttpToolsProtocol.{name} changed"
    for name in ("get_local_addr", "get_remote_addr"):
        assert list(inspect.signature(getattr(uvicorn.protocols.utils, name)).parameters) == ["transport"], name
    for name in ("startup", "on_tick", "shutdown"):
        assert hasattr(uvicorn.Server, name), f"uvicorn.Server has no {name} any more"
    assert list(inspect.signature(uvicorn.Server.on_tick).parameters) == ["self", "counter"]


def test_the_uvicorn_methods_hello_protocol_replaces_are_unchanged():
    for name, digest in REPLACED.items():
        found = source_digest(getattr(HttpToolsProtocol, name))
        assert found == digest, (
            f"uvicorn's HttpToolsProtocol.{name} changed (sha256 {found}): hello/protocol.py re-states it; "
            "carry the change over there, then update REPLACED in this test"
        )


def test_uvicorn_protocol_and_server_have_the_attributes_used():
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(app=lambda scope, receive, send: None, lifespan="off", ws="none")
        config.load()
        state = ServerState()
        proto = HttpToolsProtocol(config, state, {}, _loop=loop)
        for name in ("parser", "headers", "cycle", "pipeline", "flow", "transport", "loop", "server_state"):
            assert hasattr(proto, name), f"HttpToolsProtocol instances have no {name} any more"
        for name in ("timeout_keep_alive_task", "timeout_keep_alive", "connections", "expect_100_continue"):
            assert hasattr(proto, name), f"HttpToolsProtocol instances have no {name} any more"
        for name in ("asgi_version", "root_path", "app_state", "server", "client", "scheme"):
            assert hasattr(proto, name), f"HttpToolsProtocol instances have no {name} any more"
        assert proto.connections is state.connections and isinstance(state.default_headers, list)
        for name in ("read_paused", "write_paused", "pause_reading", "resume_reading"):
            assert hasattr(FlowControl(None), name), f"uvicorn's FlowControl has no {name} any more"
        server = uvicorn.Server(config)
        for name in ("server_state", "force_exit", "should_exit", "started"):
            assert hasattr(server, name), f"uvicorn.Server instances have no {name} any more"
    finally:
        loop.close()


def test_httptools_reports_upgrades_and_callback_errors_as_used():
    class Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            raise protocol.HeadersTooLarge

    parser = httptools.HttpRequestParser(Callbacks())
    with pytest.raises(httptools.HttpParserError) as caught:
        parser.feed_data(b"GET / HTTP/1.1\r\na: b\r\nc: d\r\n\r\n")
    assert isinstance(caught.value.__context__, protocol.HeadersTooLarge), "callback errors lost their cause"

    parser = httptools.HttpRequestParser(type("Quiet", (), {})())
    parser.set_dangerous_leniencies(lenient_data_after_close=True)
    head = b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
    with pytest.raises(httptools.HttpParserUpgrade) as caught:
        parser.feed_data(head + b"GET /next HTTP/1.1\r\n\r\n")
    assert caught.value.args[0] == len(head), "HttpParserUpgrade no longer carries the offset after the headers"


def test_request_metrics_write_prometheus_client_shared_files_as_its_collector_reads_them(tmp_path):
    # In a fresh process: multiprocess mode is chosen when prometheus_client is imported.
    script = """
import json
from prometheus_client import CollectorRegistry, multiprocess
from hello.protocol import RequestMetrics
metrics = RequestMetrics(("/", "other"), (0.001, 0.1))
for _ in range(3):
    metrics.observe("GET", "/", 200, 0.0005)
metrics.observe("GET", "other", 404, 0.05)
for index in range(1000):  # enough new series to make prometheus_client grow its file and map it anew
    metrics.observe("GET", "/", 1000 + index, 0.5)
metrics.observe("GET", "/", 200, 0.5)  # a series from before the growth, through its old map
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
samples = [sample for metric in registry.collect() for sample in metric.samples]
print(json.dumps({s.name + json.dumps(s.labels, sort_keys=True): s.value for s in samples}))
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run([PYTHON, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    samples = json.loads(result.stdout)

    def sample(name: str, **labels: str) -> float:
        return samples[name + json.dumps(labels, sort_keys=True)]

    assert max(path.stat().st_size for path in tmp_path.glob("counter_*.db")) > 65536, "the file did not grow"
    assert sample("hello_world_requests_total", method="GET", path="/", code="200") == 4
    assert sample("hello_world_requests_total", method="GET", path="/", code="1999") == 1  # after the growth
    assert sample("hello_world_requests_total", method="GET", path="other", code="404") == 1
    assert sample("hello_world_request_duration_seconds_bucket", path="/", le="0.001") == 3
    assert sample("hello_world_request_duration_seconds_bucket", path="/", le="+Inf") == 1004
    assert sample("hello_world_request_duration_seconds_count", path="/") == 1004
    assert sample("hello_world_request_duration_seconds_sum", path="/") == pytest.approx(3 * 0.0005 + 1001 * 0.5)
    assert sample("hello_world_request_duration_seconds_bucket", path="other", le="0.1") == 1
