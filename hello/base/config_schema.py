"""The schema of config.yaml: every key, its checker and its default, and the checks across keys.

    SCHEMA["system"]["server"]["port"]     # (checker, default): (_int_at_least(1, 65535), 8000)
    check_tree(raw, SCHEMA, "", base_dir)  # the normalised mapping; InvalidKey names the key path and what is wrong

A checker takes the raw YAML value and returns the normalised one, or raises InvalidValue saying what was expected.
hello/base/config.py reads the file (safely) and turns InvalidKey into ConfigError with the file's name.
"""

from __future__ import annotations

import difflib
import re
import reprlib
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hello.base.request_metrics import DURATION, LATENCY_BUCKETS

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


class InvalidValue(ValueError):
    """A value that does not fit its key; the message says what was expected."""


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
    raise InvalidValue(f"expected a duration such as 15s, 5m or 1h30m, {_got(value)}")


_SIZE_RE = re.compile(r"^(\d+)(B|KiB|MiB|GiB)?$")


_UNIT_BYTES = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_size(value: Any) -> int:
    """Bytes from a size such as 10MiB, 512KiB or a plain number of bytes."""
    match = _SIZE_RE.match(str(value)) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    if not match:
        raise InvalidValue(f"expected a size such as 10MiB, 512KiB or a number of bytes, {_got(value)}")
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
        raise InvalidValue(f"expected HH:MM, {_got(value)}")
    if hours > 23 or minutes > 59:
        raise InvalidValue(f"expected HH:MM, got {shown!r}")
    return f"{hours:02d}:{minutes:02d}"


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"expected a non-empty string, {_got(value)}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"expected true or false, {_got(value)}")
    return value


