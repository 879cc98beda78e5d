"""Tests of hello/base/config.py: defaults, the seed's file, and one clear line for each kind of bad file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hello.base.checkout import CHECKOUT
from hello.base.config import ConfigError, load_config, server_url
from hello.base.config_schema import SCHEMA
from hello.base.request_metrics import LATENCY_BUCKETS
from tests.support.configs import write_config

pytestmark = pytest.mark.fast  # the in-process tier (make test-fast)

SEED_CONFIG = """\
# config.yaml
system:
  monitoring:
    prometheus:
      scrape_interval: 15s
    grafana:
      dashboard: hello-world-dashboard
  backup:
    schedule: daily
    time: 02:00
  update:
    protocol: update_protocol.py
"""


def load_text(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def defaults(schema: dict) -> dict:
    return {key: defaults(spec) if isinstance(spec, dict) else spec[0](spec[1]) for key, spec in schema.items()}


def test_the_seed_config_loads_unchanged_and_keeps_its_meaning(tmp_path):
    config = load_text(tmp_path, SEED_CONFIG)
    assert config["backup"]["time"] == "02:00"  # YAML 1.1 reads an unquoted 02:00 as the integer 120
    assert config["backup"]["schedule"] == "daily"
    assert config["monitoring"]["prometheus"]["scrape_interval"] == 15.0
    assert config["monitoring"]["grafana"]["dashboard"] == "hello-world-dashboard"
    assert config["update"]["protocol"] == "update_protocol.py"
    assert config["server"] == {**config["server"], "host": "127.0.0.1", "port": 8000, "workers": 1}
    assert config["backup"]["destination"] == str(tmp_path / "backups")  # relative to the file's folder


def test_the_shipped_config_yaml_equals_the_defaults():
    config = load_config(CHECKOUT / "config.yaml")
    expected = defaults(SCHEMA)["system"]
    for key in ("run_dir",):
        expected[key] = str((CHECKOUT / expected[key]).resolve())
    for key in ("source", "destination"):
        expected["backup"][key] = str((CHECKOUT / expected["backup"][key]).resolve())
    expected["backup"]["vault"]["store"] = str((CHECKOUT / expected["backup"]["vault"]["store"]).resolve())
    config.pop("config_file")
    assert config == expected
    assert server_url(config) == "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    "written, meant", [("23:30", "23:30"), ('"23:30"', "23:30"), ("'7:05'", "07:05"), ("00:00", "00:00")]
)
def test_times_of_day(tmp_path, written, meant):
    assert load_text(tmp_path, f"system:\n  backup:\n    time: {written}\n")["backup"]["time"] == meant


@pytest.mark.parametrize("written, seconds", [("250ms", 0.25), ("1s", 1.0), (0.1, 0.1)])
def test_slo_latency_threshold_is_a_bucket_of_the_duration_histogram(tmp_path, written, seconds):
    system = load_config(write_config(tmp_path, {"slo": {"latency": {"threshold": written}}}))
    assert system["slo"]["latency"]["threshold"] == seconds
    assert seconds in LATENCY_BUCKETS  # the very float the server's histogram uses (its le label)


@pytest.mark.parametrize("written, seconds", [("15s", 15), ("1m", 60), ("1h30m", 5400), ("500ms", 0.5), ("30", 30)])
def test_durations(tmp_path, written, seconds):
    text = f"system:\n  monitoring:\n    prometheus:\n      scrape_interval: {written}\n"
    assert load_text(tmp_path, text)["monitoring"]["prometheus"]["scrape_interval"] == seconds


@pytest.mark.parametrize(
    "text, expected",
    [
        ("system:\n  backup:\n    time: 25:00\n", "config.yaml: system.backup.time: expected HH:MM, got '25:00'"),
        ("system:\n  backup:\n    time: 7pm\n", "config.yaml: system.backup.time: expected HH:MM, got '7pm'"),
        ("system:\n  backup:\n    time: '12:61'\n", "config.yaml: system.backup.time: expected HH:MM, got '12:61'"),
        (
            "system:\n  monitoring:\n    prometheus:\n      scrape_interval: 15x\n",
            "config.yaml: system.monitoring.prometheus.scrape_interval: expected a duration such as 15s, 5m or 1h30m,"
            " got '15x'",
        ),
        (
            "system:\n  server:\n    port: 70000\n",
            "config.yaml: system.server.port: expected a whole number from 1 to 65535, got 70000",
        ),
        (
            "system:\n  server:\n    port: '8000'\n",
            "config.yaml: system.server.port: expected a whole number from 1 to 65535,"
            " got the string '8000' (a number in quotes: write it without the quotes)",
        ),
        (
            "system:\n  server:\n    workers: true\n",
            "config.yaml: system.server.workers: expected a whole number from 1 to 64, got true",
        ),
        (
            "system:\n  sever:\n    port: 1\n",
            "config.yaml: system.sever: unknown key (did you mean 'server'?); known keys here: run_dir, server,"
            " monitoring, backup, update, kubernetes, slo, validation",
        ),
        (
            "system:\n  backup:\n    kep: {daily: 1}\n",
            "config.yaml: system.backup.kep: unknown key (did you mean 'keep'?); known keys here: schedule, time,"
            " timezone, source, destination, exclude, exclude_secrets, keep, offsite, hooks, vault",
        ),
        ("system:\n  backup: daily\n", "config.yaml: system.backup: expected a mapping of keys, got 'daily'"),
        (
            "system:\n  backup:\n    timezone: Mars/Olympus\n",
            "config.yaml: system.backup.timezone: expected an IANA time zone such as Europe/Berlin, or null,"
            " got 'Mars/Olympus'",
        ),
        (
            "system:\n  update:\n    deploy: swarm\n",
            "config.yaml: system.update.deploy: expected one of local, compose, kubernetes, got 'swarm'",
        ),
        (
            "system:\n  kubernetes:\n    registry: ''\n",
            "config.yaml: system.kubernetes.registry: expected a non-empty string, got ''",
        ),
        (
            "system:\n  monitoring:\n    pushgateway:\n      url: localhost:9091\n",
            "config.yaml: system.monitoring.pushgateway.url: expected an http:// or https:// URL or null,"
            " got 'localhost:9091'",
        ),
        (
            "system:\n  validation:\n    interval: 7m\n",
            "config.yaml: system.validation.interval: expected an interval cron can run (1m to 60m dividing an hour,"
            " or 1h to 24h dividing a day) or null, got '7m'",
        ),
        (
            "system:\n  server:\n  port: 1\n  - x\n",
            "config.yaml:4:3: invalid YAML: expected <block end>, but found '-'",
        ),
        (
            "system:\n  slo:\n    latency: {threshold: 120ms}\n",
            "config.yaml: system.slo.latency.threshold: expected a bucket boundary of"
            " hello_world_request_duration_seconds (0.5ms, 1ms, 2.5ms, 5ms, 10ms, 25ms, 50ms, 100ms, 250ms, 500ms,"
            " 1000ms, 2500ms), got '120ms'",
        ),
        (
            "system:\n  slo:\n    availability: 100\n",
            "config.yaml: system.slo.availability: expected a percentage above 0 and below 100 (e.g. 99.9), got 100",
        ),
        ("system: [\n", "config.yaml:2:1: invalid YAML: expected the node content, but found '<stream end>'"),
    ],
)
def test_bad_files_are_refused_with_one_line(tmp_path, monkeypatch, text, expected):
    monkeypatch.chdir(tmp_path)
    assert error_of(tmp_path, text) == expected


def test_a_missing_file_named_by_hello_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HELLO_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"nope.yaml: no such config file \(named by HELLO_CONFIG\)"):
        load_config()


@pytest.mark.parametrize("script", ["hello_world.py", "-m hello.base.config", "scripts/service.py status"])
def test_scripts_refuse_a_bad_config_before_anything_runs_with_exit_2(tmp_path, script):
    bad = tmp_path / "config.yaml"
    bad.write_text("system:\n  backup:\n    time: 25:00\n")
    result = subprocess.run(
        [sys.executable, *script.split()],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "HELLO_CONFIG": str(bad)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"{bad}: system.backup.time: expected HH:MM, got '25:00'"]
    assert not (tmp_path / "run").exists()
