"""What hostile clients make a worker hold: its RSS before and after each (issue 10, items 3 and 4).

    .venv/bin/python -m scripts.bench_hostile [--script PATH/hello_world.py] [--json]

Starts the server (one worker, its own config and run dir in a temp dir, header_timeout 60s so that no
timer ends an attack early), then measures the worker's RSS and peak RSS (VmRSS, VmHWM from /proc):
idle; after one connection sends 960 KiB of tiny `a:` headers; after four more do; after one client
pipelines GET / for up to 10 s without reading an answer. `--script` measures another copy of
hello_world.py (e.g. main's) with the same steps. Exit 0, or 1 when the server does not start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split

from hello.base.proc import free_port  # noqa: E402

FLOOD = b"GET / HTTP/1.1\r\n" + b"a:\r\n" * (960 * 1024 // 4)


def memory_mib(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: round(int(fields[name].split()[0]) / 1024, 1) for name in ("VmRSS", "VmHWM")}


def flood_headers(port: int, connections: int) -> None:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(connections)]
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.sendall(FLOOD)
    time.sleep(0.5)  # what the worker holds while the connections stay open
    for sock in socks:
        sock.close()


def never_read(port: int, seconds: float = 10) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1)
    chunk = b"GET / HTTP/1.1\r\nHost:x\r\n\r\n" * 2800  # 72 KiB; HTTP/1.1 needs Host (else 400, closed)
    deadline = time.monotonic() + seconds
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            sock.sendall(chunk)
    sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", type=Path, default=REPO / "hello_world.py", help="the hello_world.py to measure")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp) / "config.yaml"
        config.write_text(
            f"system:\n  run_dir: {tmp}/run\n  server: {{port: {port}, header_timeout: 60s, keep_alive_timeout: 60s}}\n"
        )
        env = {**os.environ, "HELLO_CONFIG": str(config)}
        with open(Path(tmp) / "server.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(args.script)], cwd=args.script.parent, env=env, stdout=log, stderr=log
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        print(f"the server did not start: see {tmp}/server.log", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            worker = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
            steps = {"idle": memory_mib(worker)}
            flood_headers(port, 1)
            steps["960 KiB of tiny headers, 1 connection"] = memory_mib(worker)
            flood_headers(port, 4)
            steps["960 KiB of tiny headers, 4 connections"] = memory_mib(worker)
            never_read(port)
            steps["pipelined GET / never read, 10 s"] = memory_mib(worker)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if args.json:
        print(json.dumps({"script": str(args.script), "steps": steps}, indent=2))
    else:
        print(f"worker RSS / peak RSS (MiB) of {args.script}")
        for name, figures in steps.items():
            print(f"  {name:<42} {figures['VmRSS']:>7} / {figures['VmHWM']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