def _int_at_least(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise InvalidValue(f"expected a whole number {span}, {_got(value)}")
        return value

    return check


_port = _int_at_least(1, 65535)


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise InvalidValue(f"expected a number above 0, {_got(value)}")
    return float(value)


def _objective_percent(value: Any) -> float:
    """An SLO objective: a percentage below 100 (100 % leaves no error budget to burn)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 100:
        raise InvalidValue(f"expected a percentage above 0 and below 100 (e.g. 99.9), {_got(value)}")
    return float(value)


def _latency_bucket(value: Any) -> float:
    """An SLO latency threshold (100ms, or seconds as a number): one of the request histogram's buckets."""
    try:
        seconds = parse_duration(value)
    except InvalidValue:
        seconds = None
    for bound in LATENCY_BUCKETS:
        if seconds is not None and abs(seconds - bound) < 1e-9:
            return bound  # the histogram's own float, as its le label shows it
    shown = ", ".join(f"{bound * 1000:g}ms" for bound in LATENCY_BUCKETS)
    raise InvalidValue(f"expected a bucket boundary of {DURATION} ({shown}), {_got(value)}")


def _url_or_null(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise InvalidValue(f"expected an http:// or https:// URL or null, {_got(value)}")
    return value.rstrip("/")


def _string_or_null(value: Any) -> str | None:
    return None if value is None else _string(value)


def _one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise InvalidValue(f"expected one of {', '.join(choices)}, {_got(value)}")
        return value

    return check


def _timezone(value: Any) -> str | None:
    if value is None:
        return None
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidValue(f"expected an IANA time zone such as Europe/Berlin, or null, {_got(value)}") from None
    return value


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InvalidValue(f"expected a list of names, {_got(value)}")
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
        raise InvalidValue(f"expected an interval cron can run ({cron_can_run}) or null, {_got(value)}")
    return seconds


def _user_or_null(value: Any) -> str | None:
    """A Unix account name for systemd's User= (never root: the service needs no privileges), or null."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value) or value == "root":
        raise InvalidValue(f"expected a non-root user name such as hello, or null, {_got(value)}")
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
        raise InvalidValue(f"expected an e-mail address such as ops@example.com, or null, {_got(value)}")
    return value


def _host_port_or_null(value: Any) -> str | None:
    if value is None:
        return None
    match = re.fullmatch(r"([^\s:/]+|\[[0-9a-fA-F:]+\]):(\d{1,5})", value) if isinstance(value, str) else None
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise InvalidValue(f"expected host:port such as smtp.example.com:587, or null, {_got(value)}")
    return value


def _remote_or_null(value: Any) -> str | None:
    """An rclone remote path (name:folder) or an absolute local path (a second disk), or null."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[\w.-][\w. -]*:\S*|/\S*", value):
        raise InvalidValue(
            f"expected an rclone remote path such as offsite:hello-backups, an absolute path, or null, {_got(value)}"
        )
    return value


def _immutable_or_null(value: Any) -> dict[str, int] | None:
    """null, or {retention_days: N}: the remote is an object-locked bucket whose default retention is N days."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"retention_days"}:
        raise InvalidValue(
            f"expected null or {{retention_days: N}} (the bucket's default Object Lock retention), {_got(value)}"
        )
    try:
        return {"retention_days": _int_at_least(1, 36500)(value["retention_days"])}
    except InvalidValue as exc:
        raise InvalidValue(f"retention_days: {exc}") from None


IMMUTABLE_MARGIN_DAYS = 7  # beyond the longest kept period: a late or missed run never leaves a kept copy unlocked


def longest_kept_days(keep: dict[str, int]) -> int:
    """The age in days of the oldest archive system.backup.keep keeps (daily backups; a month counted as 31 days)."""
    return max(keep["daily"], 7 * keep["weekly"], 31 * keep["monthly"])


def check_across_keys(system: dict[str, Any]) -> None:
    """The rules that tie one key to another; InvalidKey names the key to change."""
    _check_immutable(system)
    _check_vault(system)


def _check_immutable(system: dict[str, Any]) -> None:
    """An immutable remote's retention must outlast every copy retention keeps, or the oldest kept ones are unlocked."""
    backup = system["backup"]
    immutable = backup["offsite"]["immutable"]
    if immutable is None:
        return
    if backup["offsite"]["remote"] is None:
        raise InvalidKey("system.backup.offsite.immutable", "set, but system.backup.offsite.remote is null")
    needed = longest_kept_days(backup["keep"]) + IMMUTABLE_MARGIN_DAYS
    if immutable["retention_days"] < needed:
        raise InvalidKey(
            "system.backup.offsite.immutable.retention_days",
            f"{immutable['retention_days']} days is shorter than the longest kept period of system.backup.keep "
            f"({needed - IMMUTABLE_MARGIN_DAYS} days) plus a margin of {IMMUTABLE_MARGIN_DAYS}: "
            f"set it (and the bucket's default retention) to at least {needed}",
        )


def _address_or_null(value: Any) -> str | None:
    """host:port to listen on or connect to (the vault's SFTP), or null."""
    try:
        return _host_port_or_null(value)
    except InvalidValue:
        raise InvalidValue(f"expected host:port such as 10.0.0.5:2222, or null, {_got(value)}") from None


KEEP_RULES = ("last", "daily", "weekly", "monthly")


def _keep_or_null(value: Any) -> dict[str, int] | None:
    """null, or a retention like system.backup.keep (rules left out: production's)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= set(KEEP_RULES):
        raise InvalidValue(
            f"expected null or a mapping of {', '.join(KEEP_RULES)} (as system.backup.keep), {_got(value)}"
        )
    checked = {}
    for rule, count in value.items():
        try:
            checked[rule] = _int_at_least(0)(count)
        except InvalidValue as exc:
            raise InvalidValue(f"{rule}: {exc}") from None
    return checked


def _check_vault(system: dict[str, Any]) -> None:
    """The vault keeps every copy production keeps (rule by rule, at least as many): a copy it pruned while
    production still holds it would be pulled back at the next run. Rules left out are production's."""
    backup = system["backup"]
    keep = {**backup["keep"], **(backup["vault"]["keep"] or {})}
    for rule in KEEP_RULES:
        if keep[rule] < backup["keep"][rule]:
            raise InvalidKey(
                f"system.backup.vault.keep.{rule}",
                f"{keep[rule]} is shorter than production's system.backup.keep.{rule} ({backup['keep'][rule]}): "
                f"the vault would delete copies production still keeps; set it to at least {backup['keep'][rule]}",
            )


def _command_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise InvalidValue(f"expected a list of shell commands, {_got(value)}")
    return list(value)


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
            # Alert delivery (hello/monitoring/alerting.py renders Alertmanager's config from these; README "Alerts").
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
            # A second host pulls the archives over read-only SFTP (hello/backup/vault_serve.py, vault_pull.py).
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
            "watch": (
                parse_duration,
                "30s",
            ),  # after verify: the new code's /metrics judged (hello/update/watch.py); 0: off
            "max_error_ratio": (_positive_number, 0.01),  # 5xx share of the new code's answers above this: rollback
            "min_requests": (_int_at_least(1), 100),  # answers by the new code before it is judged
            "max_latency_ratio": (_positive_number, 2.0),  # p99 above this times the p99 before: rollback
            "hooks": {  # shell lines run in the new release's folder (hello/update/hooks.py)
                "before_deploy": (_command_list, []),  # one fails: nothing deployed
                "after_deploy": (_command_list, []),  # one fails: rolled back
            },
            "test_user": (_string_or_null, "nobody"),  # run as root: the tests run as this user; null: as root
            "verify_signatures": (_path_or_null, None),  # an allowed-signers file: unsigned commits refused
        },
        "kubernetes": {  # deploy/kubernetes and system.update.deploy: kubernetes (hello/update/deploy_kubernetes.py)
            "registry": (_string_or_null, None),  # images go to <registry>/hello-world:<commit>; needed to deploy
            "context": (_string_or_null, None),  # kubectl --context; null: kubectl's current context
            "namespace": (_string, "hello-world"),
            "rollout_timeout": (parse_duration, "5m"),
            "pushgateway_url": (_url_or_null, "http://pushgateway.monitoring.svc:9091"),  # the validation CronJob's
        },
        "slo": {  # hello/monitoring/slo.py generates monitoring/rules/hello_world_slo.rules.yml from these
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


def check_tree(raw: Any, schema: Schema, key_path: str, base_dir: Path) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidKey(key_path, f"expected a mapping of keys, {_got(raw)}")
    for key in raw:
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(schema)
            raise InvalidKey(join_key(key_path, str(key)), f"unknown key{hint}; known keys here: {known}")
    result: dict[str, Any] = {}
    for key, spec in schema.items():
        where = join_key(key_path, key)
        if isinstance(spec, dict):
            result[key] = check_tree(raw.get(key), spec, where, base_dir)
            continue
        checker, default = spec
        try:
            value = checker(raw.get(key, default))
        except InvalidValue as exc:
            raise InvalidKey(where, str(exc)) from None
        if checker in (_path, _path_or_null) and value is not None:
            value = str((base_dir / value).resolve())
        result[key] = value
    return result


class InvalidKey(Exception):
    def __init__(self, key_path: str, message: str) -> None:
        super().__init__(f"{key_path}: {message}")


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key
