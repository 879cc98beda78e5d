"""Load and check config.yaml, the one configuration file of Python Hello Printer.

Every script reads its settings through `load_config()`, which returns the
`system` mapping with every key present: the file's values, checked and
normalised, and the defaults below for what the file leaves out.

    from hello.config import load_config, ConfigError
    config = load_config()            # HELLO_CONFIG=path selects another file
    config["server"]["port"]          # 8000

A file that cannot be used raises ConfigError with one line naming the file,
the key path and what was expected (files over MAX_CONFIG_BYTES, and YAML whose
aliases expand past MAX_YAML_VALUES, are refused before anything is built), e.g.

    config.yaml: system.backup.time: expected HH:MM, got '25:00'

Scripts print that line and exit with EXIT_CONFIG (2) before doing anything.
Relative paths (backup source and destination, run_dir) are resolved against
the directory that holds the config file.

Run `python -m hello.config [PATH]` to check a file and print it normalised.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import reprlib
import sys
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

if not __package__:  # run as a file (python hello/config.py): the package beside it must still import
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hello.request_metrics import DURATION, LATENCY_BUCKETS  # noqa: E402

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "config.yaml"  # the checkout's own
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED = 0, 1, 2, 75
# Hostile or broken files are refused before they can cost time or memory (a YAML alias bomb of 496 bytes
# expands to billions of values): the shipped file is about 2 KiB and 90 values.
MAX_CONFIG_BYTES = 64 << 10
MAX_YAML_VALUES = 10_000  # scalars, lists and mappings, every alias counted as what it stands for
# Names of files that hold secrets (fnmatch, any depth): the default of system.backup.exclude_secrets.
SECRET_FILE_PATTERNS = (
    ".env",
    "*.env",
    ".env.local",
    ".netrc",
    ".pgpass",
    ".htpasswd",
    "*.key",
    "*.pem",
    "id_rsa",
    "id_ecdsa",
    "id_ed25519",
    "rclone.conf",
)


class ConfigError(Exception):
    """A configuration that cannot be used; str() is the one-line message."""


class _Invalid(ValueError):
    """A value that does not fit its key; the message says what was expected."""


# --- checkers: each takes the raw YAML value and returns the normalised one ---

_DURATION_RE = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w))+$")
_DURATION_PART_RE = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_SHOWN = reprlib.Repr()
_NUMBER_RE = re.compile(r"-?\d+(\.\d+)?")
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlevel = 120, 120, 2  # a bounded line, whatever the value


def _got(value: Any) -> str:
    if isinstance(value, bool):
        return f"got {str(value).lower()}"
    if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
        return f"got the string {_SHOWN.repr(value)} (a number in quotes: write it without the quotes)"
    return f"got {_SHOWN.repr(value)}"


def parse_duration(value: Any) -> float:
    """Seconds from a Prometheus-style duration ('15s', '1h30m', '500ms') or a plain number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and _NUMBER_RE.fullmatch(value) and not value.startswith("-"):
        return float(value)  # "30": plain seconds, as a number may be
    if isinstance(value, str) and _DURATION_RE.match(value):
        return float(sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART_RE.findall(value)))
    raise _Invalid(f"expected a duration such as 15s, 5m or 1h30m, {_got(value)}")


_SIZE_RE = re.compile(r"^(\d+)(B|KiB|MiB|GiB)?$")
_UNIT_BYTES = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_size(value: Any) -> int:
    """Bytes from a size such as 10MiB, 512KiB or a plain number of bytes."""
    match = _SIZE_RE.match(str(value)) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    if not match:
        raise _Invalid(f"expected a size such as 10MiB, 512KiB or a number of bytes, {_got(value)}")
    return int(match.group(1)) * _UNIT_BYTES[match.group(2) or "B"]


