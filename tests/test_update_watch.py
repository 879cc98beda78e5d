"""The watch after a deploy (hello/update/watch.py, system.update.watch): a regression under load is rolled back.

The judgement's parts are property-tested on their own (p99 from bucket deltas, the ratio thresholds).
The watch itself runs against a real scratch deployment as tests/test_update.py's does (tests/support/scratch.py
ScratchDeployment: a bare remote, a clone serving with `scripts/service.py start`, real updates through
update_protocol.py) with load running throughout, and short watches set through config.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hello.base.checkout import CHECKOUT
from hello.base.config import ConfigError, load_config
from hello.base.http_client import http_request
from hello.update.watch import DURATION, Limits, Reading, judge, parse, quantile, read
from tests.support.deployment import assert_step, log_lines, metric, shown
from tests.support.fake_docker import compose_env
from tests.support.scratch import Load, ScratchDeployment

BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf)
# A short watch, min_requests the load reaches within a second; no backup and `true` as the tests: not the subject.
WATCH = {"watch": "3s", "min_requests": 50, "backup_first": False, "test_command": "true"}


# --- the judgement ---------------------------------------------------------------------------------


def cumulative(observations: list[float]) -> tuple[tuple[float, float], ...]:
    """Cumulative buckets as prometheus_client fills them (le inclusive)."""
    return tuple((bound, float(sum(1 for x in observations if x <= bound))) for bound in BOUNDS)


def bucket_of(value: float) -> tuple[float, float]:
    """(lower, upper) bounds of the bucket holding value."""
    index = next(i for i, bound in enumerate(BOUNDS) if value <= bound)
    return (BOUNDS[index - 1] if index else 0.0), BOUNDS[index]


durations = st.lists(st.floats(min_value=0.0, max_value=10.0, allow_nan=False), min_size=1, max_size=300)


@settings(max_examples=100, deadline=None, database=None)
@given(old=durations, new=durations, q=st.sampled_from([0.5, 0.9, 0.99]))
def test_quantile_of_a_window_lies_in_the_bucket_of_the_true_quantile(old: list[float], new: list[float], q: float):
    window = Reading(0, 0, cumulative(old + new)).since(Reading(0, 0, cumulative(old)))
    assert window.buckets == cumulative(new)  # the delta of cumulative buckets is the window's own histogram
    true = sorted(new)[math.ceil(q * len(new)) - 1]  # the observation at the rank
    low, high = bucket_of(true)
    found = quantile(q, window.buckets)
    assert found is not None
    if math.isinf(high):  # as histogram_quantile: the highest finite bound
        assert found == BOUNDS[-2]
    else:
        assert low <= found <= high


def test_quantile_interpolates_as_histogram_quantile() -> None:
    assert quantile(0.99, ()) is None and quantile(0.99, cumulative([])) is None
    # 100 observations in (1 ms, 2.5 ms]: the rank 99 is 99% into that bucket.
    assert quantile(0.99, cumulative([0.002] * 100)) == pytest.approx(0.001 + 0.0015 * 0.99)
    assert quantile(0.5, cumulative([0.0001] * 10)) == pytest.approx(0.00025)


@settings(max_examples=200, deadline=None, database=None)
@given(
    requests=st.integers(0, 5000),
    error_share=st.floats(0, 1),
    max_error_ratio=st.floats(0.0001, 1),
    min_requests=st.integers(1, 1000),
)
def test_error_ratio_rolls_back_only_above_the_limit_and_with_enough_requests(
    requests: int, error_share: float, max_error_ratio: float, min_requests: int
) -> None:
    errors = math.floor(requests * error_share)
    window = Reading(requests, errors, cumulative([0.001] * min(requests, 50)))
    verdict = judge(window, None, Limits(3, max_error_ratio, min_requests, 2.0))
    assert verdict.judged == (requests >= min_requests)
    assert bool(verdict.regression) == (requests >= min_requests and errors / requests > max_error_ratio)
    if verdict.regression:
        assert "5xx of" in verdict.regression and "system.update.max_error_ratio" in verdict.regression


@settings(max_examples=100, deadline=None, database=None)
@given(before=st.sampled_from(BOUNDS[:-2]), after=st.sampled_from(BOUNDS[:-2]), ratio=st.floats(1.0, 20.0))
def test_latency_rolls_back_when_p99_is_worse_than_ratio_times_before(before: float, after: float, ratio: float):
    limits = Limits(3, 0.01, 100, ratio)
    old = Reading(1000, 0, cumulative([before] * 1000))
    new = Reading(200, 0, cumulative([after] * 200))
    verdict = judge(new, old, limits)
    before_p99, after_p99 = quantile(0.99, old.buckets), quantile(0.99, new.buckets)
    assert (verdict.p99, verdict.before_p99) == (after_p99, before_p99)
    assert bool(verdict.regression) == (after_p99 > ratio * before_p99)
    if verdict.regression:
        assert "before the deploy" in verdict.regression and "max_latency_ratio" in verdict.regression


def test_too_few_requests_before_the_deploy_leave_the_latency_unjudged() -> None:
    old = Reading(10, 0, cumulative([0.0001] * 10))
    verdict = judge(Reading(500, 0, cumulative([2.0] * 500)), old, Limits(3, 0.01, 100, 2.0))
    assert verdict.judged and not verdict.regression and verdict.before_p99 is None
    assert "no p99 before the deploy" in verdict.summary()


def test_summary_line() -> None:
    verdict = judge(Reading(412, 0, cumulative([0.003] * 412)), Reading(1000, 0, cumulative([0.003] * 1000)),
                    Limits(3, 0.01, 100, 2.0))  # fmt: skip
    assert re.fullmatch(r"412 requests, 0\.0% 5xx, p99 \d+\.\d ms vs \d+\.\d ms before", verdict.summary())


def test_parse_leaves_out_metrics_requests_and_counts_5xx() -> None:
    text = f"""# TYPE hello_world_requests_total counter
