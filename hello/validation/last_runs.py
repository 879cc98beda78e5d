"""What the last backup and update runs left behind, found once per validation run and shared by the groups that
judge them: the newest archive, a job's gauges (Prometheus, else the Pushgateway, else its textfile), the update log."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hello.backup.naming import JOB, parse_archive
from hello.base.job_metrics import job_gauges
from hello.validation.components import Context, metric_values, prometheus_api
from hello.validation.core import CheckFailed

JOB_BACKUP, JOB_UPDATE = JOB, "hello_world_update"  # metric prefixes and Pushgateway jobs


def archive_time(path: Path) -> float:
    """The UTC time in an archive's name (newest_archive found it, so it follows the naming), as Unix time."""
    archive = parse_archive(path)
    assert archive is not None, path
    return archive.created.timestamp()


def newest_archive(ctx: Context) -> Path:
    def find() -> Path:
        destination = Path(ctx.config["backup"]["destination"])
        try:
            found = [archive for entry in os.scandir(destination) if (archive := parse_archive(Path(entry.path)))]
        except FileNotFoundError:
            raise CheckFailed(f"no backup destination {destination} (no backup has run)") from None
        except OSError as exc:
            raise CheckFailed(f"cannot list {destination}: {exc.strerror}") from None
        if not found:
            raise CheckFailed(f"no archive hello-world-*.tar.gz in {destination}")
        return max(found, key=lambda archive: archive.created).path

    return ctx.once("newest archive", find)


def has_archive(ctx: Context) -> bool:
    try:
        newest_archive(ctx)
    except CheckFailed:
        return False
    return True


def job_metrics(ctx: Context, job: str) -> tuple[dict[str, float], str]:
    """The newest gauges of a job (hello_world_backup/_update) and where they came from.

    Prometheus first (what the alerts see), then the Pushgateway, then the job's textfile.
    """
    names = job_gauges(job)
    tried = []
    if ctx.prometheus is not None:
        try:
            values: dict[str, float] = {}
            for name in names:
                result = prometheus_api(ctx.prometheus, "/api/v1/query", {"query": f"max({name})"}).get("result")
                if result:
                    values[name] = float(result[0]["value"][1])
            if values:
                return values, f"Prometheus at {ctx.prometheus.base}"
            tried.append(f"Prometheus has no {names.last_run}")
        except CheckFailed as exc:
            tried.append(str(exc))
    if ctx.pushgateway is not None:
        try:
            text = ctx.pushgateway.ok("/metrics").decode("utf-8", "replace")
            values = {n: max(v) for n in names if (v := metric_values(text, n, {"job": job}))}
            if values:
                return values, f"Pushgateway at {ctx.pushgateway.base} (Prometheus lacks it)"
            tried.append(f"the Pushgateway has no job {job}")
        except CheckFailed as exc:
            tried.append(str(exc))
    textfile = ctx.run_dir / "metrics" / f"{job}.prom"
    try:
        text = textfile.read_text(encoding="utf-8")
        values = {n: max(v) for n in names if (v := metric_values(text, n))}
        if values:
            return values, f"textfile {textfile}"
    except OSError:
        pass
    except CheckFailed as exc:  # unreadable: say so, as for the other two sources
        tried.append(f"{textfile}: {exc}")
        return {}, "; ".join(tried)
    tried.append(f"no {textfile}")
    return {}, "; ".join(tried)


def utc_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def last_update_log(ctx: Context) -> dict[str, Any] | None:
    """The last JSON line of <run_dir>/update.log, or None when there is none."""
    path = ctx.run_dir / "update.log"
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            return entry
    return None


def update_never_ran(ctx: Context) -> bool:
    return ctx.once("update never ran", lambda: last_update_log(ctx) is None and not job_metrics(ctx, JOB_UPDATE)[0])
