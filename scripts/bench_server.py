"""Benchmark hello_world.py side by side with nginx and the servers a user would pick instead, using wrk.

    make bench                                   # 3 interleaved rounds of 8 s per server and mode (~5 minutes)
    make bench BENCH_ARGS="--workers 2 --json"   # or: .venv/bin/python -m scripts.bench_server --help

What runs, each with --workers N (default 1) and its own temp dir:
- ours: `hello_world.py` (full metrics, its own config and run dir, so a `make start` server is never touched);
- nginx (when installed) answering `location = / { return 200 "Hello, World!"; }`;
- the peers of scripts/bench_peers/, each serving / and /metrics and counting every request in a
  prometheus_client (client_golang) counter and latency histogram named as ours: granian with a plain RSGI
  app, uvicorn (uvloop, httptools) with a plain ASGI app, and a Go net/http server, built with `go build`
  from its pinned go.mod/go.sum when `go` is installed (skipped with a line saying so when it is not).
  `--peers granian,uvicorn` picks some, `--peers none` runs none.

Pinning: with one worker every server is on core 0 (taskset on the launcher, so every child inherits it)
and wrk on core 1. With --workers 2 or more the servers get cores 0 and 1 and wrk shares them (wrk -t1 takes
about one core's worth away from the servers: the report says so). Each round runs, for each mode, wrk
against every server, rotating which goes first: keep-alive (`wrk -t1 -c64 -d8s --latency`) and a
connection per request (the same with `-H 'Connection: close'`). The summary gives the median over rounds
and, per server, the ratio to nginx and to ours (medians of the per-round ratios: the rounds are paired, so
drift in machine load cancels), the CPU time the server's processes spent per response (user + system, from
/proc; it moves much less than requests/s on a busy machine), the peak RSS per worker (a single-process
server is its own worker), and the goals of issue 17 marked met or not met. How much of the server core(s)
other processes took is shown per run; over 10% is flagged as noisy.

Every response must be a 200: wrk counts statuses >= 400 and socket errors, and for every server that has
/metrics (all but nginx) the bench reads hello_world_requests_total{path="/"} by code before and after each
run, so a response with any other code shows up even where wrk would not count it.

/metrics as work grows (`make bench-metrics`, `--reloads 10,100,1000`, no wrk): our server alone, reloaded
(SIGHUP, as `make reload`) until it has had each number of reloads, a few GETs of / per generation; at each
checkpoint the median and p90 time of `--samples` GETs of /metrics, the number of metric files in its
multiproc dir, and whether hello_world_requests_total{path="/",code="200"} equals the GETs of / sent (it must,
exactly, however many generations came and went).

It is a benchmark, not a test: it exits 0 whatever the numbers. Exit 1 only when it cannot run (wrk missing,
our server does not become ready or a server dies) or is interrupted, exit 2 on a config error. A peer that
cannot start is skipped with a warning. Progress goes to stderr, results to stdout (`--json` for a machine).
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
import yaml  # noqa: E402

from hello.base.config import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError, RunFiles, load_config  # noqa: E402
from hello.base.config_schema import parse_duration  # noqa: E402
from hello.base.http_client import http_get  # noqa: E402
from hello.base.proc import free_port, tail  # noqa: E402

log = logging.getLogger("bench_server")

PEERS_DIR = REPO / "scripts" / "bench_peers"
MODES = {"keep-alive": [], "close": ["-H", "Connection: close"]}
MODE_TITLES = {"keep-alive": "keep-alive", "close": "connection per request"}
NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")
PEERS = ("granian", "uvicorn", "go")
PYTHON_PEERS = ("granian", "uvicorn")
STOP_SIGNALS = {"nginx": signal.SIGQUIT}  # SIGQUIT: nginx's graceful stop; the others stop on SIGTERM

# The goals of issue 17, section 2.
GOAL_PEER_RATIO = {"keep-alive": 1.10, "close": 1.0}  # ours / the best Python peer
GOAL_P99_MS = 2.5
GOAL_RSS_MIB = 40.0
NOISY_PCT = 10.0  # more of the server core taken by other processes than this makes a run suspect

NGINX_CONF = """\
# Written by scripts/bench_server.py: everything inside this prefix.
worker_processes {workers};
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


