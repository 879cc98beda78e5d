"""The basic-auth login of Alertmanager and the Pushgateway: one generated password, kept in a 0600 file.

    headers = auth_headers(system)                  # the kit's own clients: {} when no password was made
    credentials = read_credentials(system)          # (user, password, path) or None

hello/monitoring/stack.py makes the password (ensure_credentials) and the servers' --web.config.file (a bcrypt hash).

Any local user can reach 127.0.0.1: without a login, one reads Alertmanager's rendered config (webhook tokens,
the heartbeat URL) from /api/v2/status, silences alerts, or pushes "success" for a failed backup. The password
lives in <run_dir>/monitor/monitor-password (0600, in 0700 folders); Prometheus reads it through
`basic_auth.password_file`, the kit's clients read it here; it is never on a command line.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

from hello.base import files

USER = "hello"
PASSWORD_NAME = "monitor-password"
WEB_CONFIG_NAME = "web-config.yml"


class Credentials(NamedTuple):
    user: str
    password: str
    path: Path  # the 0600 file that holds the password (Prometheus' password_file)


class AuthError(Exception):
    """The password file cannot be made or trusted; str() says which file and why."""


def monitor_dir(system: dict[str, Any]) -> Path:
    return Path(system["run_dir"]) / "monitor"


def password_path(system: dict[str, Any]) -> Path:
    return monitor_dir(system) / PASSWORD_NAME


def private_dir(path: Path) -> Path:
    """path (the monitor folder) ours and 0700, in a run_dir no one else can change (files.private_dir)."""
    try:
        return files.private_dir(files.private_dir(path.parent, readable=True) / path.name)
    except files.NotPrivate as exc:
        raise AuthError(f"{exc}; then run make monitor again") from None


def _read(path: Path) -> str | None:
    """The password in path, None when there is none; a file others could read or that is not ours is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthError(f"{path}: cannot read the monitoring password ({exc.strerror})") from None
    with open(fd, encoding="utf-8") as handle:
        info = os.fstat(handle.fileno())
        if stat.S_IMODE(info.st_mode) & 0o077 or info.st_uid != os.geteuid():
            raise AuthError(f"{path}: must be a 0600 file of uid {os.geteuid()}; remove it and run make monitor")
        return handle.read().strip() or None


def read_credentials(system: dict[str, Any]) -> Credentials | None:
    """The login `make monitor` made, None when it made none (a Pushgateway run by someone else: no auth)."""
    path = password_path(system)
    password = _read(path)
    return Credentials(USER, password, path) if password else None


def basic_auth_header(credentials: Credentials) -> dict[str, str]:
    token = base64.b64encode(f"{credentials.user}:{credentials.password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def auth_headers(system: dict[str, Any]) -> dict[str, str]:
    """The Authorization header for Alertmanager and the Pushgateway; {} when `make monitor` made no login."""
    credentials = read_credentials(system)
    return basic_auth_header(credentials) if credentials else {}
