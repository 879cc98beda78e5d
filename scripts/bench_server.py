"""Benchmark hello_world.py side by side with nginx, using wrk: requests/s, p50, p99, RSS and the ratios.

    make bench                                  # 3 interleaved rounds of 8 s per target and mode (~2 minutes)
    make bench BENCH_ARGS="--rounds 5 --json"   # or: .venv/bin/python scripts/bench_server.py --help

What runs: our server (`hello_world.py --workers 1`, full metrics, its own config and run dir in a temp dir)
and, when installed, nginx with one worker answering `location = / { return 200 "Hello, World!"; }`
(its own prefix, pid, logs and temp paths in the temp dir). Both are pinned to core 0 with taskset (the
launcher is pinned, so every child inherits it), wrk to core 1. Each round runs, for each mode, wrk against
both targets, alternating which goes first: keep-alive (`wrk -t1 -c64 -d8s --latency`) and a connection per
request (the same with `-H 'Connection: close'`). The summary gives the median over rounds, the ratios
ours/nginx (median of the per-round ratios: the rounds are paired, so drift in machine load cancels), the RSS
of the server's processes (supervisor and each worker, from /proc/<pid>/status), and the goals of issue 2
marked met or not met (the p99 goal is shown for both modes).

Two figures help read the others: the CPU time the target's processes spent per response (user + system, from
/proc/<pid>/stat; it moves much less than requests/s when the machine is busy), and how much of the server
core other processes took during each run (from /proc/stat). A run where other work took more than 10% of
the server core is flagged: the numbers are then low and noisy, so run again on a quiet machine.

Every response must be a 200: wrk counts statuses >= 400 ("Non-2xx or 3xx responses") and socket errors; for
our server the bench also reads hello_world_requests_total{path="/"} before and after each run, so a response
with any code other than 200 shows up even where wrk would not count it.

It is a benchmark, not a test: it exits 0 whatever the numbers. Exit 1 only when it cannot run (wrk missing,
the server does not become ready or dies) or is interrupted, exit 2 on a config error. Progress goes to stderr,
results to stdout (`--json` for a machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hello_config import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError, load_config, parse_duration  # noqa: E402
from hello_jobs import http_get  # noqa: E402

log = logging.getLogger("bench_server")

MODES = {"keep-alive": [], "close": ["-H", "Connection: close"]}
MODE_TITLES = {"keep-alive": "keep-alive", "close": "connection per request"}
NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")
STOP_SIGNALS = {"ours": signal.SIGTERM, "nginx": signal.SIGQUIT}  # SIGQUIT: nginx's graceful stop

# The goals of issue 2, section 5.
GOAL_RATIO = {"keep-alive": 0.35, "close": 0.75}
GOAL_P99_MS = 2.5
GOAL_RSS_MIB = 40.0
NOISY_PCT = 10.0  # more of the server core taken by other processes than this makes a run suspect

NGINX_CONF = """\
# Written by scripts/bench_server.py: one worker, everything inside this prefix.
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = / {{ return 200 "Hello, World!"; }}
    }}
}}
"""


class BenchError(Exception):
    """The bench cannot run or cannot go on; str() says why."""


class WrkOutputError(BenchError):
    """wrk printed something the parser does not understand."""


@dataclass
class WrkResult:
    rps: float
    requests: int
    seconds: float
    latency_ms: dict[str, float]  # "50", "75", "90", "99" -> milliseconds
    socket_errors: dict[str, int]  # connect, read, write, timeout
    bad_status: int  # wrk's "Non-2xx or 3xx responses" (it counts statuses >= 400)

    @property
    def errors(self) -> int:
        return self.bad_status + sum(self.socket_errors.values())


@dataclass
class Run:
    round: int
    mode: str
    target: str
    result: WrkResult
    cpu_us_per_request: float  # CPU time of all the target's processes, per response wrk read
    others_pct: float | None  # how busy the server core was with anything but the target (noise), % of the run
    non_200: int | None = None  # from our /metrics; None for nginx
    served_200: int | None = None


@dataclass
class Target:
    """A server under test: its URL, its root process and where its output goes."""

    name: str
    url: str
    proc: subprocess.Popen
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)


# --- wrk output ---

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
_LATENCY_RE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_COUNT_RE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.M)
_SOCKET_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_STATUS_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(text: str) -> WrkResult:
    """The figures of one `wrk --latency` run."""
    rps = _RPS_RE.search(text)
    count = _COUNT_RE.search(text)
    latencies = {pct: float(value) * _UNIT_MS[unit] for pct, value, unit in _LATENCY_RE.findall(text)}
    if not rps or not count or "50" not in latencies or "99" not in latencies:
        raise WrkOutputError(f"cannot read wrk output: {text.strip()[-300:]!r}")
    sockets = _SOCKET_RE.search(text)
    status = _STATUS_RE.search(text)
    names = ("connect", "read", "write", "timeout")
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(count.group(1)),
        seconds=float(count.group(2)) * _UNIT_MS[count.group(3)] / 1000,
        latency_ms=latencies,
        socket_errors={n: int(v) for n, v in zip(names, sockets.groups(), strict=True)}
        if sockets
        else dict.fromkeys(names, 0),
        bad_status=int(status.group(1)) if status else 0,
    )


def pinned(core: int | None, args: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *args] if core is not None else args


def run_wrk(wrk: str, url: str, mode: str, args: argparse.Namespace, duration: float) -> WrkResult:
    command = pinned(
        args.wrk_core,
        [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{duration:g}s", "--latency", *MODES[mode], url],
    )
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {duration + 60:.0f}s: {' '.join(command)}") from None
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    return parse_wrk(done.stdout)


# --- processes ---


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(target: Target, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            raise BenchError(f"{target.name} exited with {target.proc.returncode}: {tail(target.log_path)}")
        try:
            status, _ = http_get(target.url + path, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise BenchError(
        f"{target.name} not ready at {target.url}{path} within {timeout:.0f}s ({last}): {tail(target.log_path)}"
    )


def ready_or_stopped(target: Target, path: str, timeout: float) -> None:
    """wait_ready, stopping the target when it fails: the caller has not yet put it among the ones to stop."""
    try:
        wait_ready(target, path, timeout)
    except BaseException:
        log.info("stopping %s (PID %d): it did not become ready", target.name, target.proc.pid)
        stop_process(target, STOP_SIGNALS[target.name])
        raise


def tail(path: Path, chars: int = 600) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return text[-chars:] or "(empty log)"


def start_process(name: str, command: list[str], log_path: Path, **kwargs: Any) -> subprocess.Popen:
    log.info("starting %s: %s", name, " ".join(command))
    with open(log_path, "ab") as out:
        # A session of its own: the process group is ours to signal by the child's PID at the end.
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def stop_process(target: Target, sig: int, timeout: float = 15.0) -> None:
    """Stop the target's process by its PID, then kill whatever is left of its process group."""
    proc = target.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s (PID %d) did not stop within %.0fs: killing its process group", target.name, proc.pid, timeout
            )
    # Leftover children (a worker that outlived its parent) share the group we created.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def write_server_config(directory: Path, port: int, workers: int) -> Path:
    """A config for our server: the server section of the current config (HELLO_CONFIG or config.yaml) with
    our port and workers, and a run dir of its own, so the bench never touches a running `make start` server."""
    server = dict(load_config()["server"])
    server.update(host="127.0.0.1", port=port, workers=workers)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump({"system": {"run_dir": str(directory / "run"), "server": server}}, sort_keys=False))
    load_config(path)  # refuse here, with the config module's message, rather than in the child
    return path


