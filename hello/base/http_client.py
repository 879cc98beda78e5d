"""The kit's own small HTTP client: a request with a timeout, for probes of its own services (and the tests')."""

from __future__ import annotations

import urllib.error
import urllib.request
from email.message import Message


def http_request(
    url: str, timeout: float = 5.0, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, Message, bytes]:
    """(status, headers, body) of one request; HTTP error statuses are returned, network errors raise OSError."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def http_get(url: str, timeout: float, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP error statuses are returned, network errors raise OSError."""
    status, _, body = http_request(url, timeout, headers=headers)
    return status, body