def parse_time_of_day(value: Any) -> str:
    """'HH:MM' from a string, or from the integer YAML 1.1 makes of an unquoted 23:30 (1410)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        hours, minutes = divmod(value, 60)  # YAML 1.1 sexagesimal: 23:30 -> 23 * 60 + 30
        shown = f"{hours:02d}:{minutes:02d}"
    elif isinstance(value, str) and re.fullmatch(r"\d{1,2}:\d{2}", value):
        hours, minutes = (int(part) for part in value.split(":"))
        shown = value
    else:
        raise _Invalid(f"expected HH:MM, {_got(value)}")
    if hours > 23 or minutes > 59:
        raise _Invalid(f"expected HH:MM, got {shown!r}")
    return f"{hours:02d}:{minutes:02d}"


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"expected a non-empty string, {_got(value)}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, {_got(value)}")
    return value


def _int_at_least(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise _Invalid(f"expected a whole number {span}, {_got(value)}")
        return value

    return check


_port = _int_at_least(1, 65535)


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise _Invalid(f"expected a number above 0, {_got(value)}")
    return float(value)


def _objective_percent(value: Any) -> float:
    """An SLO objective: a percentage below 100 (100 % leaves no error budget to burn)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 100:
        raise _Invalid(f"expected a percentage above 0 and below 100 (e.g. 99.9), {_got(value)}")
    return float(value)


def _latency_bucket(value: Any) -> float:
    """An SLO latency threshold (100ms, or seconds as a number): one of the request histogram's buckets."""
    try:
        seconds = parse_duration(value)
    except _Invalid:
        seconds = None
    for bound in LATENCY_BUCKETS:
        if seconds is not None and abs(seconds - bound) < 1e-9:
            return bound  # the histogram's own float, as its le label shows it
    shown = ", ".join(f"{bound * 1000:g}ms" for bound in LATENCY_BUCKETS)
    raise _Invalid(f"expected a bucket boundary of {DURATION} ({shown}), {_got(value)}")


def _url_or_null(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise _Invalid(f"expected an http:// or https:// URL or null, {_got(value)}")
    return value.rstrip("/")


def _string_or_null(value: Any) -> str | None:
    return None if value is None else _string(value)


def _one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}, {_got(value)}")
        return value

    return check


def _timezone(value: Any) -> str | None:
    if value is None:
        return None
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise _Invalid(f"expected an IANA time zone such as Europe/Berlin, or null, {_got(value)}") from None
    return value


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise _Invalid(f"expected a list of names, {_got(value)}")
    return list(value)


