"""The watch after a deploy: the new code judged by its own /metrics; a regression rolls the update back.

After the verify step (and the after-deploy hooks), update_protocol.py reads the server's /metrics every
POLL_SECONDS for system.update.watch seconds while traffic flows (prometheus_client's parser; no Prometheus
needed) and judges what the new code answered, as Flagger's analysis does on Kubernetes:

  error ratio  5xx answers / answers > system.update.max_error_ratio -> regression
  latency      the window's p99 > system.update.max_latency_ratio x the p99 before the deploy -> regression

Both are judged only once at least system.update.min_requests requests were answered by the new code, at
every read, so a regression rolls back as soon as it shows. When the time is up with fewer requests than
that, the watch says "too little traffic to judge" and the new code is kept.

Only the new code's answers count. The server sums every worker's counts, past and present, with no
commit label (prometheus_client's multiprocess mode; hello/server/metrics_files.py merges a dead worker's files
into the totals). So the watch first waits until hello_world_build_info names only the new commit: that
gauge is livemax, a worker's series goes when the supervisor marks it dead, so from then on the old workers
have drained and exited and add nothing more. The snapshot taken then is the window's start; the window
is every reading's difference from it. Requests to /metrics are left out everywhere: they are the watch's
own reads (and Prometheus' scrapes), and the costliest route.

The p99 before the deploy is the request-duration histogram as it stands just before the deploy: every
request the server answered since it started (all its workers, earlier releases included). That is the
long-run p99 of what served, not a short window that the update's own test step (`make test` on the same
host) slows down. With fewer than min_requests requests in it, the latency is not judged (said so).
p99 is computed as Prometheus' histogram_quantile does: linear interpolation inside the bucket holding the
rank, the highest finite bound when the rank falls in +Inf.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from hello.base.http_client import http_get
from hello.update.deploy import Deployment

# The metric names hello/server/metrics_files.py and hello_world.py create (SPEC "Metrics"); tests/test_update_watch.py
# reads them from a live server, so a rename fails there.
REQUESTS = "hello_world_requests"  # counter family; samples hello_world_requests_total{method,path,code}
DURATION = "hello_world_request_duration_seconds"  # histogram family, labelled by path
BUILD_INFO = "hello_world_build_info"  # gauge {version,commit}, one series per commit a live worker runs
UNJUDGED_PATHS = frozenset({"/metrics"})
QUANTILE = 0.99
POLL_SECONDS = 1.0
DRAIN_MARGIN = 15.0  # after drain_timeout: the supervisor kills a worker at drain_timeout + 5, then merges


class WatchError(Exception):
    """The new code's /metrics cannot be read or makes no sense; str() is the one-line reason."""


class Regression(WatchError):
    """The new code did worse than allowed: roll back; str() is why."""


@dataclass(frozen=True)
class Limits:
    """system.update's watch keys."""

    seconds: float
    max_error_ratio: float
    min_requests: int
    max_latency_ratio: float

    @classmethod
    def from_config(cls, update: dict[str, Any]) -> Limits:
        return cls(update["watch"], update["max_error_ratio"], update["min_requests"], update["max_latency_ratio"])


@dataclass(frozen=True)
class Reading:
    """One read of /metrics (UNJUDGED_PATHS left out), or the difference of two."""

    requests: float
    errors: float  # answers with a 5xx status
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending, +Inf last
    commits: frozenset[str] = frozenset()

    def since(self, start: Reading) -> Reading:
        """What was answered between start and this reading."""
        before = dict(start.buckets)
        buckets = tuple((bound, count - before.get(bound, 0.0)) for bound, count in self.buckets)
        return Reading(self.requests - start.requests, self.errors - start.errors, buckets, self.commits)


def parse(text: str) -> Reading:
    """The request counts, the summed duration buckets and the live commits of a Prometheus text exposition."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    commits: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.name not in (REQUESTS, DURATION, BUILD_INFO):
            continue
        for sample in family.samples:
            labels = sample.labels
            if family.name == BUILD_INFO:
                if sample.value > 0:
                    commits.add(labels.get("commit", ""))
            elif labels.get("path") in UNJUDGED_PATHS:
                continue
            elif sample.name == f"{REQUESTS}_total":
                requests += sample.value
                errors += sample.value if labels.get("code", "").startswith("5") else 0.0
            elif sample.name == f"{DURATION}_bucket":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Reading(requests, errors, tuple(sorted(buckets.items())), frozenset(commits))


def read(url: str, timeout: float) -> Reading:
    """GET <url>/metrics, parsed. Raises WatchError."""
    try:
        status, body = http_get(f"{url}/metrics", timeout)
    except OSError as exc:
        raise WatchError(f"{url}/metrics does not answer: {exc}") from None
    if status != 200:
        raise WatchError(f"{url}/metrics answered {status}")
    try:
        return parse(body.decode("utf-8"))
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise WatchError(f"{url}/metrics cannot be parsed: {exc}") from None


def quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float | None:
    """The q-quantile of cumulative buckets as Prometheus' histogram_quantile computes it; None when empty."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound = lower_count = 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(frozen=True)
