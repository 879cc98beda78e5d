"""The Grafana dashboard's queries: which there are, and the PromQL Grafana sends for each.

    for title, ref_id, expr in queries(dashboard): ...                 # every Prometheus query, as written
    promql = substitute_macros(expr, scrape_interval, interval=5.0)    # Grafana's macros filled in
    expanded_queries(dashboard, scrape_interval)                      # (title, PromQL) with variables too

Collected: the targets of every panel, also of panels inside rows (a collapsed row holds its panels in its
own "panels"), and the enabled Prometheus annotation queries (annotations.list[*].target.expr, or .expr);
hidden targets and other data sources' queries are left out. Used by scripts/lint_monitoring.py (promtool
parses each) and hello/validation/monitoring.py (each returns data), so the two cannot disagree about what it asks.

The macros, as Grafana documents them for Prometheus (Grafana 7.2's blog post on $__rate_interval, and
grafana/grafana#77234 which restored the formula):
    $__interval       the step: never below the scrape interval (the data source's minimum), so by default it
    $__rate_interval  max($__interval + scrape interval, 4 x scrape interval)
    $__range          the dashboard's time range (time.from, e.g. now-6h), also $__range_s and $__range_ms
Variables ($name, ${name}, ${name:format}, [[name]]) take their current value; "All" their allValue or `.*`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from hello.base.config_schema import parse_duration
from hello.monitoring.alerting import format_duration

DEFAULT_RANGE = 6 * 3600.0  # the seed dashboard's now-6h
_REFERENCE_RE = re.compile(r"\$\{([\w:]+)\}|\[\[(\w+)\]\]|\$(\w+)")


class Query(NamedTuple):
    title: str  # the panel's title, or the annotation's name
    ref_id: str
    expr: str


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, depth first: rows, and the panels inside rows (collapsed or not)."""

    def walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from walk(panel.get("panels", []))  # panels inside a collapsed row

    return walk(dashboard.get("panels", []))


def _is_prometheus(source: Any) -> bool:
    return source.get("type", "prometheus") == "prometheus" if isinstance(source, dict) else True


def queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every visible Prometheus query of the dashboard: panel targets, then annotation queries."""
    found = []
    for panel in panels(dashboard):
        title = str(panel.get("title", f"panel {panel.get('id')}"))
        for target in panel.get("targets", []):
            source = target.get("datasource") or panel.get("datasource") or {}
            if target.get("expr") and not target.get("hide") and _is_prometheus(source):
                found.append(Query(title, str(target.get("refId", "?")), target["expr"]))
    for annotation in (dashboard.get("annotations") or {}).get("list", []):
        # Grafana keeps a Prometheus annotation's query in `target` (older dashboards: top-level `expr`).
        expr = (annotation.get("target") or {}).get("expr") or annotation.get("expr")
        wanted = annotation.get("enable", True) and not annotation.get("builtIn")
        if expr and wanted and _is_prometheus(annotation.get("datasource") or {}):
            found.append(Query(str(annotation.get("name", "annotation")), "annotation", expr))
    return found


def time_range(dashboard: dict[str, Any]) -> float:
    """Seconds of the dashboard's default time range (time.from now-6h: 21600); DEFAULT_RANGE when odd."""
    text = str(dashboard.get("time", {}).get("from", "now-6h")).removeprefix("now-")
    try:
        return parse_duration(text)
    except ValueError:
        return DEFAULT_RANGE


def variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """name -> current value of the dashboard's template variables ("All": allValue, else `.*`)."""
    values = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        current = (variable.get("current") or {}).get("value")
        current = current[0] if isinstance(current, list) and current else current
        if not current or current == "$__all":
            current = variable.get("allValue") or ".*"
        values[variable.get("name", "")] = str(current)
    return values


def macros(
    scrape_interval: float, interval: float | None = None, range_seconds: float = DEFAULT_RANGE
) -> dict[str, str]:
    """Grafana's macro values (names without the `$`) for a scrape interval, a step and a time range."""
    step = scrape_interval if interval is None else interval
    rate_interval = max(step + scrape_interval, 4 * scrape_interval)
    return {
        "__rate_interval": format_duration(rate_interval),
        "__interval": format_duration(step),
        "__interval_ms": str(round(step * 1000)),
        "__range": format_duration(range_seconds),
        "__range_s": str(round(range_seconds)),
        "__range_ms": str(round(range_seconds * 1000)),
    }


def expand(expr: str, values: dict[str, str]) -> str:
    """expr with every $name, ${name[:format]} and [[name]] of values replaced; unknown names stay."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        return values.get(name.split(":")[0], match.group(0))

    return _REFERENCE_RE.sub(one, expr)


def substitute_macros(
    expr: str, scrape_interval: float, interval: float | None = None, range_seconds: float = DEFAULT_RANGE
) -> str:
    """A query as Grafana sends it (macros only): see the module docstring for the formulas."""
    return expand(expr, macros(scrape_interval, interval, range_seconds))


def expanded_queries(dashboard: dict[str, Any], scrape_interval: float) -> list[tuple[str, str]]:
    """(title, PromQL) of every query, with the macros (at the dashboard's range) and variables filled in."""
    values = {**macros(scrape_interval, range_seconds=time_range(dashboard)), **variables(dashboard)}
    return [(query.title, expand(query.expr, values)) for query in queries(dashboard)]