hello_world_requests_total{{method="GET",path="/",code="200"}} 90.0
hello_world_requests_total{{method="GET",path="/",code="500"}} 10.0
hello_world_requests_total{{method="GET",path="/metrics",code="503"}} 7.0
# TYPE {DURATION} histogram
{DURATION}_bucket{{path="/",le="0.001"}} 100.0
{DURATION}_bucket{{path="/",le="+Inf"}} 100.0
{DURATION}_bucket{{path="/metrics",le="0.001"}} 0.0
{DURATION}_bucket{{path="/metrics",le="+Inf"}} 7.0
# TYPE hello_world_build_info gauge
hello_world_build_info{{version="1",commit="abc"}} 1.0
"""
    assert parse(text) == Reading(100, 10, ((0.001, 100.0), (math.inf, 100.0)), frozenset({"abc"}))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("watch", "soon", "expected a duration"),
        ("max_error_ratio", 0, "expected a number above 0"),
        ("max_error_ratio", "1%", "expected a number above 0"),
        ("max_latency_ratio", -2, "expected a number above 0"),
        ("min_requests", 0, "expected a whole number of at least 1"),
        ("min_requests", 1.5, "expected a whole number of at least 1"),
    ],
)
def test_bad_watch_settings_are_one_line_errors(tmp_path: Path, key: str, value: object, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"system:\n  update:\n    {key}: {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=rf"system\.update\.{key}: {expected}") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_watch_defaults_match_spec() -> None:
    update = load_config(CHECKOUT / "config.yaml")["update"]
    assert (update["watch"], update["max_error_ratio"], update["min_requests"], update["max_latency_ratio"]) == (
        30.0,
        0.01,
        100,
        2.0,
    )


# --- against the real deployment -------------------------------------------------------------------


class CountingLoad(Load):
    """Load, counting the 5xx answers the watch must see apart from failed connections."""

    def __init__(self, port: int, limit: int = 20000) -> None:
        super().__init__(port, limit)
        self.counts["5xx"] = 0

    def check(self, status: int, body: bytes) -> None:
        if status >= 500:
            self.count("5xx")
        else:
            super().check(status, body)


def assert_no_failed_connection(load: Load) -> None:
    assert load.counts["ok"] > 50, load.counts
    assert load.counts["failed"] == load.counts["wrong_body"] == load.counts["reconnects"] == 0, (
        load.counts,
        load.errors,
    )


def watch_config(site: ScratchDeployment, directory: Path, **update: object) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    return {"HELLO_CONFIG": str(site.write_config(directory / "config.yaml", {"update": {**WATCH, **update}}))}


def test_reading_a_live_server_counts_what_it_answered(site: ScratchDeployment) -> None:
    start = read(site.url, timeout=5)
    for path in ["/"] * 7 + ["/no-such-page"] * 3:
        http_request(site.url + path)
    window = read(site.url, timeout=5).since(start)  # our own /metrics reads are left out
    assert (window.requests, window.errors, window.buckets[-1][1]) == (10, 0, 10)
    assert window.commits == {site.served()}


HEALTHZ_TEST = "tests_smoke/check_healthz.py"
# Run as a module in the release under test (the test command's cwd), whose root is then on sys.path.
HEALTHZ_COMMAND = "-m tests_smoke.check_healthz"
HEALTHZ_ONLY = '''"""The bad commit's whole test suite: the new code's site answers /healthz."""
import os
import tempfile

os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()  # the site's metrics live in multiprocess files

from hello.server.routes import make_site, read_build_info  # noqa: E402

site, _ = make_site(read_build_info())
status, headers, body = site.answer("/healthz", None, False)
assert (status, body) == (200, b"ok\\n"), (status, body)
print("/healthz: 200 ok")
'''
BUGGY = "hello/server/protocol.py"  # where a bad commit puts its bug: the HTTP layer answers / itself


def buggy_protocol(text: str, bug: str, prelude: str = "") -> str:
    """hello/server/protocol.py whose / runs `bug` (statements, once its answer is chosen, before it is written) for the
    load's requests: clients sending no User-Agent (validation_test.py's urllib sends one, so the verify step
    passes as for a subtle bug). `prelude` goes before the protocol's classes."""
    edits = {
        "class StopParsing(Exception):": f"{prelude}\n\n\nclass StopParsing(Exception):",
        "        self.idle_since = None  # only a request ends idleness, not stray bytes\n": (
            "        self.idle_since = None  # only a request ends idleness, not stray bytes\n"
            "        self.agent = False\n"
        ),
        "        name = name.lower()\n": (
            "        name = name.lower()\n        if name == b'user-agent':\n            self.agent = True\n"
        ),
    }
    for old, new in edits.items():
        assert text.count(old) == 1, f"hello/server/protocol.py changed: the test cannot insert its bug at {old!r}"
        text = text.replace(old, new)
    # before the answer is written, where respond writes it and where a repeated read is answered without a parse
    write = "        self.write_answer(label, route, status, data, keep_alive, started)\n"
    assert text.count(write) == 2, "hello/server/protocol.py changed: the test cannot insert its bug where / is written"
    guarded = "        if route == '/' and not getattr(self, 'agent', True):\n"
    return text.replace(write, guarded + "".join(f"            {line}\n" for line in bug.splitlines()) + write)


