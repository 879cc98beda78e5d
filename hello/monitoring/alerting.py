"""Alert delivery: Alertmanager's config from system.monitoring.alertmanager, and the secrets it needs.

    from hello.monitoring.alerting import alertmanager_config, read_secrets, write_alertmanager_config

    secrets = read_secrets(system)                      # env first, then alertmanager.secrets_file
    config = alertmanager_config(system, secrets)       # a dict: yaml.safe_dump it
    path = write_alertmanager_config(system, directory) # <directory>/alertmanager.yml, mode 0600

Routing (README "Alerts"): the always-firing Watchdog goes to heartbeat_url every
timing.heartbeat_interval; `severity="critical"` is sent after timing.critical_wait and repeated
every timing.critical_repeat; everything else (warning, info) is grouped by alert name for
timing.group_wait and repeated every timing.warning_repeat. Both people-facing receivers
(webhook, e-mail) get resolved notifications too.

Secrets never sit in config.yaml: HELLO_ALERT_WEBHOOK_URL (a webhook URL holding a token) and
HELLO_SMTP_PASSWORD come from the environment, else from the NAME=value lines of
alertmanager.secrets_file. Alertmanager 0.25 (Debian bookworm) reads a webhook URL only inline,
so the rendered file holds them and is written with mode 0600 under run/ (git-ignored).
scripts/monitor.py renders it at `make monitor`; the compose stack mounts the same file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hello.base.files import write_atomically

WEBHOOK_ENV = "HELLO_ALERT_WEBHOOK_URL"
SMTP_PASSWORD_ENV = "HELLO_SMTP_PASSWORD"
NOTIFY_RECEIVER = "notify"  # the people: webhook and/or e-mail
HEARTBEAT_RECEIVER = "heartbeat"  # the dead man's switch
WATCHDOG = "Watchdog"
CONFIG_NAME = "alertmanager.yml"
_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


class AlertingConfigError(Exception):
    """The alerting settings cannot be used; str() is the one-line reason (exit 2)."""


@dataclass(frozen=True)
class Secrets:
    webhook_url: str | None
    smtp_password: str | None


def format_duration(seconds: float) -> str:
    """A Prometheus/Alertmanager duration: whole seconds as '15s', anything finer in milliseconds."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def read_secrets_file(path: Path) -> dict[str, str]:
    """NAME=value lines (as docker compose's .env: # comments, optional quotes) of path."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AlertingConfigError(
            f"system.monitoring.alertmanager.secrets_file: cannot read {path}: {exc.strerror}"
        ) from None
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE_RE.match(line)
        if not match:
            raise AlertingConfigError(f"{path}:{number}: expected NAME=value")
        value = match.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[match.group(1)] = value
    return values


def read_secrets(system: dict[str, Any], environ: dict[str, str] | None = None) -> Secrets:
    """The webhook URL and SMTP password: the environment first, then secrets_file, then the config's webhook_url."""
    environ = os.environ if environ is None else environ
    alertmanager = system["monitoring"]["alertmanager"]
    from_file = read_secrets_file(Path(alertmanager["secrets_file"])) if alertmanager["secrets_file"] else {}

    def secret(name: str) -> str | None:
        return environ.get(name) or from_file.get(name) or None

    webhook = secret(WEBHOOK_ENV) or alertmanager["receivers"]["webhook_url"]
    if webhook and not re.fullmatch(r"https?://\S+", webhook):
        raise AlertingConfigError(f"{WEBHOOK_ENV}: expected an http:// or https:// URL")
    return Secrets(webhook_url=webhook, smtp_password=secret(SMTP_PASSWORD_ENV))


