"""hello/monitoring/dashboard.py: the queries lint and validation both read, and Grafana's macros."""

from __future__ import annotations

import pytest

from hello.monitoring import dashboard as grafana

pytestmark = pytest.mark.fast  # the in-process tier (make test-fast)


def board() -> dict:
    """A dashboard with a plain panel, an open row, a collapsed row, hidden and non-Prometheus targets, annotations."""
    return {
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {
            "list": [
                {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "name": "Annotations"},
                {
                    "datasource": {"type": "prometheus", "uid": "prometheus"},
                    "name": "Deploys",
                    "expr": "changes(d[5m])",
                },
                {
                    "datasource": {"type": "prometheus", "uid": "prometheus"},
                    "name": "Rollbacks",
                    "target": {"refId": "Anno", "expr": "e"},  # where Grafana 10 keeps the query
                },
                {"datasource": {"type": "prometheus"}, "name": "Off", "enable": False, "target": {"expr": "f"}},
            ]
        },
        "templating": {"list": [{"name": "job", "current": {"value": "$__all"}, "allValue": "hello.*"}]},
        "panels": [
            {"id": 1, "title": "Top", "targets": [{"refId": "A", "expr": "rate(a[$__rate_interval])"}]},
            {"id": 2, "type": "row", "title": "Open row", "collapsed": False, "panels": []},
            {"id": 3, "title": "Below the open row", "targets": [{"refId": "A", "expr": 'b{job=~"$job"}'}]},
            {
                "id": 4,
                "type": "row",
                "title": "Collapsed",
                "collapsed": True,
                "panels": [
                    {
                        "id": 5,
                        "title": "Inside",
                        "targets": [
                            {"refId": "A", "expr": "sum(c[$__range])"},
                            {"refId": "B", "expr": "hidden", "hide": True},
                            {"refId": "C", "expr": '{app="x"}', "datasource": {"type": "loki", "uid": "l"}},
                        ],
                    }
                ],
            },
        ],
    }


def test_queries_come_from_rows_collapsed_rows_and_prometheus_annotations() -> None:
    found = grafana.queries(board())
    assert [(q.title, q.ref_id) for q in found] == [
        ("Top", "A"),
        ("Below the open row", "A"),
        ("Inside", "A"),
        ("Deploys", "annotation"),
        ("Rollbacks", "annotation"),
    ]
    assert "hidden" not in {q.expr for q in found}, "a hidden target is not sent"


def test_expanded_queries_fill_macros_at_the_dashboards_range_and_variables() -> None:
    expanded = dict(grafana.expanded_queries(board(), scrape_interval=2))
    # $__interval defaults to the scrape interval: max(2 s + 2 s, 4 x 2 s) = 8 s
    assert expanded["Top"] == "rate(a[8s])"
    assert expanded["Below the open row"] == 'b{job=~"hello.*"}'
    assert expanded["Inside"] == "sum(c[3600s])"


def test_rate_interval_is_grafanas_formula() -> None:
    # max($__interval + scrape, 4 x scrape): the step wins once it exceeds three scrape intervals
    assert grafana.substitute_macros("[$__rate_interval]", scrape_interval=15, interval=15) == "[60s]"
    assert grafana.substitute_macros("[$__rate_interval]", scrape_interval=15, interval=60) == "[75s]"
    assert grafana.substitute_macros("[$__rate_interval] $__interval_ms", 0.5) == "[2s] 500"
