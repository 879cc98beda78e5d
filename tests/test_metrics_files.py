"""hello/server/metrics_files.py: requests counted straight into prometheus_client's files, dead workers' files merged
with every count exact, /metrics flat over reloads, and the internals all that relies on.

Real prometheus_client processes write the files (each child process is a worker that comes and goes),
real merges and scrapes read them, and a real server is reloaded with SIGHUP. The first tests fail loudly,
naming what changed, when a prometheus_client upgrade changes what hello/server/metrics_files.py relies on: then
re-read the internals its docstring lists, adjust it, and update TESTED_WITH.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from hello.base.checkout import CHECKOUT
from hello.base.http_client import http_request
from hello.base.proc import wait_until
from hello.server import metrics_files
from tests.support.tools import PYTHON

# A worker: counts, observes (multiples of 1/8, so every sum is exact in binary) and exits.
WORKER = """
import os, sys
from prometheus_client import Counter, Gauge, Histogram, Summary
seed = int(sys.argv[1])
requests = Counter("t_requests", "requests", ["path", "code"])
latency = Histogram("t_latency_seconds", "latency", ["path"], buckets=(0.25, 1.0, 4.0))
sizes = Summary("t_size_bytes", "sizes")
Gauge("t_info", "info", ["version"], multiprocess_mode="livemax").labels(str(seed)).set(1)
for i in range(seed % 7 + 3):
    path = ("/", "/metrics", "other")[(seed + i) % 3]
    requests.labels(path, ("200", "404")[i % 2]).inc(seed % 5 + 1)
    latency.labels(path).observe(((seed * 3 + i) % 40) / 8)
    sizes.observe(((seed + i) % 16) / 8)
print(os.getpid())
"""


def run_worker(directory: Path, seed: int) -> int:
    """Run one worker process to its end; its PID."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(seed)], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def scrape(directory: Path, collector_class: type = MultiProcessCollector) -> dict[tuple, float]:
    """Every sample the collector makes of the directory: (name, labels) -> value."""
    registry = CollectorRegistry()
    collector_class(registry, path=str(directory))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        for sample in metric.samples
    }


def db_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.db"))


def test_the_installed_and_pinned_versions_are_the_ones_the_module_was_written_against():
    pins = dict(
        line.split("#")[0].strip().split("==")
        for line in (CHECKOUT / "requirements.txt").read_text().splitlines()
        if "==" in line
    )
    for dist, version in metrics_files.TESTED_WITH.items():
        installed = importlib.metadata.version(dist)
        assert installed == version, (
            f"{dist} {installed} is installed; hello/server/metrics_files.py was written against {version}: "
            "re-check the internals its docstring names, then update TESTED_WITH"
        )
        pinned = pins.get(dist) or pins.get(dist.replace("-", "_"))
        assert pinned == version, (
            f"requirements.txt pins {dist} {pinned}, hello/server/metrics_files.py names {version}"
        )


