"""Job outcomes as metrics: each scheduled job records whether it worked, for alerts and the dashboard.

    record_job(config, "hello_world_backup", success=True, started=started, finished=time.time(),
               extra={"hello_world_backup_size_bytes": 1234}, helps={"hello_world_backup_size_bytes": "Size ..."})

record_job writes <run_dir>/metrics/<job>.prom atomically (for node_exporter's textfile collector or a human) and
pushes the same gauges to the Pushgateway when system.monitoring.pushgateway.url is set (with the login of
hello/base/monitor_login.py when `make monitor` made one). Each is attempted whatever the other did (a full disk still
pushes); a failure is one warning line, never raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

from hello.base import promtext
from hello.base.files import write_atomically
from hello.base.monitor_login import read_credentials

log = logging.getLogger(__name__)

PUSH_TIMEOUT = 5.0  # seconds: a slow Pushgateway must not hold up a backup
# A labelled gauge of a job: metric name -> (label names, {label values: value}).
LabelledSeries = dict[str, tuple[tuple[str, ...], dict[tuple[str, ...], float]]]


class JobGauges(NamedTuple):
    """The names of the gauges every job records (SPEC): <job>_success and its two timestamps."""

    success: str
    last_run: str
    last_success: str


def job_gauges(job: str) -> JobGauges:
    return JobGauges(f"{job}_success", f"{job}_last_run_timestamp_seconds", f"{job}_last_success_timestamp_seconds")


def _previous_value(path: Path, name: str) -> float | None:
    """The value of gauge `name` in an earlier textfile, or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        for sample in promtext.samples(text):
            if sample.name == name:
                return float(sample.value)
    except ValueError:
        log.warning("ignoring unreadable metrics textfile %s", path)
    return None


def _push_handler(config: dict[str, Any]) -> Callable[..., Callable[[], None]]:
    """prometheus_client's push handler, with the Pushgateway's login when `make monitor` made one."""
    credentials = read_credentials(config)
    if credentials is None:
        return default_handler

    def handler(url: str, method: str, timeout: float | None, headers: list, data: bytes) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, credentials.user, credentials.password)

    return handler


def _registry(
    job: str,
    success: bool,
    finished: float,
    last_success: float | None,
    extra: dict[str, float],
    series: LabelledSeries,
    helps: Mapping[str, str],
):
    registry = CollectorRegistry()
    what = job.removeprefix("hello_world_")
    names = job_gauges(job)
    values: dict[str, tuple[str, float | None]] = {
        names.last_run: (f"End of the last {what} run (Unix time).", finished),
        names.success: (f"1 if the last {what} run succeeded, else 0.", 1.0 if success else 0.0),
        names.last_success: (f"End of the last successful {what} run (Unix time).", last_success),
    }
    for name, value in extra.items():
        values[name] = (
            helps.get(name, f"{name.removeprefix(job + '_').replace('_', ' ')} of the last {what} run."),
            value,
        )
    for name, (help_text, value) in values.items():
        if value is not None:
            Gauge(name, help_text, registry=registry).set(value)
    for name, (labelnames, samples) in series.items():
        gauge = Gauge(name, helps.get(name, name), labelnames, registry=registry)
        for labelvalues, value in samples.items():
            gauge.labels(*labelvalues).set(value)
    return registry


def metrics_textfile(config: dict[str, Any], job: str) -> Path:
    """<run_dir>/metrics/<job>.prom: where record_job writes the job's metrics (node_exporter's textfile)."""
    return Path(config["run_dir"]) / "metrics" / f"{job}.prom"


def record_job(
    config: dict[str, Any],
    job: str,
    *,
    success: bool,
    started: float,
    finished: float,
    extra: dict[str, float] | None = None,
    series: LabelledSeries | None = None,
    last_success: float | None = None,
    helps: Mapping[str, str] | None = None,
) -> Path:
    """Write the job's outcome to <run_dir>/metrics/<job>.prom and push it; return the textfile path.

    extra: more unlabelled gauges; series: labelled ones (e.g. one per validation check).
    Both are attempted, whatever the other did: a full disk must not keep a failure from the Pushgateway.
    A failure of either is one warning line (on stderr), never an exception. last_success: the end of the last
    success when the caller knows it (a run that failed after its main work succeeded); else taken from the
    earlier textfile. helps: the help text of extra or series metrics, by name (the concept's own words).
    """
    path = metrics_textfile(config, job)
    directory = path.parent
    if success:
        last_success = finished
    elif last_success is None:
        last_success = _previous_value(path, job_gauges(job).last_success)
    registry = _registry(job, success, finished, last_success, dict(extra or {}), dict(series or {}), dict(helps or {}))
    unwritten = unpushed = ""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(path, generate_latest(registry))
    except OSError as exc:
        unwritten = f"{path} ({exc.strerror or exc})"
    log.debug("%s finished in %.3fs; metrics in %s", job, finished - started, path)
    url = config.get("monitoring", {}).get("pushgateway", {}).get("url")
    if url:
        push_started = time.monotonic()
        try:
            push_to_gateway(url, job=job, registry=registry, timeout=PUSH_TIMEOUT, handler=_push_handler(config))
        except Exception as exc:  # noqa: BLE001 - any push failure is only a warning
            unpushed = f"the Pushgateway at {url} ({exc})"
        else:
            log.debug("pushed %s metrics to %s in %.3fs", job, url, time.monotonic() - push_started)
    if unwritten and unpushed:
        log.warning("could not record %s metrics: not written to %s, not pushed to %s", job, unwritten, unpushed)
    elif unpushed:
        log.warning("could not push %s metrics to %s; they are in %s", job, unpushed, path)
    elif unwritten:
        pushed = f"pushed to {url}" if url else "no Pushgateway is configured"
        log.warning("could not write %s metrics to %s; %s", job, unwritten, pushed)
    return path
