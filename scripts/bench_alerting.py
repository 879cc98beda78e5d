"""Measure the time from a stopped server to the webhook's HelloWorldDown notification.

    python -m scripts.bench_alerting [--runs 2] [--scrape-interval 1s] [--critical-wait 1s] [--json]
                                                                              (make bench-alerting)

On a scratch deployment in a temp folder, on free ports: a real `hello_world.py`, `scripts/monitor.py
start` (Prometheus and Alertmanager from the host's binaries, the repo's alert rules unchanged, so
HelloWorldDown keeps its `for: 1m`) and a webhook receiver of its own (hello/monitoring/webhook_sink.py). Each
run stops the server (SIGTERM, waits for its exit), takes the time until the webhook receives
HelloWorldDown firing, starts the server again and waits for the resolved notification (also timed).
It prints each run, then what governs the figure with config.yaml's defaults.

Exit 0 when every run was notified, 1 when one was not within the deadline, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
import yaml  # noqa: E402

from hello.base.config import DEFAULT_PATH, load_config  # noqa: E402
from hello.base.config_schema import parse_duration  # noqa: E402
from hello.base.http_client import http_get  # noqa: E402
from hello.base.proc import free_port, wait_until  # noqa: E402
from hello.monitoring.webhook_sink import WebhookSink  # noqa: E402

DEADLINE = 300.0  # seconds a notification may take before the run counts as failed
DOWN_FOR = 60.0  # HelloWorldDown's `for:` in monitoring/rules/hello_world.rules.yml


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_config(root: Path, scrape_interval: str, critical_wait: str, sink: WebhookSink) -> Path:
    system = yaml.safe_load(DEFAULT_PATH.read_text())["system"]
    system["run_dir"] = str(root / "run")
    system["server"].update(host="127.0.0.1", port=free_port())
    monitoring = system["monitoring"]
    monitoring["prometheus"].update(url=f"http://127.0.0.1:{free_port()}", scrape_interval=scrape_interval)
    monitoring["pushgateway"]["url"] = None
    monitoring["node_exporter"]["url"] = None
    alertmanager = monitoring["alertmanager"]
    alertmanager.update(url=f"http://127.0.0.1:{free_port()}", heartbeat_url=None)
    alertmanager["receivers"]["webhook_url"] = sink.url + "/alerts"
    alertmanager["timing"].update(critical_wait=critical_wait, group_interval="1s")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({"system": system}, sort_keys=False))
    return path


class Server:
    def __init__(self, env: dict[str, str], url: str, log: Path) -> None:
        self.env, self.url, self.log = env, url, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "hello_world.py")],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: http_get(self.url + "/readyz", timeout=1)[0] == 200, 30, "ready server")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


def one_run(server: Server, sink: WebhookSink) -> dict[str, float]:
    seen = len(sink.alerts("/alerts", "HelloWorldDown", "firing"))
    server.stop()
    stopped = time.time()
    fired = wait_until(lambda: sink.alerts("/alerts", "HelloWorldDown", "firing")[seen:], DEADLINE, "notification")
    notified = fired[0][0] - stopped
    resolved_seen = len(sink.alerts("/alerts", "HelloWorldDown", "resolved"))
    server.start()
    started = time.time()
    back = wait_until(lambda: sink.alerts("/alerts", "HelloWorldDown", "resolved")[resolved_seen:], DEADLINE, "resolve")
    return {"down_to_webhook_s": round(notified, 2), "up_to_resolved_s": round(back[0][0] - started, 2)}


def governs(defaults: dict[str, Any]) -> str:
    scrape = defaults["monitoring"]["prometheus"]["scrape_interval"]
    wait = defaults["monitoring"]["alertmanager"]["timing"]["critical_wait"]
    low, high = DOWN_FOR + wait, scrape + DOWN_FOR + scrape + wait
    return (
        f"with config.yaml's defaults: up to one scrape interval to see the failed scrape ({scrape:g}s), "
        f"HelloWorldDown's for: ({DOWN_FOR:g}s), up to one evaluation interval ({scrape:g}s) and "
        f"alertmanager.timing.critical_wait ({wait:g}s): {low:g}s to {high:g}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_alerting.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--scrape-interval", default="1s", help="Prometheus scrape and evaluation interval")
    parser.add_argument("--critical-wait", default="1s", help="alertmanager.timing.critical_wait")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        parse_duration(args.scrape_interval), parse_duration(args.critical_wait)
    except ValueError as exc:
        parser.error(str(exc))
    sink = WebhookSink()
    with tempfile.TemporaryDirectory(prefix="hello-bench-alerting-") as temp:
        root = Path(temp)
        config = write_config(root, args.scrape_interval, args.critical_wait, sink)
        system = load_config(config)
        env = {**os.environ, "HELLO_CONFIG": str(config)}
        server = Server(env, f"http://127.0.0.1:{system['server']['port']}", root / "server.log")
        monitor = [sys.executable, str(REPO / "scripts" / "monitor.py")]
        results: list[dict[str, float]] = []
        try:
            server.start()
            done = subprocess.run([*monitor, "start"], env=env, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                say(f"bench_alerting: monitor.py start failed: {done.stderr.strip()}")
                return 1
            prometheus = system["monitoring"]["prometheus"]["url"]
            query = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": 'up{job="hello-world"} == 1'})
            wait_until(lambda: json.loads(http_get(query, 2)[1])["data"]["result"], 60, "first scrape")
            for run in range(1, args.runs + 1):
                say(f"run {run}/{args.runs}: stopping the server ...")
                results.append(one_run(server, sink))
                say(f"run {run}: {results[-1]}")
        except TimeoutError as exc:
            say(f"bench_alerting: {exc}")
            return 1
        finally:
            server.stop()
            subprocess.run([*monitor, "stop"], env=env, capture_output=True, timeout=120, check=False)
            sink.close()
    times = [r["down_to_webhook_s"] for r in results]
    summary = {
        "scrape_interval": args.scrape_interval,
        "critical_wait": args.critical_wait,
        "runs": results,
        "median_down_to_webhook_s": statistics.median(times),
        "defaults": governs(load_config(DEFAULT_PATH)),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"stopped server -> webhook HelloWorldDown (scrape/eval {args.scrape_interval}, critical_wait "
            f"{args.critical_wait}, for: {DOWN_FOR:g}s): " + ", ".join(f"{t:.1f}s" for t in times)
        )
        resolved = ", ".join(f"{r['up_to_resolved_s']:.1f}s" for r in results)
        print(f"restarted server -> resolved: {resolved}")
        print(summary["defaults"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
