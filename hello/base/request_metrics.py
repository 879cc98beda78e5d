"""The server's request metrics (SPEC "Metrics"), named once for the server, config.yaml's SLOs and their rules.

LATENCY_BUCKETS are the bucket boundaries (seconds) of hello_world_request_duration_seconds: an SLO latency
threshold must be one of them, because the share of requests within it is read from that one bucket.
OPERATIONAL_PATHS are the routes the operators' tools call (Prometheus, probes, the update protocol's and
validation's /version check): they are not the users' traffic, so the SLOs leave them out.
"""

from __future__ import annotations

REQUESTS_TOTAL = "hello_world_requests_total"  # counter {method, path, code}
DURATION = "hello_world_request_duration_seconds"  # histogram {path}
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
OPERATIONAL_PATHS = ("/metrics", "/healthz", "/readyz", "/version")