def test_request_metrics_write_prometheus_client_shared_files_as_its_collector_reads_them(tmp_path):
    # In a fresh process: multiprocess mode is chosen when prometheus_client is imported.
    script = """
import json
import pytest
from prometheus_client import CollectorRegistry, multiprocess
from hello.server.metrics_files import RequestMetrics
metrics = RequestMetrics(("/", "other"), (0.001, 0.1))
for _ in range(3):
    metrics.observe("GET", "/", 200, 0.0005)
metrics.observe("GET", "other", 404, 0.05)
for index in range(1000):  # enough new series to make prometheus_client grow its file and map it anew
    metrics.observe("GET", "/", 1000 + index, 0.5)
metrics.observe("GET", "/", 200, 0.5)  # a series from before the growth, through its old map
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
samples = [sample for metric in registry.collect() for sample in metric.samples]
print(json.dumps({s.name + json.dumps(s.labels, sort_keys=True): s.value for s in samples}))
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run([PYTHON, "-c", script], cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    samples = json.loads(result.stdout)

    def sample(name: str, **labels: str) -> float:
        return samples[name + json.dumps(labels, sort_keys=True)]

    assert max(path.stat().st_size for path in tmp_path.glob("counter_*.db")) > 65536, "the file did not grow"
    assert sample("hello_world_requests_total", method="GET", path="/", code="200") == 4
    assert sample("hello_world_requests_total", method="GET", path="/", code="1999") == 1  # after the growth
    assert sample("hello_world_requests_total", method="GET", path="other", code="404") == 1
    assert sample("hello_world_request_duration_seconds_bucket", path="/", le="0.001") == 3
    assert sample("hello_world_request_duration_seconds_bucket", path="/", le="+Inf") == 1004
    assert sample("hello_world_request_duration_seconds_count", path="/") == 1004
    assert sample("hello_world_request_duration_seconds_sum", path="/") == pytest.approx(3 * 0.0005 + 1001 * 0.5)
    assert sample("hello_world_request_duration_seconds_bucket", path="other", le="0.1") == 1


def test_the_shared_page_is_rendered_at_most_once_a_second_after_a_burst_and_shared(tmp_path):
    pages = metrics_files.SharedPage(tmp_path, burst=3, per_second=1.0)
    other_worker = metrics_files.SharedPage(tmp_path, burst=0, per_second=0.0)  # renders only with no page yet
    renders: list[int] = []

    def render() -> bytes:
        renders.append(len(renders))
        return b"page %d" % len(renders)

    started = time.monotonic()
    served = [pages.render_or_newest("text", render) for _ in range(50)]
    elapsed = time.monotonic() - started
    assert served[:3] == [b"page 1", b"page 2", b"page 3"]  # scrapes now and then: always a fresh page
    assert len(renders) <= 3 + elapsed + 1, f"{len(renders)} renders in {elapsed:.2f} s"  # a flood: one a second
    assert served[-1] == b"page %d" % len(renders)
    assert other_worker.render_or_newest("text", render) == served[-1]  # the newest page, whoever rendered it
    wait_until(lambda: pages.render_or_newest("text", render) != served[-1], 5, "a new render a second later")
    assert other_worker.render_or_newest("text", render) == b"page %d" % len(renders)
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".db") or ".tmp" in path.name]


def test_a_scraper_of_one_format_leaves_the_other_its_renders(tmp_path, monkeypatch):
    """Prometheus scraping OpenMetrics once a second took the one render a second the text page had too, so a
    text scraper got the same stale page for as long as Prometheus scraped (validation's counter check failed)."""
    now = [100.0]
    monkeypatch.setattr(metrics_files.time, "monotonic", lambda: now[0])
    pages = metrics_files.SharedPage(tmp_path, burst=1, per_second=1.0)
    assert pages.render_or_newest("text", lambda: b"text 1") == b"text 1"
    for second in range(1, 4):
        now[0] += 1.0
        pages.render_or_newest("openmetrics", lambda second=second: b"openmetrics %d" % second)
        assert pages.render_or_newest("text", lambda second=second: b"text %d" % (second + 1)) == b"text %d" % (
            second + 1
        ), "a fresh text page each second"


def test_prometheus_client_files_are_named_and_read_as_the_merge_expects(tmp_path):
    """The parts of prometheus_client's internals the merge depends on (hello/server/metrics_files.py's docstring)."""
    pid = run_worker(tmp_path, seed=1)
    for kind in metrics_files.SUMMED_TYPES:
        path = metrics_files.worker_file(tmp_path, kind, pid)
        assert path.exists(), (
            f"prometheus_client no longer writes {path.name}: hello/server/metrics_files.py must follow"
        )
        values = list(MmapedDict.read_all_values_from_file(str(path)))
        assert values and all(len(entry) == 4 for entry in values), "MmapedDict's record layout changed"
        assert all(json.loads(key)[0].startswith("t_") for key, *_ in values)
    assert (tmp_path / f"gauge_livemax_{pid}.db").exists()
    # The collector reads every *.db and nothing else: the merged files count, the scratch and lock files do not.
    assert metrics_files.worker_file(tmp_path, "counter", metrics_files.MERGED).name.endswith(".db")
    assert not metrics_files.LOCK_NAME.endswith(".db")


def test_merging_dead_workers_changes_no_sample_and_leaves_one_file_per_type(tmp_path):
    pids = [run_worker(tmp_path, seed) for seed in range(8)]
    before = scrape(tmp_path)
    assert before[("t_requests_total", (("code", "200"), ("path", "/")))] > 0
    for pid in pids[:-1]:  # the last one stands for a live worker: its files stay as they are
        assert metrics_files.merge_dead(tmp_path, pid) == 3
        assert scrape(tmp_path) == before  # exact: not one count lost or doubled, after every merge
        assert scrape(tmp_path, metrics_files.LockedCollector) == before
    assert metrics_files.merge_dead(tmp_path, pids[0]) == 0  # merged already: nothing left to add
    live = pids[-1]
    merged = [
        metrics_files.worker_file(tmp_path, kind, metrics_files.MERGED).name
        for kind in ("counter", "histogram", "summary")
    ]
    livemax = [f"gauge_livemax_{pid}.db" for pid in pids]  # mark_process_dead's part, not the merge's
    expected = sorted(merged + [f"{kind}_{live}.db" for kind in ("counter", "histogram", "summary")] + livemax)
    assert db_files(tmp_path) == expected
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_scrapes_during_merges_see_every_count_exactly_once(tmp_path):
    """A scrape racing the merges never sees a dead worker's counts twice or not at all (nor a missing file)."""
    pid = run_worker(tmp_path, seed=3)
    # Many dead workers: copies of a real one's files under other PIDs (what 150 reloads leave behind).
    fake_pids = range(4_000_000, 4_000_150)  # above Linux's pid_max: no live process has these
    for fake in fake_pids:
        for kind in metrics_files.SUMMED_TYPES:
            shutil.copy(metrics_files.worker_file(tmp_path, kind, pid), metrics_files.worker_file(tmp_path, kind, fake))
    expected = scrape(tmp_path)
    seen: list[dict] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set():
            try:
                seen.append(scrape(tmp_path, metrics_files.LockedCollector))
            except BaseException as exc:  # noqa: BLE001 - any failure of a scrape fails the test below
                errors.append(exc)
                return

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        wait_until(lambda: seen or errors, 60, "a first scrape")
        for fake in fake_pids:
            metrics_files.merge_dead(tmp_path, fake)
        scraped = len(seen)
        wait_until(lambda: len(seen) > scraped or errors, 60, "a scrape after the merges")
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors, errors
    wrong = [index for index, sample in enumerate(seen) if sample != expected]
    assert not wrong, f"{len(wrong)} of {len(seen)} scrapes saw other counts"
    assert len(db_files(tmp_path)) == 7  # the live worker's 3 + its livemax gauge + 3 merged


def test_a_corrupt_dead_file_is_left_in_place_and_logged(tmp_path, caplog):
    pid = run_worker(tmp_path, seed=2)
    counter = metrics_files.worker_file(tmp_path, "counter", pid)
    data = bytearray(counter.read_bytes())
    data[0:4] = (len(data) + 64).to_bytes(4, "little")  # "used" beyond the file: prometheus_client refuses it
    counter.write_bytes(bytes(data))
    metrics_files.merge_dead_quietly(tmp_path, pid)
    assert counter.exists()
    assert f"could not merge the metric files of worker {pid}" in caplog.text


# --- the server: reloads leave no files behind and lose no count ---


def test_reloads_keep_metric_files_flat_and_every_request_counted(hello_server):
    server = hello_server(workers=1)
    run = server.config_path.parent / "run"
    sent = 0
    for reload in range(1, 7):
        for _ in range(10):
            assert http_request(server.url + "/")[0] == 200
            sent += 1
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(
            lambda: json.loads((run / "hello_world.state.json").read_text()).get("reloads", 0) >= reload,  # noqa: B023
            60,
            f"reload {reload}",
        )
    state = json.loads((run / "hello_world.state.json").read_text())
    assert state["last_reload"]["ok"], state
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")

    def only_live_and_merged() -> list[str]:
        live = children.read_text().split()  # the old worker gone: only the new one is left
        names = db_files(run / "multiproc")
        pids = {re.search(r"_([^_]+)\.db$", name).group(1) for name in names}
        return names if len(live) == 1 and pids <= {metrics_files.MERGED, *live} else []

    names = wait_until(only_live_and_merged, 30, "the old workers' files to be merged")
    assert len(names) <= 5, names  # live counter, histogram, livemax gauge; merged counter, histogram

    def counted() -> float:
        body = http_request(server.url + "/metrics")[2].decode()
        match = re.search(r'^hello_world_requests_total\{code="200",method="GET",path="/"\} (\S+)$', body, re.M)
        return float(match.group(1)) if match else 0.0

    wait_until(lambda: counted() >= sent, 10, f"{sent} requests counted")
    assert counted() == sent
