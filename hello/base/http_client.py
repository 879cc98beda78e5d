"""The kit's own small HTTP client: a GET with a timeout, for probes of its own services."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_get(url: str, timeout: float, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP error statuses are returned, network errors raise OSError."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