def email_config(system: dict[str, Any], password: str | None) -> dict[str, Any] | None:
    """Alertmanager's email_configs entry, or None when no e-mail is configured."""
    email = system["monitoring"]["alertmanager"]["receivers"]["email"]
    needed = ("to", "from", "smarthost")
    given = [key for key in needed if email[key]]
    if not given and not email["username"]:
        return None
    missing = [key for key in needed if not email[key]]
    if missing:
        raise AlertingConfigError(
            f"system.monitoring.alertmanager.receivers.email.{missing[0]}: "
            f"needed when e-mail is configured (set {', '.join(needed)}, or none of them)"
        )
    entry: dict[str, Any] = {
        "to": email["to"],
        "from": email["from"],
        "smarthost": email["smarthost"],
        "require_tls": email["require_tls"],
        "send_resolved": True,
    }
    if email["username"]:
        if not password:
            raise AlertingConfigError(
                f"system.monitoring.alertmanager.receivers.email.username is set but {SMTP_PASSWORD_ENV} is not "
                "(set it in the environment or in secrets_file)"
            )
        entry["auth_username"] = email["username"]
        entry["auth_password"] = password
    return entry


def receivers(system: dict[str, Any], secrets: Secrets) -> list[dict[str, Any]]:
    """The notify receiver (may have no configs: nobody is told) and the heartbeat receiver."""
    notify: dict[str, Any] = {"name": NOTIFY_RECEIVER}
    if secrets.webhook_url:
        notify["webhook_configs"] = [{"url": secrets.webhook_url, "send_resolved": True}]
    email = email_config(system, secrets.smtp_password)
    if email:
        notify["email_configs"] = [email]
    heartbeat: dict[str, Any] = {"name": HEARTBEAT_RECEIVER}
    url = system["monitoring"]["alertmanager"]["heartbeat_url"]
    if url:
        heartbeat["webhook_configs"] = [{"url": url, "send_resolved": False}]
    return [notify, heartbeat]


def alertmanager_config(system: dict[str, Any], secrets: Secrets) -> dict[str, Any]:
    """Alertmanager's whole config, from system.monitoring.alertmanager and the secrets."""
    timing = system["monitoring"]["alertmanager"]["timing"]
    heartbeat = timing["heartbeat_interval"]
    return {
        "route": {
            "receiver": NOTIFY_RECEIVER,
            "group_by": ["alertname"],
            "group_wait": format_duration(timing["group_wait"]),
            "group_interval": format_duration(timing["group_interval"]),
            "repeat_interval": format_duration(timing["warning_repeat"]),
            "routes": [
                {
                    # The heartbeat wants a ping every interval: flush often, repeat at the interval.
                    "matchers": [f'alertname="{WATCHDOG}"'],
                    "receiver": HEARTBEAT_RECEIVER,
                    "group_wait": "0s",
                    "group_interval": format_duration(min(60.0, heartbeat)),
                    "repeat_interval": format_duration(heartbeat),
                },
                {
                    "matchers": ['severity="critical"'],
                    "receiver": NOTIFY_RECEIVER,
                    "group_wait": format_duration(timing["critical_wait"]),
                    "repeat_interval": format_duration(timing["critical_repeat"]),
                },
            ],
        },
        "receivers": receivers(system, secrets),
    }


def configured_receivers(config: dict[str, Any]) -> list[str]:
    """What the notify receiver of an Alertmanager config delivers to: 'webhook', 'email' (empty: nobody)."""
    for receiver in config.get("receivers") or []:
        if receiver.get("name") == NOTIFY_RECEIVER:
            return [
                kind.removesuffix("_configs") for kind in ("webhook_configs", "email_configs") if receiver.get(kind)
            ]
    return []


def render(system: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    config = alertmanager_config(system, read_secrets(system, environ))
    header = (
        f"# GENERATED by scripts/monitor.py from {system['config_file']} and the alerting secrets\n"
        "# (environment or secrets_file): do not edit, do not commit. Mode 0600: it may hold secrets.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def write_alertmanager_config(system: dict[str, Any], directory: Path, environ: dict[str, str] | None = None) -> Path:
    """Write <directory>/alertmanager.yml (mode 0600); return its path."""
    path = directory / CONFIG_NAME
    write_atomically(path, render(system, environ).encode(), mode=0o600)
    return path