def start_ours(directory: Path, args: argparse.Namespace) -> Target:
    directory.mkdir()
    port = free_port()
    config = write_server_config(directory, port, args.workers)
    command = pinned(
        args.server_core,
        [sys.executable, str(args.script), "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", str(args.workers)],
    )
    log_path = directory / "server.log"
    proc = start_process(
        args.script.name, command, log_path, cwd=args.script.parent, env={**os.environ, "HELLO_CONFIG": str(config)}
    )
    target = Target("ours", f"http://127.0.0.1:{port}", proc, log_path)
    ready_or_stopped(target, "/readyz", args.ready_timeout)
    return target


def find_nginx() -> str | None:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def start_nginx(nginx: str, directory: Path, args: argparse.Namespace) -> Target:
    (directory / "logs").mkdir(parents=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=directory, port=port))
    command = pinned(args.server_core, [nginx, "-p", str(directory), "-c", str(conf), "-g", "daemon off;"])
    target = Target(
        "nginx",
        f"http://127.0.0.1:{port}",
        start_process("nginx", command, directory / "nginx.log"),
        directory / "nginx.log",
    )
    ready_or_stopped(target, "/", args.ready_timeout)
    return target


def children(pid: int) -> list[int]:
    """Direct children of pid, from /proc/<pid>/task/*/children, else from every process's parent PID."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
        return sorted(set(found))
    except OSError:
        pass
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                # The command name in field 2 may hold spaces: the parent PID comes after its closing ")".
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    for child in children(pid):
        out += [child, *descendants(child)]
    return out


def proc_status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def cpu_seconds(target: Target) -> float:
    """User plus system CPU time of the target's processes (workers that exited in between are missed)."""
    total = 0
    for pid in [target.proc.pid, *descendants(target.proc.pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return total / os.sysconf("SC_CLK_TCK")


def core_busy_seconds(core: int | None) -> float | None:
    """Busy (not idle, not iowait) time of one core, from /proc/stat; None when not pinned."""
    if core is None:
        return None
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(v) for v in line.split()[1:]]
            return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    return None


def memory(target: Target) -> dict[str, Any]:
    """RSS (now and peak, MiB) and CPU affinity of the target's root process and of each descendant."""

    def one(pid: int) -> dict[str, Any]:
        status = proc_status(pid)
        kib = {key: int(status.get(key, "0 kB").split()[0]) for key in ("VmRSS", "VmHWM")}
        return {
            "pid": pid,
            "name": status.get("Name", "?").strip(),
            "rss_mib": round(kib["VmRSS"] / 1024, 1),
            "peak_rss_mib": round(kib["VmHWM"] / 1024, 1),
            "cpus": status.get("Cpus_allowed_list", "?").strip(),
        }

    root = one(target.proc.pid)
    workers = [one(pid) for pid in descendants(target.proc.pid)]
    total = root["rss_mib"] + sum(w["rss_mib"] for w in workers)
    return {"root": root, "workers": workers, "total_rss_mib": round(total, 1)}


# --- our metrics: every response a 200 ---

_REQUESTS_RE = re.compile(r"^hello_world_requests_total\{([^}]*)\}\s+([0-9.eE+-]+)", re.M)
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def root_counts(url: str) -> dict[str, float]:
    """hello_world_requests_total{path="/"} by code, read from our /metrics."""
    status, body = http_get(url + "/metrics", timeout=5)
    if status != 200:
        raise BenchError(f"{url}/metrics answered {status}")
    counts: dict[str, float] = {}
    for labels, value in _REQUESTS_RE.findall(body.decode()):
        parsed = dict(_LABEL_RE.findall(labels))
        if parsed.get("path") == "/":
            code = parsed.get("code", "?")
            counts[code] = counts.get(code, 0.0) + float(value)
    return counts


# --- the rounds ---


def run_rounds(targets: list[Target], args: argparse.Namespace, wrk: str) -> list[Run]:
    runs: list[Run] = []
    total = args.rounds * len(MODES) * len(targets)
    for number in range(1, args.rounds + 1):
        for mode in MODES:
            # Alternate which target goes first, so neither always gets the warmer (or busier) slot.
            order = targets if (number % 2) else list(reversed(targets))
            for target in order:
                runs.append(one_run(target, mode, number, args, wrk))
                log.info("[%d/%d] %s", len(runs), total, run_line(asdict(runs[-1])))
    return runs


def one_run(target: Target, mode: str, number: int, args: argparse.Namespace, wrk: str) -> Run:
    before = root_counts(target.url) if target.name == "ours" else None
    cpu_before, core_before, wall_before = cpu_seconds(target), core_busy_seconds(args.server_core), time.monotonic()
    result = run_wrk(wrk, target.url + "/", mode, args, args.duration)
    cpu = cpu_seconds(target) - cpu_before
    core_after, wall = core_busy_seconds(args.server_core), time.monotonic() - wall_before
    others = None if core_before is None or core_after is None else max(0.0, core_after - core_before - cpu) / wall
    if target.proc.poll() is not None:
        raise BenchError(
            f"{target.name} died during the {mode} run (exit {target.proc.returncode}): {tail(target.log_path)}"
        )
    cpu_us = round(cpu * 1e6 / max(result.requests, 1), 1)
    run = Run(number, mode, target.name, result, cpu_us, None if others is None else round(others * 100, 1))
    if before is not None:
        time.sleep(0.3)  # workers flush their metrics on a 0.1 s tick; the one answering /metrics flushes first
        after = root_counts(target.url)
        delta = {code: after.get(code, 0.0) - before.get(code, 0.0) for code in after}
        run.served_200 = int(delta.get("200", 0))
        run.non_200 = int(sum(v for code, v in delta.items() if code != "200"))
        target.extra["memory"] = memory(target)  # sampled right after load
    return run


def warm_up(targets: list[Target], args: argparse.Namespace, wrk: str) -> None:
    for target in targets:
        log.info("warming up %s (%gs)", target.name, args.warmup)
        run_wrk(wrk, target.url + "/", "keep-alive", args, args.warmup)


# --- the summary ---


def summarise(runs: list[Run], targets: list[Target]) -> dict[str, Any]:
    names = [t.name for t in targets]
    modes: dict[str, Any] = {}
    for mode in MODES:
        per_target = {}
        for name in names:
            mine = [r for r in runs if r.mode == mode and r.target == name]
            per_target[name] = {
                "rps": round(statistics.median(r.result.rps for r in mine)),
                "p50_ms": round(statistics.median(r.result.latency_ms["50"] for r in mine), 3),
                "p99_ms": round(statistics.median(r.result.latency_ms["99"] for r in mine), 3),
                "cpu_us_per_request": round(statistics.median(r.cpu_us_per_request for r in mine), 1),
                "requests": sum(r.result.requests for r in mine),
                "errors": sum(r.result.errors for r in mine),
                "non_200": sum(r.non_200 for r in mine) if name == "ours" else None,
                "counted_200": sum(r.served_200 for r in mine) if name == "ours" else None,
            }
        ratio = cpu_ratio = None
        if "nginx" in names:
            pairs = [
                (a, b)
                for a in runs
                for b in runs
                if a.mode == b.mode == mode and a.round == b.round and a.target == "ours" and b.target == "nginx"
            ]
            ratio = round(statistics.median(a.result.rps / b.result.rps for a, b in pairs), 3)
            # Moves less than requests/s on a busy machine; nginx is wrk-bound, not CPU-bound, so this one is lower.
            cpu = [b.cpu_us_per_request / a.cpu_us_per_request for a, b in pairs if a.cpu_us_per_request > 0]
            cpu_ratio = round(statistics.median(cpu), 3) if cpu else None
        modes[mode] = {"targets": per_target, "ratio": ratio, "cpu_ratio": cpu_ratio}
    memories = {t.name: t.extra.get("memory") or memory(t) for t in targets}
    noise = [r.others_pct for r in runs if r.others_pct is not None]
    summary = {"modes": modes, "memory": memories, "others_pct": statistics.median(noise) if noise else None}
    summary["goals"] = goals(modes, memories["ours"])
    return summary


def goals(modes: dict[str, Any], mem: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for mode, minimum in GOAL_RATIO.items():
        ratio = modes[mode]["ratio"]
        out.append(
            {
                "goal": f"{MODE_TITLES[mode]} rps >= {minimum}x nginx",
                "value": f"{ratio:.2f}x" if ratio is not None else "n/a (no nginx)",
                "met": None if ratio is None else ratio >= minimum,
            }
        )
    for mode in MODES:
        p99 = modes[mode]["targets"]["ours"]["p99_ms"]
        out.append(
            {
                "goal": f"p99 <= {GOAL_P99_MS} ms, {MODE_TITLES[mode]}, 64 connections",
                "value": f"{p99:.2f} ms",
                "met": p99 <= GOAL_P99_MS,
            }
        )
    # The server is a supervisor and its workers; a single-process server is its own worker.
    workers = mem["workers"] or [mem["root"]]
    peak = max(w["peak_rss_mib"] for w in workers)
    out.append(
        {
            "goal": f"RSS <= {GOAL_RSS_MIB:g} MiB per worker (peak)",
            "value": f"{peak:.1f} MiB",
            "met": peak <= GOAL_RSS_MIB,
        }
    )
    errors = sum(m["targets"]["ours"]["errors"] + (m["targets"]["ours"]["non_200"] or 0) for m in modes.values())
    out.append({"goal": "every response a 200, no socket errors", "value": f"{errors} bad", "met": errors == 0})
    # wrk counts the responses it read; the server also answered the requests in flight when wrk stopped.
    received = sum(m["targets"]["ours"]["requests"] for m in modes.values())
    counted = sum(m["targets"]["ours"]["counted_200"] for m in modes.values())
    out.append(
        {
            "goal": "hello_world_requests_total counted every response wrk received",
            "value": f"{counted} counted, {received} received",
            "met": counted >= received,
        }
    )
    return out


def figures(rps: float, p50: float, p99: float, cpu_us: float, errors: int) -> str:
    return f"{rps:>7.0f} rps  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  cpu {cpu_us:5.1f} us/req  errors {errors}"


def run_line(run: dict[str, Any]) -> str:
    r = run["result"]
    errors = sum(r["socket_errors"].values()) + r["bad_status"]
    line = figures(r["rps"], r["latency_ms"]["50"], r["latency_ms"]["99"], run["cpu_us_per_request"], errors)
    extra = f"  non-200 {run['non_200']}" if run["non_200"] is not None else ""
    if run["others_pct"] is not None:
        extra += f"  core busy with others {run['others_pct']:.0f}%"
    return f"round {run['round']}  {run['mode']:<10} {run['target']:<5} {line}{extra}"


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"wrk -t{s['threads']} -c{s['connections']} -d{s['duration']:g}s --latency, {s['rounds']} rounds, "
        f"{s['workers']} worker(s); servers on core {s['server_core']}, wrk on core {s['wrk_core']}",
        "",
        "Per round:",
    ]
    lines += [f"  {run_line(run)}" for run in report["runs"]]
    summary = report["summary"]
    lines += ["", "Summary (median over rounds):"]
    for mode, data in summary["modes"].items():
        lines.append(f"  {MODE_TITLES[mode]}:")
        for name, t in data["targets"].items():
            numbers = figures(t["rps"], t["p50_ms"], t["p99_ms"], t["cpu_us_per_request"], t["errors"])
            lines.append(f"    {name:<6} {numbers}")
        if data["ratio"] is not None:
            by_cpu = f"; {data['cpu_ratio']:.2f}x by CPU time per response" if data["cpu_ratio"] is not None else ""
            lines.append(f"    ratio ours/nginx {data['ratio']:.2f}x by requests/s{by_cpu}")
    lines.append("  memory (after load):")
    for name, mem in summary["memory"].items():
        parts = [
            f"{p['name']} {p['pid']} {p['rss_mib']:.1f} MiB (peak {p['peak_rss_mib']:.1f}, cpus {p['cpus']})"
            for p in [mem["root"], *mem["workers"]]
        ]
        lines.append(f"    {name:<6} total {mem['total_rss_mib']:.1f} MiB: " + "; ".join(parts))
    if (summary["others_pct"] or 0) > NOISY_PCT:
        lines.append(
            f"  WARNING: core {s['server_core']} was busy with other processes {summary['others_pct']:.0f}% of the "
            "time (median): the figures are low and noisy; run again on a quiet machine"
        )
    lines += ["", "Goals (issue 2):"]
    for goal in summary["goals"]:
        mark = "n/a" if goal["met"] is None else ("met" if goal["met"] else "NOT MET")
        lines.append(f"  [{mark:>7}] {goal['goal']}: {goal['value']}")
    return "\n".join(lines)


# --- main ---


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=parse_duration, default=8.0, help="length of each wrk run (default 8s)")
    parser.add_argument("--warmup", type=parse_duration, default=2.0, help="keep-alive warm-up per target (default 2s)")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="our server's workers (default 1)")
    parser.add_argument("--no-nginx", action="store_true", help="benchmark our server alone")
    parser.add_argument("--server-core", type=int, default=0, help="core for the servers (default 0)")
    parser.add_argument("--wrk-core", type=int, default=1, help="core for wrk (default 1)")
    parser.add_argument(
        "--ready-timeout", type=float, default=30.0, help="seconds a server gets to answer (default 30)"
    )
    parser.add_argument(
        "--script",
        type=Path,
        default=REPO / "hello_world.py",
        help="the server to run (default: the repo's hello_world.py)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) and print its path")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.connections < 1 or args.threads < 1 or args.workers < 1:
        parser.error("--rounds, --connections, --threads, --workers must be >= 1 and --duration >= 1s")
    return args