def flaky_protocol(text: str) -> str:
    """hello/server/protocol.py whose / answers 500 to one request in ten of the load."""
    flaky = "status, data = 500, frame((500, (), b'flaky\\n'), service.date, keep_alive, head)"
    bug = f"if next(FLAKY) % 10 == 0:\n    {flaky}"
    return buggy_protocol(text, bug, prelude="FLAKY = __import__('itertools').count(1)")


@pytest.mark.parametrize("deploy", ["local", "compose"])
def test_a_commit_answering_500_to_one_in_ten_is_rolled_back_by_the_watch(
    site: ScratchDeployment, tmp_path: Path, deploy: str
) -> None:
    before = site.served()
    flaky = flaky_protocol((site.deploy / BUGGY).read_text())
    bad = site.commit(f"/ answers 500 to one request in ten ({deploy})", {BUGGY: flaky, HEALTHZ_TEST: HEALTHZ_ONLY})
    settings = {**WATCH, "test_command": f"{site.python} {HEALTHZ_COMMAND}"}
    # compose: the docker stand-in's `compose up` reloads the real server, whose /metrics the watch reads
    env = (
        compose_env(site, tmp_path, update=settings)
        if deploy == "compose"
        else watch_config(site, tmp_path, **settings)
    )
    with CountingLoad(site.port, limit=20000) as load:
        result = site.update(env=env)
    assert result.returncode == 1, shown(result)
    for name in ("test", "deploy", "verify"):
        assert_step(result, name)
    assert_step(result, "watch", "FAILED")
    assert_step(result, "rollback")
    assert re.search(r"watch: \d+\.\d% 5xx of \d+ requests answered by the new code", result.stdout), shown(result)
    assert site.served() == before == site.head()
    assert load.counts["5xx"] > 0  # the bad code served, and was seen
    assert_no_failed_connection(load)
    entry = log_lines(site)[-1]
    assert (entry["outcome"], entry["from"], entry["to"], entry["good"]) == ("rolled-back", before, bad, before)
    assert entry["reason"].startswith("watch: ") and "5xx" in entry["reason"], entry
    assert entry["watch"]["requests"] >= 50 and entry["watch"]["error_ratio"] > 0.05, entry["watch"]
    assert metric(site, "hello_world_update_watch_rollback") == 1
    assert metric(site, "hello_world_update_success") == 0
    history = site.update("history")
    assert f"why   {entry['reason']}" in history.stdout, shown(history)


