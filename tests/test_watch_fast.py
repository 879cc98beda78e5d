"""The post-deploy watch's judgement (hello/update/watch.py) on given samples, and the watch loop on a fake clock.

judge() on readings made here: min_requests, the 5xx ratio threshold, the latency ratio, no data. Watch.watch()
with its clock and sleep injected and watch.read() replaced by a script of readings: no server, no waiting.
tests/test_update_watch.py runs the watch against a real scratch deployment under load.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hello.update import watch as watch_module
from hello.update.watch import (
    POLL_SECONDS,
    Limits,
    Reading,
    Regression,
    Verdict,
    Watch,
    WatchError,
    judge,
    parse,
    quantile,
    watch_metrics,
    watch_plan,
    watch_skipped,
)

pytestmark = pytest.mark.fast  # the in-process tier (make test-fast)

BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, math.inf)
LIMITS = Limits(seconds=10.0, max_error_ratio=0.01, min_requests=100, max_latency_ratio=2.0)
OLD, NEW = "a" * 40, "b" * 40


def buckets(*observations: float) -> tuple[tuple[float, float], ...]:
    """Cumulative buckets of these observations (le inclusive), as prometheus_client fills them."""
    return tuple((bound, float(sum(1 for x in observations if x <= bound))) for bound in BOUNDS)


def reading(requests: int, errors: int = 0, latency: float = 0.004, commits: frozenset[str] = frozenset()) -> Reading:
    return Reading(requests, errors, buckets(*[latency] * requests), commits)


# --- judge -------------------------------------------------------------------------------------------


def test_fewer_than_min_requests_is_not_judged_whatever_it_answered() -> None:
    verdict = judge(reading(99, errors=99, latency=0.9), reading(1000), LIMITS)
    assert not verdict.judged and verdict.regression == ""
    assert (verdict.requests, verdict.errors) == (99, 99)


def test_min_requests_exactly_is_judged() -> None:
    verdict = judge(reading(100), reading(1000), LIMITS)
    assert verdict.judged and verdict.regression == ""


@pytest.mark.parametrize(
    ("errors", "regression"),
    [(0, False), (1, False), (10, False), (11, True), (1000, True)],  # 1000 requests, max 1%: 10 is still fine
)
def test_the_5xx_ratio_rolls_back_only_above_the_limit(errors: int, regression: bool) -> None:
    verdict = judge(reading(1000, errors=errors), None, LIMITS)
    assert verdict.judged and bool(verdict.regression) == regression
    if regression:
        assert f"{errors / 1000:.1%} 5xx of 1000 requests" in verdict.regression
        assert "system.update.max_error_ratio 1.0%" in verdict.regression


@pytest.mark.parametrize(
    ("before", "after", "regression"),
    [(0.004, 0.004, False), (0.004, 0.0045, False), (0.004, 0.04, True), (0.04, 0.004, False), (0.004, 5.0, True)],
)
def test_the_p99_rolls_back_above_ratio_times_before(before: float, after: float, regression: bool) -> None:
    verdict = judge(reading(200, latency=after), reading(1000, latency=before), LIMITS)
    assert verdict.p99 == quantile(0.99, buckets(*[after] * 200))
    assert verdict.before_p99 == quantile(0.99, buckets(*[before] * 1000))
    assert bool(verdict.regression) == regression
    if regression:
        assert "before the deploy" in verdict.regression and "max_latency_ratio 2" in verdict.regression


def test_errors_are_named_before_latency_when_both_regress() -> None:
    verdict = judge(reading(200, errors=100, latency=0.9), reading(1000, latency=0.001), LIMITS)
    assert "5xx" in verdict.regression and "p99" not in verdict.regression


def test_no_reading_before_the_deploy_judges_errors_only() -> None:
    verdict = judge(reading(500, latency=5.0), None, LIMITS)
    assert verdict.judged and verdict.regression == "" and verdict.before_p99 is None
    assert "no p99 before the deploy" in verdict.summary()


def test_too_few_requests_before_the_deploy_leave_the_latency_unjudged() -> None:
    verdict = judge(reading(500, latency=5.0), reading(99, latency=0.001), LIMITS)
    assert verdict.judged and verdict.regression == "" and verdict.before_p99 is None


def test_no_data_at_all() -> None:
    empty = Reading(0, 0, ())
    verdict = judge(empty, empty, LIMITS)
    assert verdict == Verdict(0, 0, None, None)
    assert (
        verdict.error_ratio() == 0.0 and verdict.summary() == "0 requests, 0.0% 5xx, p99 - vs no p99 before the deploy"
    )
    assert quantile(0.99, ()) is None and quantile(0.99, buckets()) is None


def test_a_window_is_the_difference_of_two_readings() -> None:
    start = Reading(100, 1, buckets(*[0.004] * 100), frozenset({NEW}))
    later = Reading(250, 4, buckets(*[0.004] * 100, *[0.2] * 150), frozenset({NEW}))
    window = later.since(start)
    assert (window.requests, window.errors) == (150, 3)
    assert window.buckets == buckets(*[0.2] * 150)


@settings(max_examples=200, deadline=2000, database=None)
@given(
    requests=st.integers(0, 3000),
    error_share=st.floats(0, 1),
    latency=st.sampled_from([0.0005, 0.003, 0.03, 0.3, 3.0]),
    before_latency=st.sampled_from([0.0005, 0.003, 0.03, 0.3]),
    before_requests=st.integers(0, 500),
    limits=st.builds(
        Limits,
        seconds=st.just(10.0),
        max_error_ratio=st.floats(0.0001, 0.5),
        min_requests=st.integers(1, 400),
        max_latency_ratio=st.floats(1.0, 10.0),
    ),
)
def test_judge_rolls_back_exactly_when_a_limit_is_passed_with_enough_traffic(
    requests: int,
    error_share: float,
    latency: float,
    before_latency: float,
    before_requests: int,
    limits: Limits,
) -> None:
    errors = math.floor(requests * error_share)
    window, before = reading(requests, errors, latency), reading(before_requests, latency=before_latency)
    verdict = judge(window, before, limits)
    enough = requests >= limits.min_requests
    too_many_errors = enough and errors / requests > limits.max_error_ratio
    p99, before_p99 = quantile(0.99, window.buckets), quantile(0.99, before.buckets)
    latency_judged = before_requests >= limits.min_requests
    too_slow = enough and latency_judged and p99 is not None and p99 > limits.max_latency_ratio * before_p99
    assert verdict.judged == enough
    assert bool(verdict.regression) == (too_many_errors or too_slow)
    assert verdict.before_p99 == (before_p99 if latency_judged else None)
    record = verdict.as_record()
    assert record["requests"] == requests and record["error_ratio"] == round(verdict.error_ratio(), 6)


# --- parse -------------------------------------------------------------------------------------------


def test_parse_sums_every_route_but_metrics_and_counts_5xx_and_live_commits() -> None:
    text = f"""# TYPE hello_world_requests_total counter