class Verdict:
    """The judgement of one window: regression is why to roll back ("" none); judged: enough traffic."""

    requests: int
    errors: int
    p99: float | None
    before_p99: float | None  # None: too few requests before the deploy to judge the latency
    regression: str = ""
    judged: bool = False

    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def summary(self) -> str:
        """'412 requests, 0.0% 5xx, p99 3.1 ms vs 2.8 ms before'."""
        before = f"{ms(self.before_p99)} before" if self.before_p99 is not None else "no p99 before the deploy"
        return f"{self.requests} requests, {self.error_ratio():.1%} 5xx, p99 {ms(self.p99)} vs {before}"

    def as_record(self) -> dict[str, Any]:
        """For the update.log entry."""
        return {**asdict(self), "error_ratio": round(self.error_ratio(), 6)}


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def judge(window: Reading, before: Reading | None, limits: Limits) -> Verdict:
    """The verdict on a window of the new code, against the reading taken before the deploy (None: none)."""
    requests, errors = round(window.requests), round(window.errors)
    p99 = quantile(QUANTILE, window.buckets)
    judge_latency = before is not None and before.requests >= limits.min_requests
    before_p99 = quantile(QUANTILE, before.buckets) if before is not None and judge_latency else None
    verdict = Verdict(requests, errors, p99, before_p99)
    if requests < limits.min_requests:
        return verdict
    regression = ""
    if errors / requests > limits.max_error_ratio:
        regression = (
            f"{verdict.error_ratio():.1%} 5xx of {requests} requests answered by the new code "
            f"(system.update.max_error_ratio {limits.max_error_ratio:.1%})"
        )
    elif p99 is not None and before_p99 and p99 > limits.max_latency_ratio * before_p99:
        regression = (
            f"p99 {ms(p99)} vs {ms(before_p99)} before the deploy, {p99 / before_p99:.1f}x "
            f"(system.update.max_latency_ratio {limits.max_latency_ratio:g})"
        )
    return Verdict(requests, errors, p99, before_p99, regression, judged=True)


def watch_skipped(update: dict[str, Any], deployment: Deployment) -> str:
    """Why a configured watch does not run ("" when it runs or is off): only a watched deployment is."""
    return f"skipped (deploy: {deployment.mode})" if update["watch"] and not deployment.watched else ""


def watch_plan(update: dict[str, Any], deployment: Deployment, url: str) -> str:
    """The dry run's line for the watch step ("" when it is off)."""
    limits = Limits.from_config(update)
    if not limits.seconds or not deployment.watched:
        return watch_skipped(update, deployment)
    return (
        f"{limits.seconds:g}s of {url}/metrics: 5xx <= {limits.max_error_ratio:.1%}, p99 <= "
        f"{limits.max_latency_ratio:g}x before, judged from {limits.min_requests} requests; worse: rollback"
    )


class Watch:
    """One watch: made (before_deploy) on the old code, then watch(commit) on the new; record for update.log."""

    def __init__(
        self,
        url: str,
        limits: Limits,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url, self.limits, self.timeout = url, limits, timeout
        self.clock, self.sleep = clock, sleep
        self.before: Reading | None = None
        self.record: dict[str, Any] = {}

    @classmethod
    def before_deploy(cls, update: dict[str, Any], deployment: Deployment, url: str, timeout: float) -> Watch | None:
        """A watch holding the old code's histogram as it stands now; None when off or the deployment is not watched."""
        limits = Limits.from_config(update)
        if not limits.seconds or not deployment.watched:
            return None
        watch = cls(url, limits, timeout)
        with contextlib.suppress(WatchError):  # unreadable now: the latency is not judged, no reason to stop
            watch.before = read(url, timeout)
        return watch

    def watch(self, commit: str, drain_timeout: float) -> tuple[str, str]:
        """(outcome, detail) of the step once limits.seconds are up. Raises Regression or WatchError."""
        try:
            verdict = self.judge(commit, drain_timeout)
        except WatchError as exc:
            self.record = {"error": str(exc)}
            raise
        self.record = verdict.as_record()
        if verdict.regression:
            raise Regression(verdict.regression)
        if not verdict.judged:
            return "unjudged", (
                f"too little traffic to judge ({verdict.summary()}; system.update.min_requests "
                f"{self.limits.min_requests}): the new code is kept"
            )
        return "ok", verdict.summary()

    def judge(self, commit: str, drain_timeout: float) -> Verdict:
        """Judge what commit answers for limits.seconds; the first regression ends it. Raises WatchError."""
        start = self.wait_for_only_commit(commit, drain_timeout + DRAIN_MARGIN)
        end = self.clock() + self.limits.seconds
        while True:
            self.sleep(max(0.0, min(POLL_SECONDS, end - self.clock())))
            window = read(self.url, self.timeout).since(start)
            if window.requests < 0:
                raise WatchError(f"{self.url}/metrics counts went down: the server restarted during the watch")
            verdict = judge(window, self.before, self.limits)
            if verdict.regression or self.clock() >= end:
                return verdict

    def wait_for_only_commit(self, commit: str, limit: float) -> Reading:
        """Wait for the first reading in which commit is the only one live workers run: the old ones are gone."""
        deadline = self.clock() + limit
        while True:
            reading = read(self.url, self.timeout)
            if reading.commits == {commit}:
                return reading
            if self.clock() > deadline:
                shown = ", ".join(sorted(c[:10] for c in reading.commits)) or "none"
                raise WatchError(f"{BUILD_INFO} names {shown} {limit:g}s after the deploy, not only {commit[:10]}")
            self.sleep(0.1)


def watch_metrics(record: dict[str, Any] | None) -> dict[str, float]:
    """The update metrics of a run that watched (its update.log `watch` entry); none when it did not watch."""
    if not record:
        return {}
    values = {"hello_world_update_watch_rollback": 1.0 if record.get("regression") or record.get("error") else 0.0}
    if "requests" in record:
        values["hello_world_update_watch_requests"] = float(record["requests"])
        values["hello_world_update_watch_error_ratio"] = float(record["error_ratio"])
    if record.get("p99") is not None:
        values["hello_world_update_watch_p99_seconds"] = float(record["p99"])
    return values