def test_a_commit_whose_p99_grew_is_rolled_back_by_the_watch(site: ScratchDeployment, tmp_path: Path) -> None:
    before = site.served()
    # answered 500 ms later, without blocking the worker (as the old ASGI bug awaited a sleep)
    later = "self.loop.call_later(0.5, self.write_answer, label, route, status, data, keep_alive, started)\nreturn"
    slow = buggy_protocol((site.deploy / BUGGY).read_text(), later)
    bad = site.commit("/ takes 500 ms", {BUGGY: slow, HEALTHZ_TEST: HEALTHZ_ONLY})
    # 500 ms against the old code's p99 of a few ms (its whole life's histogram, with this load's requests):
    # far past 3x however busy the machine; at about 4 answers a second, 6 s bring the 10 requests to judge from.
    limits = {"watch": "6s", "min_requests": 10, "max_latency_ratio": 3.0}
    env = watch_config(site, tmp_path, test_command=f"{site.python} {HEALTHZ_COMMAND}", **limits)
    with CountingLoad(site.port, limit=20000) as load:
        result = site.update(env=env)
    assert result.returncode == 1, shown(result)
    assert_step(result, "watch", "FAILED")
    assert_step(result, "rollback")
    assert re.search(r"watch: p99 [\d.]+ ms vs [\d.]+ ms before the deploy, [\d.]+x", result.stdout), shown(result)
    assert site.served() == before == site.head()
    assert_no_failed_connection(load)
    entry = log_lines(site)[-1]
    assert (entry["outcome"], entry["to"]) == ("rolled-back", bad)
    assert entry["watch"]["p99"] >= 0.5 and entry["watch"]["before_p99"] < 0.5 / 3, entry["watch"]
    assert metric(site, "hello_world_update_watch_rollback") == 1


def test_a_good_commit_under_load_is_kept_by_the_watch(site: ScratchDeployment, tmp_path: Path) -> None:
    env = watch_config(site, tmp_path, max_latency_ratio=50.0)  # a busy machine's jitter is not the subject
    commit = site.harmless_commit("watched")
    dry = site.update("--dry-run", env=env)
    assert re.search(r"^  watch\s+3s of http://\S+/metrics: 5xx <= 1\.0%, p99 <= 50x before", dry.stdout, re.M), shown(
        dry
    )
    with CountingLoad(site.port, limit=20000) as load:
        result = site.update(env=env)
    assert result.returncode == 0, shown(result)
    assert re.search(
        r"^watch\s+ok\s+\d+\.\d\ds  \d+ requests, 0\.0% 5xx, p99 \S+ ms vs \S+ ms before$", result.stdout, re.M
    ), shown(result)
    assert site.served() == commit
    assert load.counts["5xx"] == 0
    assert_no_failed_connection(load)
    entry = log_lines(site)[-1]
    assert entry["outcome"] == "updated" and entry["watch"]["requests"] >= 50 and not entry["watch"]["regression"]
    assert metric(site, "hello_world_update_watch_rollback") == 0
    assert metric(site, "hello_world_update_watch_requests") >= 50


def test_too_little_traffic_keeps_the_new_code_also_after_a_rollback_by_hand(
    site: ScratchDeployment, tmp_path: Path
) -> None:
    unwatched = watch_config(site, tmp_path / "unwatched", watch=0)
    before = site.harmless_commit("a good release to roll back to")  # this test's own, whatever ran before
    assert site.update(env=unwatched).returncode == 0
    env = watch_config(site, tmp_path, watch="1s", min_requests=1000)
    commit = site.harmless_commit("watched without traffic")
    result = site.update(env=env)
    assert result.returncode == 0, shown(result)
    assert_step(result, "watch", "unjudged")
    assert "too little traffic to judge" in result.stdout and "the new code is kept" in result.stdout
    assert site.served() == commit
    back = site.update("rollback", "--no-test", env=env)  # deploy, verify and watch
    assert back.returncode == 0, shown(back)
    assert_step(back, "watch", "unjudged")
    assert site.served() == before


def test_bad_watch_setting_exits_2(site: ScratchDeployment, tmp_path: Path) -> None:
    env = watch_config(site, tmp_path, max_latency_ratio=0)
    result = site.update(env=env)
    assert result.returncode == 2, shown(result)
    (line,) = result.stderr.strip().splitlines()
    assert "system.update.max_latency_ratio: expected a number above 0, got 0" in line
