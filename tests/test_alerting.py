"""Alerts that reach a person: Alertmanager's config from config.yaml, its secrets, and delivery end to end.

Real parts only: amtool checks and routes the rendered config, and the live test runs a real
hello_world.py, Prometheus and Alertmanager (Debian packages prometheus, prometheus-alertmanager),
a webhook receiver (an HTTP server in the test) and an SMTP sink (aiosmtpd) on free ports.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hello.base.checkout import CHECKOUT
from hello.base.config import ConfigError, load_config
from hello.base.http_client import http_request
from hello.base.proc import free_port, wait_until
from hello.monitoring import alerting, promconfig
from hello.monitoring.webhook_sink import WebhookSink
from tests.support.configs import write_config
from tests.support.monitoring import RULES_DIR, start_alertmanager, start_prometheus
from tests.support.processes import ProcessRegistry
from tests.support.tools import PYTHON, require_tool

SECRET_WEBHOOK = "https://ntfy.example.com/hello-alerts?auth=tk_secret123"
SMTP_PASSWORD = "smtp-secret-456"  # noqa: S105 - a test value


def amtool() -> str:
    return require_tool("amtool", "prometheus-alertmanager")


def system_with(tmp_path: Path, alertmanager: dict[str, Any]) -> dict[str, Any]:
    return load_config(write_config(tmp_path, {"monitoring": {"alertmanager": alertmanager}}))


FULL = {
    "receivers": {
        "webhook_url": "https://hooks.example.com/alerts",
        "email": {"to": "ops@example.com", "from": "hello@example.com", "smarthost": "smtp.example.com:587"},
    },
    "heartbeat_url": "https://hc-ping.example.com/uuid",
}


def route_of(config_path: Path, **labels: str) -> str:
    """The receiver amtool's router picks for an alert with these labels."""
    args = [amtool(), "config", "routes", "test", f"--config.file={config_path}"]
    done = subprocess.run(
        [*args, *(f"{key}={value}" for key, value in labels.items())], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


# --- the rendered Alertmanager config ---


def test_routing_by_severity_with_every_receiver_passes_amtool(tmp_path: Path) -> None:
    system = system_with(tmp_path, FULL)
    path = alerting.write_alertmanager_config(system, tmp_path, environ={})
    done = subprocess.run([amtool(), "check-config", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert route_of(path, alertname="Watchdog", severity="info") == alerting.HEARTBEAT_RECEIVER
    assert route_of(path, alertname="HelloWorldDown", severity="critical") == alerting.NOTIFY_RECEIVER
    assert route_of(path, alertname="HelloWorldBackupFailed", severity="warning") == alerting.NOTIFY_RECEIVER

    config = yaml.safe_load(path.read_text())
    watchdog, critical = config["route"]["routes"]
    assert (critical["group_wait"], critical["repeat_interval"]) == ("10s", "14400s")  # at once; every 4 h
    assert (config["route"]["group_wait"], config["route"]["group_by"]) == ("60s", ["alertname"])  # warnings grouped
    assert (watchdog["repeat_interval"], watchdog["group_wait"]) == ("300s", "0s")  # a ping every 5 minutes
    notify, heartbeat = config["receivers"]
    assert notify["webhook_configs"] == [{"url": FULL["receivers"]["webhook_url"], "send_resolved": True}]
    assert notify["email_configs"][0]["send_resolved"] is True
    assert notify["email_configs"][0]["require_tls"] is True
    assert heartbeat["webhook_configs"] == [{"url": FULL["heartbeat_url"], "send_resolved": False}]
    assert alerting.configured_receivers(config) == ["webhook", "email"]


def test_no_receiver_renders_a_valid_config_that_tells_nobody(tmp_path: Path) -> None:
    path = alerting.write_alertmanager_config(load_config(CHECKOUT / "config.yaml"), tmp_path, environ={})
    done = subprocess.run([amtool(), "check-config", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert alerting.configured_receivers(yaml.safe_load(path.read_text())) == []


def test_secrets_come_from_the_environment_or_the_secrets_file_never_config_yaml(tmp_path: Path) -> None:
    secrets_file = tmp_path / "alerting.env"
    secrets_file.write_text(
        f"# alert delivery secrets\n{alerting.WEBHOOK_ENV}='{SECRET_WEBHOOK}'\n"
        f"export {alerting.SMTP_PASSWORD_ENV}=from-file\n"
    )
    email_settings = {**FULL["receivers"]["email"], "username": "hello"}
    system = system_with(tmp_path, {"receivers": {"email": email_settings}, "secrets_file": str(secrets_file)})
    assert SECRET_WEBHOOK not in Path(system["config_file"]).read_text()

    (tmp_path / "out").mkdir()
    path = alerting.write_alertmanager_config(system, tmp_path / "out", environ={})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    notify = yaml.safe_load(path.read_text())["receivers"][0]
    assert notify["webhook_configs"][0]["url"] == SECRET_WEBHOOK
    assert notify["email_configs"][0]["auth_password"] == "from-file"
    # The environment wins over the file.
    path = alerting.write_alertmanager_config(
        system, tmp_path / "out", environ={alerting.SMTP_PASSWORD_ENV: SMTP_PASSWORD}
    )
    assert yaml.safe_load(path.read_text())["receivers"][0]["email_configs"][0]["auth_password"] == SMTP_PASSWORD


@pytest.mark.parametrize(
    ("alertmanager", "environ", "message"),
    [
        ({"receivers": {"email": {"to": "ops@example.com"}}}, {}, "receivers.email.from: needed"),
        ({"receivers": {"email": {**FULL["receivers"]["email"], "username": "u"}}}, {}, "HELLO_SMTP_PASSWORD is not"),
        ({"secrets_file": "/nonexistent/alerting.env"}, {}, "secrets_file: cannot read /nonexistent/alerting.env"),
        ({}, {alerting.WEBHOOK_ENV: "not a url"}, "HELLO_ALERT_WEBHOOK_URL: expected an http"),
    ],
    ids=["partial-email", "password-missing", "secrets-file-missing", "bad-webhook-env"],
)
def test_unusable_alerting_settings_exit_2_in_one_line(
    tmp_path: Path, alertmanager: dict, environ: dict, message: str
) -> None:
    system = system_with(tmp_path, alertmanager)
    with pytest.raises(alerting.AlertingConfigError, match=re.escape(message)):
        alerting.alertmanager_config(system, alerting.read_secrets(system, environ))
    env = {
        key: value for key, value in os.environ.items() if key not in (alerting.WEBHOOK_ENV, alerting.SMTP_PASSWORD_ENV)
    }
    env.update(environ, HELLO_CONFIG=system["config_file"])
    done = subprocess.run(
        [PYTHON, str(CHECKOUT / "scripts" / "monitor.py"), "render", "alertmanager"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("to", "nobody", "system.monitoring.alertmanager.receivers.email.to: expected an e-mail address"),
        (
            "smarthost",
            "smtp.example.com",
            "system.monitoring.alertmanager.receivers.email.smarthost: expected host:port",
        ),
    ],
)
def test_config_refuses_bad_email_settings(tmp_path: Path, key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        system_with(tmp_path, {"receivers": {"email": {key: value}}})


# --- make monitor follows the server that runs ---


def test_monitor_scrapes_the_port_of_the_running_server_not_config_yaml(
    tmp_path: Path, processes: ProcessRegistry
) -> None:
    config_port, running_port = free_port(), free_port()
    path = write_config(tmp_path, {"server": {"host": "127.0.0.1", "port": config_port}})
    system = load_config(path)
    target, why = promconfig.scrape_target(system)
    assert target == f"127.0.0.1:{config_port}" and "no server runs" in why

    env = {**os.environ, "HELLO_CONFIG": str(path)}
    done = subprocess.run(
        [PYTHON, str(CHECKOUT / "scripts" / "service.py"), "start", "--port", str(running_port)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    pidfile = tmp_path / "run" / "hello_world.pid"
    if pidfile.exists():
        processes.adopt(int(pidfile.read_text()))
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        target, why = promconfig.scrape_target(system)
        assert target == f"127.0.0.1:{running_port}" and "the running server" in why
        local = yaml.safe_load(promconfig.local_config_text(system))
        assert local["scrape_configs"][0]["static_configs"][0]["targets"] == [f"127.0.0.1:{running_port}"]
    finally:
        subprocess.run([PYTHON, str(CHECKOUT / "scripts" / "service.py"), "stop"], env=env, timeout=60, check=False)
    assert promconfig.scrape_target(system)[0] == f"127.0.0.1:{config_port}"  # stopped: config.yaml's again


# --- end to end: a stopped server reaches the webhook and the mailbox, and its recovery too ---


class SmtpSink:
    """A real SMTP server (aiosmtpd) on a free port that keeps every message it receives."""

    def __init__(self) -> None:
        controller_module = pytest.importorskip("aiosmtpd.controller")
        self.messages: list[tuple[float, email.message.EmailMessage]] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                sink.messages.append((time.time(), message))
                return "250 OK"

        self.port = free_port()
        self.controller = controller_module.Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def find(self, *words: str) -> list[tuple[float, str]]:
        """(time, subject) of the messages whose subject and text hold every word."""
        found = []
        for when, message in list(self.messages):
            parts = [part.get_content() for part in message.walk() if part.get_content_maintype() == "text"]
            text = str(message["Subject"]) + "\n" + "\n".join(parts)
            if all(word in text for word in words):
                found.append((when, str(message["Subject"])))
        return found

    def close(self) -> None:
        self.controller.stop()


def fast_rules(directory: Path, alert: str, duration: str) -> Path:
    """A copy of monitoring/rules with the `for:` of one alert shortened, for a test that must not wait a minute."""
    shutil.copytree(RULES_DIR, directory)
    path = directory / "hello_world.rules.yml"
    document = yaml.safe_load(path.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"] if rule.get("alert") == alert]
    assert rules, f"no alert {alert} in {path}"
    for rule in rules:
        rule["for"] = duration
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return directory


def test_a_stopped_server_reaches_the_webhook_and_the_mailbox_and_so_does_its_recovery(
    tmp_path: Path, processes: ProcessRegistry, hello_server, webhook_sink: WebhookSink
) -> None:
    require_tool("prometheus")
    server = hello_server()
    smtp = SmtpSink()
    try:
        # Short intervals, through config: what the operator tunes too.
        system = system_with(
            tmp_path / "alerting",
            {
                "url": f"http://127.0.0.1:{free_port()}",
                "receivers": {
                    "webhook_url": webhook_sink.url + "/alerts",
                    "email": {
                        "to": "ops@example.com",
                        "from": "hello@example.com",
                        "smarthost": f"127.0.0.1:{smtp.port}",
                        "require_tls": False,
                    },
                },
                "heartbeat_url": webhook_sink.url + "/heartbeat",
                "timing": {
                    "critical_wait": "1s",
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "heartbeat_interval": "2s",
                },
            },
        )
        alertmanager = start_alertmanager(
            processes, tmp_path / "am", system, promconfig.url_port(system["monitoring"]["alertmanager"]["url"], "")
        )
        rules = fast_rules(tmp_path / "rules", "HelloWorldDown", "2s")
        (tmp_path / "prom").mkdir()
        prometheus = start_prometheus(
            processes,
            tmp_path / "prom",
            server.port,
            None,
            1.0,
            rules_dir=rules,
            alertmanager_url=alertmanager,
            # Its first sends come before it has found Alertmanager and are dropped; resend soon, not after 1m.
            extra_args=("--rules.alert.resend-delay=1s",),
        )

        # The Watchdog reaches the heartbeat URL, and nothing else is told while all is well.
        wait_until(lambda: webhook_sink.alerts("/heartbeat", "Watchdog", "firing"), 45, "the Watchdog's ping")
        wait_until(
            lambda: json.loads(http_request(f"{prometheus.url}/api/v1/query?query=up")[2])["data"]["result"],
            30,
            "the first scrape",
        )
        assert not webhook_sink.alerts("/alerts", "HelloWorldDown", "firing")

        stopped = time.time()
        os.kill(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0

        firing = wait_until(
            lambda: webhook_sink.alerts("/alerts", "HelloWorldDown", "firing"), 60, "HelloWorldDown at the webhook"
        )
        when, alert = firing[0]
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["instance"] == f"127.0.0.1:{server.port}"
        assert alert["annotations"]["summary"] == "Hello World is down"
        assert alert["annotations"]["runbook_url"] == "docs/runbooks.md#helloworlddown"
        assert f"127.0.0.1:{server.port}" in alert["annotations"]["description"]
        print(f"\nstopped server -> webhook notification: {when - stopped:.1f}s (HelloWorldDown for: 2s, 1s intervals)")
        mail = wait_until(
            lambda: smtp.find("FIRING", "HelloWorldDown", "docs/runbooks.md#helloworlddown", "critical"),
            60,
            "HelloWorldDown in the mailbox",
        )
        assert mail

        server.start(processes)  # the same port and config: Prometheus's target comes back
        wait_until(
            lambda: webhook_sink.alerts("/alerts", "HelloWorldDown", "resolved"), 60, "the resolved notification"
        )
        wait_until(lambda: smtp.find("RESOLVED", "HelloWorldDown"), 60, "the resolved mail")
        # The heartbeat gets the Watchdog only: a ping, never the service's alerts.
        names = {a["labels"]["alertname"] for _, body in webhook_sink.payloads("/heartbeat") for a in body["alerts"]}
        assert names == {"Watchdog"}
    finally:
        smtp.close()


# --- validation: the receiver check, and each run's results as metrics ---


def validate_monitoring(config: Path) -> tuple[int, dict[str, tuple[str, str]]]:
    done = subprocess.run(
        [PYTHON, str(CHECKOUT / "validation_test.py"), "--json", "--only", "monitoring"],
        capture_output=True,
        text=True,
        env={**os.environ, "HELLO_CONFIG": str(config)},
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, {r["check"]: (r["status"], r["detail"]) for r in json.loads(done.stdout)}


@pytest.mark.parametrize("alertmanager_runs", [True, False], ids=["no-receiver", "no-alertmanager-url"])
def test_validation_fails_without_a_receiver_saying_what_to_set_and_records_it(
    tmp_path: Path, processes: ProcessRegistry, alertmanager_runs: bool
) -> None:
    url = f"http://127.0.0.1:{free_port()}" if alertmanager_runs else None
    overrides = {
        "monitoring": {
            "prometheus": {"url": f"http://127.0.0.1:{free_port()}"},  # nothing listens: its checks fail fast
            "pushgateway": {"url": None},
            "alertmanager": {"url": url},
            "node_exporter": {"url": None},
        },
        "validation": {"timeout": "2s"},
    }
    config = write_config(tmp_path, overrides)
    if url:
        start_alertmanager(processes, tmp_path / "am", load_config(config), promconfig.url_port(url, ""))
    code, results = validate_monitoring(config)
    assert code == 1
    status, detail = results["a receiver is configured"]
    assert status == "FAIL"
    assert "set system.monitoring.alertmanager.receivers.webhook_url (or env HELLO_ALERT_WEBHOOK_URL)" in detail
    assert ("tells nobody" in detail) if url else ("alertmanager.url is null" in detail)
    assert results["Alertmanager is ready"][0] == ("PASS" if url else "SKIP")
    assert results["node_exporter is scraped"][0] == "SKIP"

    textfile = (tmp_path / "run" / "metrics" / "hello_world_validation.prom").read_text()
    assert "hello_world_validation_success 0.0" in textfile
    assert 'hello_world_validation_check_success{check="a receiver is configured",group="monitoring"} 0.0' in textfile
    assert 'check="node_exporter is scraped"' not in textfile  # a SKIP is no result
    assert "hello_world_validation_last_run_timestamp_seconds" in textfile