class PeerUnavailable(BenchError):
    """A peer cannot run here (not installed, does not build or start): it is skipped."""


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
    others_pct: float | None  # how busy the server cores were with anything but the target (noise), % of the run
    non_200: int | None = None  # from the target's /metrics; None for nginx
    served_200: int | None = None


@dataclass
class Target:
    """A server under test: its URL, its root process and where its output goes."""

    name: str
    url: str
    proc: subprocess.Popen
    log_path: Path
    has_metrics: bool = True
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


def pinned(cores: str | None, args: list[str]) -> list[str]:
    return ["taskset", "-c", cores, *args] if cores is not None else args


def run_wrk(wrk: str, url: str, mode: str, args: argparse.Namespace, duration: float) -> WrkResult:
    command = pinned(
        args.wrk_cores,
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


def ready_or_stopped(target: Target, path: str, timeout: float) -> Target:
    """wait_ready, stopping the target when it fails: the caller has not yet put it among the ones to stop."""
    try:
        wait_ready(target, path, timeout)
    except BaseException:
        log.info("stopping %s (PID %d): it did not become ready", target.name, target.proc.pid)
        stop_process(target)
        raise
    return target


def start_process(name: str, command: list[str], log_path: Path, **kwargs: Any) -> subprocess.Popen:
    log.info("starting %s: %s", name, " ".join(command))
    with open(log_path, "ab") as out:
        # A session of its own: the process group is ours to signal by the child's PID at the end.
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def stop_process(target: Target, timeout: float = 15.0) -> None:
    """Stop the target's process by its PID, then kill whatever is left of its process group."""
    proc = target.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, STOP_SIGNALS.get(target.name, signal.SIGTERM))
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
        args.server_cores,
        [sys.executable, str(args.script), "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", str(args.workers)],
    )
    log_path = directory / "server.log"
    proc = start_process(
        args.script.name, command, log_path, cwd=args.script.parent, env={**os.environ, "HELLO_CONFIG": str(config)}
    )
    return ready_or_stopped(Target("ours", f"http://127.0.0.1:{port}", proc, log_path), "/readyz", args.ready_timeout)


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
    conf.write_text(NGINX_CONF.format(prefix=directory, port=port, workers=args.workers))
    command = pinned(args.server_cores, [nginx, "-p", str(directory), "-c", str(conf), "-g", "daemon off;"])
    log_path = directory / "nginx.log"
    target = Target(
        "nginx", f"http://127.0.0.1:{port}", start_process("nginx", command, log_path), log_path, has_metrics=False
    )
    return ready_or_stopped(target, "/", args.ready_timeout)


# --- the peers: what a user would run instead ---