hello_world_requests_total{{method="GET",path="/",code="200"}} 80.0
hello_world_requests_total{{method="GET",path="/healthz",code="503"}} 5.0
hello_world_requests_total{{method="GET",path="other",code="404"}} 15.0
hello_world_requests_total{{method="GET",path="/metrics",code="500"}} 9.0
# TYPE hello_world_request_duration_seconds histogram
hello_world_request_duration_seconds_bucket{{path="/",le="0.01"}} 70.0
hello_world_request_duration_seconds_bucket{{path="/",le="+Inf"}} 80.0
hello_world_request_duration_seconds_bucket{{path="other",le="0.01"}} 20.0
hello_world_request_duration_seconds_bucket{{path="other",le="+Inf"}} 20.0
hello_world_request_duration_seconds_bucket{{path="/metrics",le="0.01"}} 0.0
hello_world_request_duration_seconds_bucket{{path="/metrics",le="+Inf"}} 9.0
# TYPE hello_world_build_info gauge
hello_world_build_info{{version="1",commit="{OLD}"}} 0.0
hello_world_build_info{{version="1",commit="{NEW}"}} 1.0
# TYPE other_total counter
other_total 7.0
"""
    assert parse(text) == Reading(100, 5, ((0.01, 90.0), (math.inf, 100.0)), frozenset({NEW}))


def test_parse_of_nothing_is_an_empty_reading() -> None:
    assert parse("") == Reading(0, 0, (), frozenset())


# --- the watch loop, on a fake clock -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds


def scripted(monkeypatch: pytest.MonkeyPatch, readings: list[Reading]) -> None:
    """watch.read() answers these readings in turn, then the last one again."""
    feed = iter(readings)
    last = [readings[0]]

    def read(url: str, timeout: float) -> Reading:
        last[0] = next(feed, last[0])
        return last[0]

    monkeypatch.setattr(watch_module, "read", read)


def make_watch(before: Reading | None = None, limits: Limits = LIMITS) -> tuple[Watch, Clock]:
    clock = Clock()
    watch = Watch("http://127.0.0.1:1", limits, timeout=1.0, clock=clock, sleep=clock.sleep)
    watch.before = before
    return watch, clock


def live(requests: int, errors: int = 0, latency: float = 0.004, commit: str = NEW) -> Reading:
    return reading(requests, errors, latency, frozenset({commit}))


def test_a_good_window_is_kept_after_the_watch_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, [live(1000), *(live(1000 + 50 * n) for n in range(1, 30))])
    watch, clock = make_watch(before=reading(5000))
    outcome, detail = watch.watch(NEW, drain_timeout=10)
    assert outcome == "ok" and detail.startswith("500 requests, 0.0% 5xx")
    assert clock.now == pytest.approx(LIMITS.seconds) and max(clock.slept) <= POLL_SECONDS
    assert watch.record["requests"] == 500 and watch.record["regression"] == ""
    assert watch_metrics(watch.record)["hello_world_update_watch_rollback"] == 0.0


def test_a_regression_stops_the_watch_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, [live(0), live(50, errors=0), live(200, errors=20), live(300)])
    watch, clock = make_watch()
    with pytest.raises(Regression, match=r"10\.0% 5xx of 200 requests"):
        watch.watch(NEW, drain_timeout=10)
    assert clock.now < LIMITS.seconds, "no waiting for the rest of the window"
    assert watch.record["regression"] and watch_metrics(watch.record)["hello_world_update_watch_rollback"] == 1.0


def test_the_window_starts_once_only_the_new_commit_is_live(monkeypatch: pytest.MonkeyPatch) -> None:
    both = Reading(900, 300, buckets(*[0.004] * 900), frozenset({OLD, NEW}))
    scripted(monkeypatch, [both, both, live(1000, errors=300), live(1200, errors=300)])
    watch, _ = make_watch()
    outcome, detail = watch.watch(NEW, drain_timeout=10)
    assert outcome == "ok" and detail.startswith("200 requests, 0.0% 5xx"), "the old code's 5xx are not counted"


def test_too_little_traffic_keeps_the_new_code_unjudged(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, [live(10, errors=5), live(20, errors=15)])
    watch, _ = make_watch()
    outcome, detail = watch.watch(NEW, drain_timeout=10)
    assert outcome == "unjudged" and "too little traffic to judge" in detail and "min_requests 100" in detail
    assert watch.record["judged"] is False


def test_the_old_commit_never_leaving_is_a_watch_error(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, [Reading(0, 0, (), frozenset({OLD, NEW}))])
    watch, clock = make_watch()
    with pytest.raises(WatchError, match=r"names aaaaaaaaaa, bbbbbbbbbb 25s after the deploy"):
        watch.watch(NEW, drain_timeout=10)
    assert clock.now > 25 and watch.record == {"error": watch.record["error"]}
    assert watch_metrics(watch.record) == {"hello_world_update_watch_rollback": 1.0}


def test_counts_going_down_mean_a_restart_and_a_watch_error(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, [live(500), live(10)])
    watch, _ = make_watch()
    with pytest.raises(WatchError, match="counts went down"):
        watch.watch(NEW, drain_timeout=10)


def test_an_unreadable_metrics_page_is_a_watch_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def read(url: str, timeout: float) -> Reading:
        raise WatchError(f"{url}/metrics answered 500")

    monkeypatch.setattr(watch_module, "read", read)
    watch, _ = make_watch()
    with pytest.raises(WatchError, match="answered 500"):
        watch.watch(NEW, drain_timeout=10)
    assert "answered 500" in watch.record["error"]


# --- the plan and the metrics ------------------------------------------------------------------------


class Deployment:
    def __init__(self, mode: str, watched: bool) -> None:
        self.mode, self.watched = mode, watched


UPDATE = {"watch": 30.0, "max_error_ratio": 0.01, "min_requests": 100, "max_latency_ratio": 2.0}


def test_the_plan_and_skip_lines() -> None:
    assert watch_plan(UPDATE, Deployment("local", True), "http://h:1") == (
        "30s of http://h:1/metrics: 5xx <= 1.0%, p99 <= 2x before, judged from 100 requests; worse: rollback"
    )
    assert watch_plan({**UPDATE, "watch": 0}, Deployment("local", True), "u") == ""
    assert watch_skipped(UPDATE, Deployment("kubernetes", False)) == "skipped (deploy: kubernetes)"
    assert watch_skipped({**UPDATE, "watch": 0}, Deployment("kubernetes", False)) == ""
    assert Watch.before_deploy({**UPDATE, "watch": 0}, Deployment("local", True), "u", 1.0) is None
    assert Watch.before_deploy(UPDATE, Deployment("kubernetes", False), "u", 1.0) is None


def test_before_deploy_keeps_the_old_reading_or_none_when_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, [reading(42)])
    watch = Watch.before_deploy(UPDATE, Deployment("local", True), "u", 1.0)
    assert watch is not None and watch.before == reading(42)

    def unreadable(url: str, timeout: float) -> Reading:
        raise WatchError("down")

    monkeypatch.setattr(watch_module, "read", unreadable)
    watch = Watch.before_deploy(UPDATE, Deployment("local", True), "u", 1.0)
    assert watch is not None and watch.before is None


def test_watch_metrics_of_each_kind_of_record() -> None:
    assert watch_metrics(None) == {} and watch_metrics({}) == {}
    verdict = judge(reading(400, errors=2, latency=0.004), reading(1000), LIMITS)
    values = watch_metrics(verdict.as_record())
    assert values["hello_world_update_watch_rollback"] == 0.0
    assert values["hello_world_update_watch_requests"] == 400.0
    assert values["hello_world_update_watch_error_ratio"] == 0.005
    assert values["hello_world_update_watch_p99_seconds"] == verdict.p99
