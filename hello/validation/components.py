"""What the checks talk to and share: one Endpoint per HTTP component (a component that is down fails every later
call at once, naming it), Prometheus's API, metrics text, and the run's Context (config, endpoints, values computed
once)."""

from __future__ import annotations

import base64
import json
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hello.base import monitor_login, promtext
from hello.base.config import served_url
from hello.validation.core import FIX_GRAFANA, FIX_MONITOR, FIX_SERVER, CheckFailed, CheckSkipped

log = logging.getLogger("validation")


def _reason(exc: BaseException, timeout: float) -> str:
    """A short human reason for a failed connection."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, ConnectionError):
        return exc.strerror or type(exc).__name__
    return str(getattr(exc, "reason", None) or exc) or type(exc).__name__


@dataclass
class Endpoint:
    """One HTTP component. After it fails to answer once, later calls fail at once with the same reason."""

    name: str
    base: str
    timeout: float
    headers: dict[str, str] = field(default_factory=dict)
    down: str | None = None
    fix: str = ""  # what to run or set when it does not answer

    def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes, str]:
        """(status, body, content type) of GET base+path; HTTP error statuses are returned, not raised."""
        if self.down:
            raise CheckFailed(self.down, self.fix)
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        request = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")
        except (OSError, ValueError) as exc:  # URLError, refused, timeout, reset, bad URL
            self.down = f"{self.name} at {self.base} unreachable: {_reason(exc, self.timeout)}"
            raise CheckFailed(self.down, self.fix) from None

    def ok(self, path: str, params: dict[str, str] | None = None) -> bytes:
        """The body of a 200 answer; any other status fails the check, naming it."""
        status, body, _ = self.get(path, params)
        if status != 200:
            text = body.decode("utf-8", "replace").strip().splitlines()
            answer = f"{self.name} {path} answered {status}" + (f": {text[0][:200]}" if text else "")
            raise CheckFailed(answer, self.fix)
        return body

    def json(self, path: str, params: dict[str, str] | None = None) -> Any:
        body = self.ok(path, params)
        try:
            return json.loads(body)
        except ValueError:
            raise CheckFailed(f"{self.name} {path} answered with invalid JSON") from None


def prometheus_api(prom: Endpoint, path: str, params: dict[str, str] | None = None) -> Any:
    """The `data` of a Prometheus HTTP API answer; an error answer fails the check with Prometheus's reason."""
    status, body, _ = prom.get(path, params)
    try:
        answer = json.loads(body)
    except ValueError:
        raise CheckFailed(f"{prom.name} {path} answered {status} without JSON (is {prom.base} Prometheus?)") from None
    if answer.get("status") != "success":
        raise CheckFailed(f"{prom.name} {path}: {answer.get('errorType', status)}: {answer.get('error', '')}")
    return answer.get("data")


def _url_with_auth(url: str, name: str, timeout: float) -> Endpoint:
    """An Endpoint; user:password@ in the URL becomes basic auth (Grafana without anonymous access)."""
    parts = urllib.parse.urlsplit(url)
    headers: dict[str, str] = {}
    if parts.username:
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return Endpoint(name, urllib.parse.urlunsplit(parts).rstrip("/"), timeout, headers)


# --- exposition text ------------------------------------------------------------------------------


def metric_values(text: str, name: str, labels: dict[str, str] | None = None) -> list[float]:
    """Values of the samples called name whose labels include `labels`; CheckFailed when the text is unreadable."""
    try:
        return promtext.values(text, name, labels)
    except ValueError as exc:
        raise CheckFailed(f"unreadable metrics text: {exc}") from None


def sample_names(text: str) -> set[str]:
    try:
        return promtext.names(text)
    except ValueError as exc:
        raise CheckFailed(f"unreadable metrics text: {exc}") from None


# --- the run context and the check registry -------------------------------------------------------


def _monitor_login(config: dict[str, Any]) -> dict[str, str]:
    """Alertmanager's and the Pushgateway's login (hello/base/monitor_login.py); a bad password file: none, warned."""
    try:
        return monitor_login.auth_headers(config)
    except monitor_login.AuthError as exc:
        log.warning("%s", exc)
        return {}


class Context:
    """What the checks share: the config, one Endpoint per component, and values computed once."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.timeout = float(config["validation"]["timeout"])
        monitoring = config["monitoring"]
        self.server = Endpoint("hello-world server", served_url(config), self.timeout, fix=FIX_SERVER)
        prom, push, grafana = (monitoring[key]["url"] for key in ("prometheus", "pushgateway", "grafana"))
        self.prometheus = Endpoint("Prometheus", prom, self.timeout, fix=FIX_MONITOR) if prom else None
        self.auth = _monitor_login(config)
        self.pushgateway = Endpoint("Pushgateway", push, self.timeout, self.auth, fix=FIX_MONITOR) if push else None
        self.grafana = _url_with_auth(grafana, "Grafana", self.timeout) if grafana else None
        if self.grafana:
            self.grafana.fix = FIX_GRAFANA
        self.scrape_interval = float(monitoring["prometheus"]["scrape_interval"])
        self.run_dir = Path(config["run_dir"])
        self._cache: dict[str, Any] = {}

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """compute() the first time; later calls give the same value or re-raise the same failure."""
        if key not in self._cache:
            try:
                self._cache[key] = ("value", compute())
            except (CheckFailed, CheckSkipped) as exc:
                self._cache[key] = ("error", exc)
        kind, value = self._cache[key]
        if kind == "error":
            raise value
        return value

    def need_prometheus(self) -> Endpoint:
        if self.prometheus is None:
            raise CheckSkipped("system.monitoring.prometheus.url is null")
        return self.prometheus