def _interval_or_null(value: Any) -> float | None:
    """A period cron can express: whole minutes dividing an hour, or whole hours dividing a day."""
    if value is None:
        return None
    seconds = parse_duration(value)
    minutes = seconds / 60
    if not (
        minutes.is_integer()
        and minutes > 0
        and (60 % minutes == 0 or (minutes % 60 == 0 and 24 % (minutes // 60) == 0))
    ):
        cron_can_run = "1m to 60m dividing an hour, or 1h to 24h dividing a day"
        raise _Invalid(f"expected an interval cron can run ({cron_can_run}) or null, {_got(value)}")
    return seconds


def _user_or_null(value: Any) -> str | None:
    """A Unix account name for systemd's User= (never root: the service needs no privileges), or null."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value) or value == "root":
        raise _Invalid(f"expected a non-root user name such as hello, or null, {_got(value)}")
    return value


def _path(value: Any) -> str:
    """A path; load_config resolves it against the config file's folder."""
    return _string(value)


def _path_or_null(value: Any) -> str | None:
    """A path or null; load_config resolves a path against the config file's folder."""
    return None if value is None else _path(value)


def _email_or_null(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[^@\s,]+@[^@\s,]+", value):
        raise _Invalid(f"expected an e-mail address such as ops@example.com, or null, {_got(value)}")
    return value


def _host_port_or_null(value: Any) -> str | None:
    if value is None:
        return None
    match = re.fullmatch(r"([^\s:/]+|\[[0-9a-fA-F:]+\]):(\d{1,5})", value) if isinstance(value, str) else None
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise _Invalid(f"expected host:port such as smtp.example.com:587, or null, {_got(value)}")
    return value


def _remote_or_null(value: Any) -> str | None:
    """An rclone remote path (name:folder) or an absolute local path (a second disk), or null."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[\w.-][\w. -]*:\S*|/\S*", value):
        raise _Invalid(
            f"expected an rclone remote path such as offsite:hello-backups, an absolute path, or null, {_got(value)}"
        )
    return value


def _immutable_or_null(value: Any) -> dict[str, int] | None:
    """null, or {retention_days: N}: the remote is an object-locked bucket whose default retention is N days."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"retention_days"}:
        raise _Invalid(
            f"expected null or {{retention_days: N}} (the bucket's default Object Lock retention), {_got(value)}"
        )
    try:
        return {"retention_days": _int_at_least(1, 36500)(value["retention_days"])}
    except _Invalid as exc:
        raise _Invalid(f"retention_days: {exc}") from None


IMMUTABLE_MARGIN_DAYS = 7  # beyond the longest kept period: a late or missed run never leaves a kept copy unlocked


def longest_kept_days(keep: dict[str, int]) -> int:
    """The age in days of the oldest archive system.backup.keep keeps (daily backups; a month counted as 31 days)."""
    return max(keep["daily"], 7 * keep["weekly"], 31 * keep["monthly"])


def _check_immutable(system: dict[str, Any]) -> None:
    """An immutable remote's retention must outlast every copy retention keeps, or the oldest kept ones are unlocked."""
    backup = system["backup"]
    immutable = backup["offsite"]["immutable"]
    if immutable is None:
        return
    if backup["offsite"]["remote"] is None:
        raise _KeyError("system.backup.offsite.immutable", "set, but system.backup.offsite.remote is null")
    needed = longest_kept_days(backup["keep"]) + IMMUTABLE_MARGIN_DAYS
    if immutable["retention_days"] < needed:
        raise _KeyError(
            "system.backup.offsite.immutable.retention_days",
            f"{immutable['retention_days']} days is shorter than the longest kept period of system.backup.keep "
            f"({needed - IMMUTABLE_MARGIN_DAYS} days) plus a margin of {IMMUTABLE_MARGIN_DAYS}: "
            f"set it (and the bucket's default retention) to at least {needed}",
        )


def _address_or_null(value: Any) -> str | None:
    """host:port to listen on or connect to (the vault's SFTP), or null."""
    try:
        return _host_port_or_null(value)
    except _Invalid:
        raise _Invalid(f"expected host:port such as 10.0.0.5:2222, or null, {_got(value)}") from None


KEEP_RULES = ("last", "daily", "weekly", "monthly")


def _keep_or_null(value: Any) -> dict[str, int] | None:
    """null, or a retention like system.backup.keep (rules left out: production's)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= set(KEEP_RULES):
        raise _Invalid(f"expected null or a mapping of {', '.join(KEEP_RULES)} (as system.backup.keep), {_got(value)}")
    checked = {}
    for rule, count in value.items():
        try:
            checked[rule] = _int_at_least(0)(count)
        except _Invalid as exc:
            raise _Invalid(f"{rule}: {exc}") from None
    return checked


def _check_vault(system: dict[str, Any]) -> None:
    """The vault keeps every copy production keeps (rule by rule, at least as many): a copy it pruned while
    production still holds it would be pulled back at the next run. Rules left out are production's."""
    backup = system["backup"]
    keep = {**backup["keep"], **(backup["vault"]["keep"] or {})}
    for rule in KEEP_RULES:
        if keep[rule] < backup["keep"][rule]:
            raise _KeyError(
                f"system.backup.vault.keep.{rule}",
                f"{keep[rule]} is shorter than production's system.backup.keep.{rule} ({backup['keep'][rule]}): "
                f"the vault would delete copies production still keeps; set it to at least {backup['keep'][rule]}",
            )


def _command_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise _Invalid(f"expected a list of shell commands, {_got(value)}")
    return list(value)


# --- the schema: key -> (checker, default), or key -> nested schema ---

Schema = dict[str, Any]

SCHEMA: Schema = {
    "system": {
        "run_dir": (_path, "run"),  # pidfile, logs, locks, metric textfiles (git-ignored)
        "server": {
            "host": (_string, "127.0.0.1"),
            "port": (_port, 8000),
            "workers": (_int_at_least(1, 64), 1),
            "access_log": (_bool, False),
            "keep_alive_timeout": (parse_duration, "5s"),
            "header_timeout": (parse_duration, "10s"),
            "drain_timeout": (parse_duration, "10s"),
            "reload_timeout": (parse_duration, "30s"),
            "body_timeout": (parse_duration, "10s"),  # longest wait between two reads of a request body
            "write_timeout": (parse_duration, "30s"),  # answers left unread this long: the connection is dropped
            "max_header_count": (_int_at_least(1, 10000), 100),  # headers in one request, else 431
            "log_max_size": (parse_size, "10MiB"),  # background log: rotated past this; 0: never (logrotate)
            "log_keep": (_int_at_least(1, 1000), 5),  # rotated logs kept: hello_world.log.1 ... .N
            "user": (_user_or_null, None),  # systemd units run as this user (make systemd); null: root
        },
        "monitoring": {
            "prometheus": {
                "scrape_interval": (parse_duration, "15s"),
                "url": (_url_or_null, "http://127.0.0.1:9090"),
            },
            "grafana": {
                "dashboard": (_string, "hello-world-dashboard"),
                "url": (_url_or_null, None),
            },
            "pushgateway": {
                "url": (_url_or_null, "http://127.0.0.1:9091"),
            },
            # Alert delivery (hello/alerting.py renders Alertmanager's config from these; README "Alerts").
            "alertmanager": {
                "url": (_url_or_null, "http://127.0.0.1:9093"),  # null: no alert delivery
                "receivers": {
                    "webhook_url": (_url_or_null, None),  # env HELLO_ALERT_WEBHOOK_URL overrides
                    "email": {
                        "to": (_email_or_null, None),
                        "from": (_email_or_null, None),
                        "smarthost": (_host_port_or_null, None),  # host:port of the SMTP server
                        "username": (_string_or_null, None),  # password: env HELLO_SMTP_PASSWORD
                        "require_tls": (_bool, True),  # STARTTLS before sending
                    },
                },
                "heartbeat_url": (_url_or_null, None),  # the always-firing Watchdog pings it
                "secrets_file": (_path_or_null, None),  # NAME=value lines, as .env; the environment wins
                "timing": {
                    "critical_wait": (parse_duration, "10s"),  # critical alerts: sent this soon
                    "group_wait": (parse_duration, "1m"),  # warnings: collected this long into one message
                    "group_interval": (parse_duration, "5m"),  # changes to a notified group: sent this often
                    "critical_repeat": (parse_duration, "4h"),  # a still-firing critical alert: repeated
                    "warning_repeat": (parse_duration, "24h"),
                    "heartbeat_interval": (parse_duration, "5m"),  # the Watchdog's ping period
                },
            },
            "node_exporter": {
                "url": (_url_or_null, "http://127.0.0.1:9100"),  # null: no host metrics
            },
        },
        "backup": {
            "schedule": (_one_of("daily"), "daily"),
            "time": (parse_time_of_day, "02:00"),
            "timezone": (_timezone, None),
            "source": (_path, "."),
            "destination": (_path, "backups"),
            "exclude": (
                _string_list,
                [".git", ".venv", "__pycache__", "backups", "run", "vault", ".pytest_cache", ".ruff_cache"],
            ),
            # Secret files are left out of every archive (and so of every off-host copy) unless the operator
            # sets this to [] (README "Archive format"); apart from `exclude` so that a custom exclude keeps them out.
            "exclude_secrets": (_string_list, list(SECRET_FILE_PATTERNS)),
            "keep": {
                "last": (_int_at_least(0), 3),  # the newest N, whatever their bucket (restic's --keep-last)
                "daily": (_int_at_least(0), 7),
                "weekly": (_int_at_least(0), 4),
                "monthly": (_int_at_least(0), 6),
            },
            "offsite": {
                "remote": (_remote_or_null, None),  # null: local archives only
                "rclone_config": (_path_or_null, None),  # null: rclone's default config file
                "immutable": (_immutable_or_null, None),  # an object-locked bucket: {retention_days: N}; no prune
            },
            "hooks": {
                "before": (_command_list, []),  # their $HELLO_BACKUP_STAGING goes into the archive
            },
            # A second host pulls the archives over read-only SFTP (hello/vault_serve.py, hello/vault_pull.py).
            "vault": {
                "listen": (_address_or_null, None),  # production: serve-vault listens here; null: not served
                "authorized_keys": (_path_or_null, None),  # production: the vault's public key(s)
                "pull_from": (_address_or_null, None),  # vault: production's serve-vault; null: no pull
                "identity": (_path_or_null, None),  # vault: its private SSH key
                "known_hosts": (_path_or_null, None),  # vault: pins production's host key
                "store": (_path, "vault"),  # vault: where the pulled copies live
                "keep": (_keep_or_null, None),  # vault: its retention; null: system.backup.keep; never shorter
                "interval": (_interval_or_null, "1h"),  # vault: how often cron and systemd pull
                "drill": (_bool, True),  # vault: the restore drill on the newest copy after a pull that brought one
            },
        },
        "update": {
            "protocol": (_string, "update_protocol.py"),
            "remote": (_string, "origin"),
            "branch": (_string, "main"),
            "test_command": (_string, "make test-fast"),
            "deploy": (_one_of("local", "compose", "kubernetes"), "local"),
            "interval": (_interval_or_null, None),  # null: no periodic update in `make cron`
            "backup_first": (_bool, True),  # a backup after the tests pass, before the deploy
            "watch": (parse_duration, "30s"),  # after verify: the new code's /metrics judged (hello/watch.py); 0: off
            "max_error_ratio": (_positive_number, 0.01),  # 5xx share of the new code's answers above this: rollback
            "min_requests": (_int_at_least(1), 100),  # answers by the new code before it is judged
            "max_latency_ratio": (_positive_number, 2.0),  # p99 above this times the p99 before: rollback
            "hooks": {  # shell lines run in the new release's folder (hello/hooks.py)
                "before_deploy": (_command_list, []),  # one fails: nothing deployed
                "after_deploy": (_command_list, []),  # one fails: rolled back
            },
            "test_user": (_string_or_null, "nobody"),  # run as root: the tests run as this user; null: as root
            "verify_signatures": (_path_or_null, None),  # an allowed-signers file: unsigned commits refused
        },
        "kubernetes": {  # deploy/kubernetes and system.update.deploy: kubernetes (hello/deploy_kubernetes.py)
            "registry": (_string_or_null, None),  # images go to <registry>/hello-world:<commit>; needed to deploy
            "context": (_string_or_null, None),  # kubectl --context; null: kubectl's current context
            "namespace": (_string, "hello-world"),
            "rollout_timeout": (parse_duration, "5m"),
            "pushgateway_url": (_url_or_null, "http://pushgateway.monitoring.svc:9091"),  # the validation CronJob's
        },
        "slo": {  # hello/slo.py generates monitoring/rules/hello_world_slo.rules.yml from these
            "availability": (_objective_percent, 99.9),  # % of user requests answered without a 5xx, over 30 days
            "latency": {
                "threshold": (_latency_bucket, "100ms"),
                "objective": (_objective_percent, 99.0),  # % of user requests answered within threshold
            },
            "min_requests_per_hour": (_int_at_least(1), 1000),  # fewer user requests in the last hour: no page
        },
        "validation": {
            "timeout": (parse_duration, "5s"),  # every network wait of validation_test.py
            "interval": (_interval_or_null, "15m"),  # how often `make cron` runs it; null: never
        },
    }
}


def _check(raw: Any, schema: Schema, key_path: str, base_dir: Path) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _KeyError(key_path, f"expected a mapping of keys, {_got(raw)}")
    for key in raw:
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(schema)
            raise _KeyError(_join(key_path, str(key)), f"unknown key{hint}; known keys here: {known}")
    result: dict[str, Any] = {}
    for key, spec in schema.items():
        where = _join(key_path, key)
        if isinstance(spec, dict):
            result[key] = _check(raw.get(key), spec, where, base_dir)
            continue
        checker, default = spec
        try:
            value = checker(raw.get(key, default))
        except _Invalid as exc:
            raise _KeyError(where, str(exc)) from None
        if checker in (_path, _path_or_null) and value is not None:
            value = str((base_dir / value).resolve())
        result[key] = value
    return result


class _KeyError(Exception):
    def __init__(self, key_path: str, message: str) -> None:
        super().__init__(f"{key_path}: {message}")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _shown(path: Path) -> str:
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


class _Unbounded(Exception):
    """YAML whose aliases expand too far, or into themselves."""


def _expanded_values(root: yaml.Node) -> int:
    """How many values root stands for once every alias is expanded; raise _Unbounded past MAX_YAML_VALUES.

    Aliases share nodes, so the count is memoised per node (linear in the file, whatever it expands to);
    an alias inside its own anchor (a recursive structure) is refused too.
    """
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = [] if isinstance(node, yaml.ScalarNode) else node.value
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in children for part in pair]
        if children_done:
            ancestors.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise _Unbounded(f"more than {MAX_YAML_VALUES} YAML values, aliases expanded (an alias bomb?)")
            continue
        if id(node) in sizes:
            continue
        ancestors.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in ancestors:
                raise _Unbounded("a YAML alias refers to the value that contains it")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _load(loader_class: type, text: str) -> Any:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_values(node)  # before anything is built
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _parse_yaml(text: str) -> Any:
    """yaml.safe_load, with the expansion of aliases bounded (_expanded_values).

    Written against PyYAML 6.0 (with its bundled libyaml). libyaml parses first when present: it is fast and
    refuses flow nesting deeper than 1000 levels, which PyYAML's pure-Python scanner takes quadratic time over.
    Its other errors are left to the pure-Python parser, whose messages the docs and tests quote.
    """
    if getattr(yaml, "__with_libyaml__", False):
        try:
            return _load(yaml.CSafeLoader, text)
        except yaml.YAMLError as exc:
            if "maximum nesting depth" in str(exc):
                raise
    return _load(yaml.SafeLoader, text)


def config_path() -> Path:
    """The file to read: HELLO_CONFIG when set, else config.yaml beside this module."""
    chosen = os.environ.get("HELLO_CONFIG")
    return Path(chosen) if chosen else DEFAULT_PATH


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The checked `system` mapping of the file at path (default: config_path())."""
    path = Path(path) if path is not None else config_path()
    shown = _shown(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # never more: HELLO_CONFIG may name /dev/zero
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{shown}: larger than {MAX_CONFIG_BYTES >> 10} KiB; a config file is a few KiB")
        text = data.decode("utf-8")
    except FileNotFoundError:
        via = " (named by HELLO_CONFIG)" if os.environ.get("HELLO_CONFIG") else ""
        raise ConfigError(f"{shown}: no such config file{via}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read: {exc}") from None
    try:
        raw = _parse_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else shown
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{shown}: invalid YAML: nested too deeply") from None
    except _Unbounded as exc:
        raise ConfigError(f"{shown}: {exc}") from None
    try:
        checked = _check(raw, SCHEMA, "", path.resolve().parent)
        _check_immutable(checked["system"])
        _check_vault(checked["system"])
    except _KeyError as exc:
        raise ConfigError(f"{shown}: {exc}") from None
    system = checked["system"]
    system["config_file"] = str(path.resolve())
    return system


def server_url(config: dict[str, Any]) -> str:
    """The base URL of the server config.yaml describes; 0.0.0.0 and :: are reached on loopback."""
    host, port = config["server"]["host"], config["server"]["port"]
    shown = (
        "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
    )
    return f"http://{shown}:{port}"


def add_server_flags(parser: argparse.ArgumentParser, when: str = "") -> None:
    """--host, --port, --workers: the flags that override system.server (applied by apply_server_flags)."""
    parser.add_argument("--host", help=f"{when}address to listen on (system.server.host)")
    parser.add_argument("--port", type=int, help=f"{when}port to listen on (system.server.port)")
    parser.add_argument("--workers", type=int, help=f"{when}worker processes (system.server.workers)")


def apply_server_flags(config: dict[str, Any], host: str | None, port: int | None, workers: int | None) -> dict:
    """Put --host, --port and --workers over system.server, checked like the file's values; return those given."""
    checks = {"host": _string, "port": _port, "workers": SCHEMA["system"]["server"]["workers"][0]}
    flags = {}
    for key, value in (("host", host), ("port", port), ("workers", workers)):
        if value is not None:
            try:
                flags[key] = checks[key](value)
            except _Invalid as exc:
                raise ConfigError(f"--{key}: {exc}") from None
    config["server"].update(flags)
    return flags


def served_url(config: dict[str, Any]) -> str:
    """The URL the running server answers on (its state file: it may run with another --port), else server_url."""
    return RunFiles(Path(config["run_dir"])).read_state().get("url") or server_url(config)


@dataclass(frozen=True)
class RunFiles:
    """The server's files in system.run_dir, shared by the server and the commands that control it."""

    run_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "hello_world.pid"  # the supervisor's PID

    @property
    def logfile(self) -> Path:
        return self.run_dir / "hello_world.log"  # background mode

    @property
    def statefile(self) -> Path:
        return self.run_dir / "hello_world.state.json"  # url, version, commit, last reload

    @property
    def multiproc(self) -> Path:
        return self.run_dir / "multiproc"  # prometheus_client's files of the workers

    def read_state(self) -> dict[str, Any]:
        """What the running server last wrote to its state file; {} when there is none."""
        try:
            return json.loads(self.statefile.read_text())
        except (OSError, ValueError):
            return {}

    def running_pid(self) -> int | None:
        """The server's PID from the pidfile, if that process is alive and is the server."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"hello_world.py" in cmdline else None


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every value of a checked config by its dotted key path."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        where = _join(prefix, key)
        flat.update(_leaves(value, where) if isinstance(value, dict) else {where: value})
    return flat


def differences_from_defaults(config: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key path: (value, default)} for every key the file sets to something else than its default."""
    base_dir = Path(config["config_file"]).parent
    defaults = _leaves(_check({}, SCHEMA["system"], "system", base_dir), "system")
    values = _leaves({k: v for k, v in config.items() if k != "config_file"}, "system")
    return {key: (value, defaults.get(key)) for key, value in values.items() if value != defaults.get(key)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hello.config", description="Check a config file (default: config.yaml or HELLO_CONFIG)."
    )
    parser.add_argument("path", nargs="?", help="the file to check")
    parser.add_argument("--json", action="store_true", help="print the normalised config as JSON")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(config, indent=2))
        return EXIT_OK
    changed = differences_from_defaults(config)
    print(f"{_shown(Path(config['config_file']))}: OK, {len(changed)} key(s) differ from the defaults")
    for key, (value, default) in changed.items():
        line = f"  {key}: {value!r} (default {default!r})"
        print(line if len(line) <= 120 else line[:117] + "...")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