def peer_env(directory: Path, args: argparse.Namespace) -> dict[str, str]:
    """The peers' environment: with several workers, prometheus_client's multiprocess mode, as ours uses."""
    env = {**os.environ, "PYTHONPATH": str(PEERS_DIR)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if args.workers > 1:
        (directory / "multiproc").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(directory / "multiproc")
    return env


def granian_command(directory: Path, port: int, args: argparse.Namespace) -> list[str]:
    granian = Path(sys.executable).parent / "granian"
    if not granian.exists():
        raise PeerUnavailable("granian is not installed: `make bench` installs it from requirements-dev.txt")
    return [
        str(granian),
        *("--interface", "rsgi", "--http", "1", "--no-ws", "--workers", str(args.workers)),
        *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--working-dir", str(PEERS_DIR)),
        "granian_app:app",
    ]


def uvicorn_command(directory: Path, port: int, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        *("-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log"),
        *("--workers", str(args.workers), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        *("--app-dir", str(PEERS_DIR), "uvicorn_app:app"),
    ]


def go_command(directory: Path, port: int, args: argparse.Namespace) -> list[str]:
    """Build the Go peer from its pinned modules (go.mod, go.sum) into the temp dir; GOMAXPROCS = workers."""
    go = shutil.which("go")
    if not go:
        raise PeerUnavailable("go is not installed: the Go peer (scripts/bench_peers/go) is skipped")
    binary = directory / "hello-peer"
    log.info("building the Go peer: go build -o %s", binary)
    try:
        built = subprocess.run(
            [go, "build", "-o", str(binary), "."],
            cwd=PEERS_DIR / "go",
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PeerUnavailable("go build took over 300 s") from None
    if built.returncode != 0:
        raise PeerUnavailable(f"go build failed: {built.stderr.strip()[-300:]}")
    return ["env", f"GOMAXPROCS={args.workers}", str(binary), "-addr", f"127.0.0.1:{port}"]


PEER_COMMANDS: dict[str, Callable[[Path, int, argparse.Namespace], list[str]]] = {
    "granian": granian_command,
    "uvicorn": uvicorn_command,
    "go": go_command,
}


def start_peer(name: str, directory: Path, args: argparse.Namespace) -> Target:
    directory.mkdir()
    port = free_port()
    command = pinned(args.server_cores, PEER_COMMANDS[name](directory, port, args))
    log_path = directory / f"{name}.log"
    env = peer_env(directory, args)
    proc = start_process(name, command, log_path, cwd=directory, env=env)
    try:
        return ready_or_stopped(Target(name, f"http://127.0.0.1:{port}", proc, log_path), "/", args.ready_timeout)
    except BenchError as exc:
        raise PeerUnavailable(str(exc)) from None


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


def cores_busy_seconds(cores: str | None) -> float | None:
    """Busy (not idle, not iowait) time of the given cores ("0" or "0,1"), from /proc/stat; None when unpinned."""
    if cores is None:
        return None
    wanted = {f"cpu{core}" for core in cores.split(",")}
    busy = 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if name in wanted:
            ticks = [int(v) for v in rest.split()]
            busy += sum(ticks[:8]) - ticks[3] - ticks[4]  # minus idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


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
    # The server is a supervisor and its workers; a single-process server is its own worker.
    peak = max(w["peak_rss_mib"] for w in workers or [root])
    return {"root": root, "workers": workers, "total_rss_mib": round(total, 1), "peak_worker_rss_mib": peak}


# --- every response a 200 ---

_REQUESTS_RE = re.compile(r"^hello_world_requests_total\{([^}]*)\}\s+([0-9.eE+-]+)", re.M)
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def root_counts(url: str) -> dict[str, float]:
    """hello_world_requests_total{path="/"} by code, read from the target's /metrics."""
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
            # Rotate which target goes first, so none always gets the warmer (or busier) slot.
            shift = (number - 1) % len(targets)
            for target in targets[shift:] + targets[:shift]:
                runs.append(one_run(target, mode, number, args, wrk))
                log.info("[%d/%d] %s", len(runs), total, run_line(asdict(runs[-1])))
    return runs


def one_run(target: Target, mode: str, number: int, args: argparse.Namespace, wrk: str) -> Run:
    before = root_counts(target.url) if target.has_metrics else None
    cpu_before, core_before = cpu_seconds(target), cores_busy_seconds(args.server_cores)
    wall_before = time.monotonic()
    result = run_wrk(wrk, target.url + "/", mode, args, args.duration)
    cpu = cpu_seconds(target) - cpu_before
    core_after, wall = cores_busy_seconds(args.server_cores), time.monotonic() - wall_before
    others = None
    if core_before is not None and core_after is not None:
        # With shared cores wrk's own CPU time counts as "others"; args.wrk_shares says so.
        others = max(0.0, core_after - core_before - cpu) / wall / len(args.server_cores.split(","))
    if target.proc.poll() is not None:
        raise BenchError(
            f"{target.name} died during the {mode} run (exit {target.proc.returncode}): {tail(target.log_path)}"
        )
    cpu_us = round(cpu * 1e6 / max(result.requests, 1), 1)
    run = Run(number, mode, target.name, result, cpu_us, None if others is None else round(others * 100, 1))
    if before is not None:
        time.sleep(0.3)  # our workers flush their metrics on a 0.1 s tick; the one answering /metrics flushes first
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


def paired_ratio(runs: list[Run], mode: str, name: str, base: str, value: Callable[[Run], float]) -> float | None:
    """Median over rounds of value(name's run) / value(base's run) in the same round and mode."""
    by_round = {(r.round, r.target): r for r in runs if r.mode == mode}
    ratios = [
        value(by_round[(n, name)]) / value(by_round[(n, base)])
        for n, target in by_round
        if target == name and (n, base) in by_round and value(by_round[(n, base)]) > 0
    ]
    return round(statistics.median(ratios), 3) if ratios else None


def summarise(runs: list[Run], targets: list[Target]) -> dict[str, Any]:
    names = [t.name for t in targets]
    modes: dict[str, Any] = {}
    for mode in MODES:
        per_target = {}
        for name in names:
            mine = [r for r in runs if r.mode == mode and r.target == name]
            metrics = mine[0].non_200 is not None
            per_target[name] = {
                "rps": round(statistics.median(r.result.rps for r in mine)),
                "p50_ms": round(statistics.median(r.result.latency_ms["50"] for r in mine), 3),
                "p99_ms": round(statistics.median(r.result.latency_ms["99"] for r in mine), 3),
                "cpu_us_per_request": round(statistics.median(r.cpu_us_per_request for r in mine), 1),
                "requests": sum(r.result.requests for r in mine),
                "errors": sum(r.result.errors for r in mine),
                "non_200": sum(r.non_200 for r in mine) if metrics else None,
                "counted_200": sum(r.served_200 for r in mine) if metrics else None,
                "x_nginx": paired_ratio(runs, mode, name, "nginx", lambda r: r.result.rps)
                if "nginx" in names
                else None,
                "x_ours": paired_ratio(runs, mode, name, "ours", lambda r: r.result.rps),
                # CPU per response moves less than requests/s on a busy machine: theirs / ours, > 1: ours is cheaper.
                "cpu_x_ours": paired_ratio(runs, mode, name, "ours", lambda r: r.cpu_us_per_request),
            }
        modes[mode] = {"targets": per_target}
    memories = {t.name: t.extra.get("memory") or memory(t) for t in targets}
    noise = [r.others_pct for r in runs if r.others_pct is not None]
    summary = {"modes": modes, "memory": memories, "others_pct": statistics.median(noise) if noise else None}
    summary["goals"] = goals(modes, memories)
    return summary


def goals(modes: dict[str, Any], memories: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for mode, minimum in GOAL_PEER_RATIO.items():
        targets = modes[mode]["targets"]
        peers = [name for name in PYTHON_PEERS if name in targets]
        if not peers:
            out.append(
                {
                    "goal": f"{MODE_TITLES[mode]} rps >= {minimum}x the best Python peer",
                    "value": "n/a (no peers)",
                    "met": None,
                }
            )
            continue
        best = max(peers, key=lambda name: targets[name]["rps"])
        ratio = 1 / targets[best]["x_ours"] if targets[best]["x_ours"] else None
        by_cpu = targets[best]["cpu_x_ours"]  # theirs / ours per response: steadier on a busy machine
        out.append(
            {
                "goal": f"{MODE_TITLES[mode]} rps >= {minimum:.2f}x the best Python peer ({best})",
                "value": (f"{ratio:.2f}x" if ratio is not None else "n/a")
                + (f" (by CPU time per response: {by_cpu:.2f}x)" if by_cpu else ""),
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
    peak = memories["ours"]["peak_worker_rss_mib"]
    out.append(
        {
            "goal": f"RSS <= {GOAL_RSS_MIB:g} MiB per worker (peak)",
            "value": f"{peak:.1f} MiB",
            "met": peak <= GOAL_RSS_MIB,
        }
    )
    for mode in MODES:
        go = modes[mode]["targets"].get("go")
        if go and go["x_ours"]:
            out.append(
                {
                    "goal": f"{MODE_TITLES[mode]}: ours / Go (the far anchor)",
                    "value": f"{1 / go['x_ours']:.2f}x",
                    "met": None,
                }
            )
    for name in modes["keep-alive"]["targets"]:
        per_mode = [m["targets"][name] for m in modes.values()]
        bad = sum(t["errors"] + (t["non_200"] or 0) for t in per_mode)
        what = "wrk errors and non-200 in its /metrics" if per_mode[0]["non_200"] is not None else "wrk errors"
        out.append({"goal": f"{name}: every response a 200 ({what})", "value": f"{bad} bad", "met": bad == 0})
        if per_mode[0]["counted_200"] is not None:
            # wrk counts the responses it read; the server also answered the requests in flight when wrk stopped.
            received = sum(t["requests"] for t in per_mode)
            counted = sum(t["counted_200"] for t in per_mode)
            out.append(
                {
                    "goal": f"{name}: hello_world_requests_total counted every response wrk received",
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
        extra += f"  cores busy with others {run['others_pct']:.0f}%"
    return f"round {run['round']}  {run['mode']:<10} {run['target']:<7} {line}{extra}"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def table(summary: dict[str, Any]) -> list[str]:
    """The peer table: one block per mode, one row per server."""
    header = (
        f"    {'server':<8} {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/resp':>11} {'RSS MiB':>8} "
        f"{'x nginx':>8} {'x ours':>7}  bad"
    )
    lines = []
    for mode, data in summary["modes"].items():
        lines += [f"  {MODE_TITLES[mode]}:", header]
        for name, t in data["targets"].items():
            rss = summary["memory"][name]["peak_worker_rss_mib"]
            bad = t["errors"] + (t["non_200"] or 0)
            lines.append(
                f"    {name:<8} {t['rps']:>7} {t['p50_ms']:>7.2f} {t['p99_ms']:>7.2f} {t['cpu_us_per_request']:>11.1f} "
                f"{rss:>8.1f} {_ratio(t['x_nginx']):>8} {_ratio(t['x_ours']):>7}  {bad}"
            )
    return lines


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"wrk -t{s['threads']} -c{s['connections']} -d{s['duration']:g}s --latency, {s['rounds']} rounds, "
        f"{s['workers']} worker(s) each; servers on cores {s['server_cores']}, wrk on cores {s['wrk_cores']}"
        + (" (shared: wrk takes part of the servers' cores)" if s["wrk_shares"] else ""),
    ]
    lines += [f"  skipped {name}: {why}" for name, why in s["skipped"].items()]
    lines += ["", "Per round:"]
    lines += [f"  {run_line(run)}" for run in report["runs"]]
    summary = report["summary"]
    lines += ["", "Summary (median over rounds; RSS is the peak per worker; x = median of per-round rps ratios):"]
    lines += table(summary)
    lines.append("  memory (after load):")
    for name, mem in summary["memory"].items():
        parts = [
            f"{p['name']} {p['pid']} {p['rss_mib']:.1f} MiB (peak {p['peak_rss_mib']:.1f}, cpus {p['cpus']})"
            for p in [mem["root"], *mem["workers"]]
        ]
        lines.append(f"    {name:<8} total {mem['total_rss_mib']:.1f} MiB: " + "; ".join(parts))
    if (summary["others_pct"] or 0) > NOISY_PCT:
        lines.append(
            f"  WARNING: the server cores were busy with other processes {summary['others_pct']:.0f}% of the "
            "time (median): the figures are low and noisy; run again on a quiet machine"
        )
    lines += ["", "Goals (issue 17):"]
    for goal in summary["goals"]:
        mark = "n/a" if goal["met"] is None else ("met" if goal["met"] else "NOT MET")
        lines.append(f"  [{mark:>7}] {goal['goal']}: {goal['value']}")
    return "\n".join(lines)


# --- /metrics after many reloads ---


def parse_checkpoints(text: str) -> list[int]:
    try:
        numbers = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected reload counts like 10,100,1000, got {text!r}") from None
    if not numbers or numbers[0] < 0:
        raise argparse.ArgumentTypeError(f"expected reload counts >= 0, got {text!r}")
    return numbers


def reload_once(target: Target, files: RunFiles, number: int, timeout: float) -> None:
    """SIGHUP the supervisor and wait until its state file records reload `number`, and that it worked."""
    os.kill(target.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = files.read_state()
        if state.get("reloads", 0) >= number:
            if not state.get("last_reload", {}).get("ok"):
                raise BenchError(f"reload {number} failed: {state.get('last_reload')}")
            return
        if target.proc.poll() is not None:
            raise BenchError(f"ours exited during reload {number}: {tail(target.log_path)}")
        time.sleep(0.02)
    raise BenchError(f"reload {number} not done within {timeout:.0f}s: {tail(target.log_path)}")


def wait_workers(target: Target, workers: int, timeout: float) -> None:
    """Wait until the old generation has left: the supervisor has exactly `workers` children."""
    deadline = time.monotonic() + timeout
    while len(children(target.proc.pid)) != workers:
        if time.monotonic() > deadline:
            raise BenchError(f"old workers still there {timeout:.0f}s after a reload: {children(target.proc.pid)}")
        time.sleep(0.05)


def time_metrics(url: str, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        status, _ = http_get(url + "/metrics", timeout=30)
        times.append(time.perf_counter() - started)
        if status != 200:
            raise BenchError(f"{url}/metrics answered {status}")
    return times


def bench_reloads(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    target = start_ours(workdir / "ours", args)
    files = RunFiles(workdir / "ours" / "run")
    checkpoints, done, sent = [], 0, 0
    try:
        for goal in args.reloads:
            while done < goal:
                for _ in range(args.requests_per_reload):
                    status, _ = http_get(target.url + "/", timeout=10)
                    sent += 1
                    if status != 200:
                        raise BenchError(f"GET / answered {status} after {done} reloads")
                done += 1
                reload_once(target, files, done, timeout=args.ready_timeout + 30)
                if done % 50 == 0:
                    log.info("%d reloads of %d", done, args.reloads[-1])
            wait_workers(target, args.workers, timeout=60)
            time.sleep(0.3)  # the new workers flush their counts on their 0.1 s tick
            times = time_metrics(target.url, args.samples)
            counted = root_counts(target.url).get("200", 0.0)
            point = {
                "reloads": done,
                "metrics_ms_median": round(statistics.median(times) * 1000, 2),
                "metrics_ms_p90": round(sorted(times)[int(0.9 * (len(times) - 1))] * 1000, 2),
                "metric_files": len(list(files.multiproc.glob("*.db"))),
                "sent": sent,
                "counted": int(counted),
                "exact": int(counted) == sent,
            }
            checkpoints.append(point)
            log.info("%s", reload_line(point))
    finally:
        log.info("stopping ours (PID %d)", target.proc.pid)
        stop_process(target)
    settings = {"workers": args.workers, "samples": args.samples, "requests_per_reload": args.requests_per_reload}
    return {"settings": {**settings, "script": str(args.script)}, "checkpoints": checkpoints}


def reload_line(point: dict[str, Any]) -> str:
    exact = "exact" if point["exact"] else "NOT EXACT"
    return (
        f"after {point['reloads']:>5} reloads: /metrics {point['metrics_ms_median']:8.2f} ms median, "
        f"{point['metrics_ms_p90']:8.2f} ms p90; {point['metric_files']:>5} metric files; "
        f"GET / sent {point['sent']}, counted {point['counted']} ({exact})"
    )


def render_reloads(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"/metrics answer time after reloads: {s['script']}, {s['workers']} worker(s), "
        f"{s['requests_per_reload']} GETs of / per generation, {s['samples']} GETs of /metrics per checkpoint",
    ]
    lines += [f"  {reload_line(point)}" for point in report["checkpoints"]]
    return "\n".join(lines)


# --- main ---


def parse_peers(text: str) -> list[str]:
    names = [] if text == "none" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)} or none"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=parse_duration, default=8.0, help="length of each wrk run (default 8s)")
    parser.add_argument("--warmup", type=parse_duration, default=2.0, help="keep-alive warm-up per target (default 2s)")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="workers of every server (default 1)")
    parser.add_argument("--no-nginx", action="store_true", help="leave nginx out")
    parser.add_argument(
        "--peers", type=parse_peers, default=list(PEERS), help=f"peers to run (default {','.join(PEERS)}; none)"
    )
    parser.add_argument("--server-cores", help="cores for the servers (default 0; 0,1 with --workers 2 or more)")
    parser.add_argument("--wrk-cores", help="cores for wrk (default 1; 0,1 with --workers 2 or more)")
    parser.add_argument(
        "--ready-timeout", type=float, default=30.0, help="seconds a server gets to answer (default 30)"
    )
    parser.add_argument(
        "--script",
        type=Path,
        default=REPO / "hello_world.py",
        help="the server to run (default: the repo's hello_world.py)",
    )
    parser.add_argument(
        "--reloads",
        type=parse_checkpoints,
        help="instead of wrk: time /metrics after this many reloads of ours (e.g. 10,100,1000)",
    )
    parser.add_argument("--samples", type=int, default=20, help="GETs of /metrics per checkpoint (default 20)")
    parser.add_argument("--requests-per-reload", type=int, default=5, help="GETs of / per generation (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) and print its path")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.connections < 1 or args.threads < 1 or args.workers < 1:
        parser.error("--rounds, --connections, --threads, --workers must be >= 1 and --duration >= 1s")
    return args


def plan_cores(args: argparse.Namespace) -> None:
    """Pin only when taskset exists and the cores are ours to use; else say so and run unpinned."""
    several = args.workers > 1
    args.server_cores = args.server_cores or ("0,1" if several else "0")
    args.wrk_cores = args.wrk_cores or ("0,1" if several else "1")
    usable = os.sched_getaffinity(0)
    wanted = {int(c) for c in f"{args.server_cores},{args.wrk_cores}".split(",")}
    if not shutil.which("taskset"):
        log.warning("taskset not found (Debian package util-linux): running unpinned")
    elif wanted <= usable:
        args.wrk_shares = bool(set(args.server_cores.split(",")) & set(args.wrk_cores.split(",")))
        return
    else:
        log.warning("cores %s are not all usable (have %s): running unpinned", sorted(wanted), sorted(usable))
    args.server_cores = args.wrk_cores = None
    args.wrk_shares = True


def check_pinning(targets: list[Target], cores: str | None) -> None:
    if cores is None:
        return
    expected = {cores, cores.replace(",", "-")}  # /proc writes 0,1 as 0-1
    for target in targets:
        mem = memory(target)
        for proc in [mem["root"], *mem["workers"]]:
            if proc["cpus"] not in expected:
                log.warning(
                    "%s process %d (%s) may run on cpus %s, not only %s",
                    target.name,
                    proc["pid"],
                    proc["name"],
                    proc["cpus"],
                    cores,
                )


def start_targets(args: argparse.Namespace, workdir: Path, targets: list[Target]) -> dict[str, str]:
    """Start ours, nginx and the peers into targets (so the caller stops them); what was skipped and why."""
    skipped: dict[str, str] = {}
    targets.append(start_ours(workdir / "ours", args))
    nginx = None if args.no_nginx else find_nginx()
    if nginx:
        targets.append(start_nginx(nginx, workdir / "nginx", args))
    elif not args.no_nginx:
        skipped["nginx"] = "not installed (Debian package nginx-light): no ratios to nginx"
    for name in args.peers:
        try:
            targets.append(start_peer(name, workdir / name, args))
        except PeerUnavailable as exc:
            skipped[name] = str(exc)
    for name, why in skipped.items():
        log.warning("skipping %s: %s", name, why)
    return skipped


def bench(args: argparse.Namespace, wrk: str, workdir: Path) -> dict[str, Any]:
    targets: list[Target] = []
    try:
        skipped = start_targets(args, workdir, targets)
        check_pinning(targets, args.server_cores)
        for target in targets:
            status, body = http_get(target.url + "/", timeout=1.0)
            if status != 200:
                raise BenchError(f"{target.name}: GET {target.url}/ answered {status} {body[:80]!r}")
        warm_up(targets, args, wrk)
        started = time.monotonic()
        runs = run_rounds(targets, args, wrk)
        log.info("rounds done in %.0fs", time.monotonic() - started)
        summary = summarise(runs, targets)
    finally:
        for target in targets:
            log.info("stopping %s (PID %d)", target.name, target.proc.pid)
            stop_process(target)
    settings = {
        k: getattr(args, k)
        for k in ("rounds", "duration", "connections", "threads", "workers", "server_cores", "wrk_cores", "wrk_shares")
    }
    settings["targets"] = [t.name for t in targets]
    settings["skipped"] = skipped
    settings["server_config"] = yaml.safe_load((workdir / "ours" / "config.yaml").read_text())["system"]["server"]
    return {"settings": settings, "runs": [asdict(r) for r in runs], "summary": summary}


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so the servers we started are stopped by the finally blocks


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if not wrk and args.reloads is None:
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
        report = bench_reloads(args, workdir) if args.reloads is not None else bench(args, wrk, workdir)
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
    text = render_reloads(report) if args.reloads is not None else render(report)
    print(json.dumps(report, indent=2) if args.json else text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
