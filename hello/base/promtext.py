"""Reading Prometheus text exposition (a /metrics page, a Pushgateway's, a textfile), by prometheus_client.parser.

    values(text, "hello_world_requests_total", {"path": "/"})    # [3.0, 1.0]: every matching sample
    names(text)                                                   # {"hello_world_requests_total", ...}

Unreadable text raises ValueError (what the parser raises), naming the line where it can.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> Iterator[Sample]:
    """Every sample of the text, in order; ValueError where the text stops being exposition format."""
    for family in text_string_to_metric_families(text):
        yield from family.samples


def values(text: str, name: str, labels: dict[str, str] | None = None) -> list[float]:
    """Values of the samples called name whose labels include `labels`."""
    wanted = (labels or {}).items()
    return [
        float(sample.value)
        for sample in samples(text)
        if sample.name == name and all(sample.labels.get(key) == value for key, value in wanted)
    ]


def names(text: str) -> set[str]:
    """The sample names of the text (a histogram's _bucket, _sum and _count, a counter's _total)."""
    return {sample.name for sample in samples(text)}