def plan_cores(args: argparse.Namespace) -> None:
    """Pin only when taskset exists and both cores are ours to use; else say so and run unpinned."""
    usable = os.sched_getaffinity(0)
    if not shutil.which("taskset"):
        log.warning("taskset not found (Debian package util-linux): running unpinned")
    elif {args.server_core, args.wrk_core} <= usable and args.server_core != args.wrk_core:
        return
    else:
        log.warning(
            "cores %d and %d are not both usable (have %s): running unpinned",
            args.server_core,
            args.wrk_core,
            sorted(usable),
        )
    args.server_core = args.wrk_core = None


def check_pinning(targets: list[Target], core: int | None) -> None:
    if core is None:
        return
    for target in targets:
        mem = memory(target)
        for proc in [mem["root"], *mem["workers"]]:
            if proc["cpus"] != str(core):
                log.warning(
                    "%s process %d (%s) may run on cpus %s, not only %d",
                    target.name,
                    proc["pid"],
                    proc["name"],
                    proc["cpus"],
                    core,
                )


def bench(args: argparse.Namespace, wrk: str, workdir: Path) -> dict[str, Any]:
    targets: list[Target] = []
    try:
        targets.append(start_ours(workdir / "ours", args))
        nginx = None if args.no_nginx else find_nginx()
        if nginx:
            targets.append(start_nginx(nginx, workdir / "nginx", args))
        elif not args.no_nginx:
            log.warning("nginx not installed (Debian package nginx-light): no ratios, our figures only")
        check_pinning(targets, args.server_core)
        status, body = http_get(targets[0].url + "/", timeout=1.0)
        if status != 200:
            raise BenchError(f"GET {targets[0].url}/ answered {status} {body[:80]!r}")
        warm_up(targets, args, wrk)
        started = time.monotonic()
        runs = run_rounds(targets, args, wrk)
        log.info("rounds done in %.0fs", time.monotonic() - started)
        summary = summarise(runs, targets)
    finally:
        for target in targets:
            log.info("stopping %s (PID %d)", target.name, target.proc.pid)
            stop_process(target, STOP_SIGNALS[target.name])
    settings = {
        k: getattr(args, k)
        for k in ("rounds", "duration", "connections", "threads", "workers", "server_core", "wrk_core")
    }
    settings["nginx"] = "nginx" in [t.name for t in targets]
    settings["server_config"] = yaml.safe_load((workdir / "ours" / "config.yaml").read_text())["system"]["server"]
    return {"settings": settings, "runs": [asdict(r) for r in runs], "summary": summary}


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so the servers we started are stopped by the finally blocks


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if not wrk:
        print("bench: wrk not found: install the Debian package wrk (apt-get install wrk)", file=sys.stderr)
        return EXIT_FAILED
    args.script = args.script.resolve()
    if not args.script.is_file():
        print(f"bench: {args.script} not found", file=sys.stderr)
        return EXIT_FAILED
    plan_cores(args)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="hello-bench-"))
    try:
        report = bench(args, wrk, workdir)
    except ConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BenchError as exc:
        print(f"bench: cannot run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if args.keep:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
