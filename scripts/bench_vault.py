"""Benchmark the vault's pull of a 300 MB archive against a plain `rclone copy` of the same file.

    python -m scripts.bench_vault [--megabytes 300] [--runs 3] [--json]      (make bench-vault)

Production's side is the real `backup_script.py serve-vault` (rclone serve sftp --read-only, key login, the kit's
host key) on a free 127.0.0.1 port, serving a folder with one archive of random bytes (as incompressible as a gzip
archive) and its sidecar. Then, alternating, RUNS times each into an empty store:
  - `backup_script.py pull` (the whole command: start, rclone rcd, listing, copy, sha256 against the sidecar,
    link into the store, retention, metrics; the drill is off: random bytes are no tar archive),
  - plain `rclone copy production: DIR --include <archive> --include <sidecar>` with the vault's own rclone config,
and once more a pull with nothing new. Prints the medians, the throughput of each and their ratio.
Goal: the pull at least GOAL_RATIO (0.6) of plain rclone copy's throughput (it also reads every byte again to
check the sha256). Exit 0 when met, 1 when not (or a run failed), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split

import yaml  # noqa: E402

from hello.backup.naming import archive_name  # noqa: E402

MB = 1_000_000
GOAL_RATIO = 0.6
SCRIPT = str(REPO / "backup_script.py")
PYTHON = sys.executable


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(path: Path, system: dict) -> Path:
    path.write_text(yaml.safe_dump({"system": system}))
    return path


def make_archive(folder: Path, megabytes: int) -> Path:
    folder.mkdir(mode=0o700)
    archive = folder / archive_name(datetime.now(UTC))
    digest = hashlib.sha256()
    with open(archive, "wb") as handle:
        for _ in range(megabytes):
            block = os.urandom(MB)
            digest.update(block)
            handle.write(block)
    archive.with_name(archive.name + ".sha256").write_text(f"{digest.hexdigest()}  {archive.name}\n")
    return archive


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[-3:])} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds


def bench(base: Path, megabytes: int, runs: int) -> dict:
    archive = make_archive(base / "backups", megabytes)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "vault_key")], check=True)
    port = free_port()
    common = {"monitoring": {"pushgateway": {"url": None}}}
    prod = write_config(
        base / "prod.yaml",
        {
            **common,
            "run_dir": str(base / "prod-run"),
            "backup": {
                "destination": str(base / "backups"),
                "vault": {"listen": f"127.0.0.1:{port}", "authorized_keys": str(base / "vault_key.pub")},
            },
        },
    )
    log = base / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [PYTHON, SCRIPT, "serve-vault"],
            env={**os.environ, "HELLO_CONFIG": str(prod)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "known_hosts line:" not in log.read_text():
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve-vault did not start: {log.read_text()[-500:]}")
            time.sleep(0.05)
        (base / "known_hosts").write_text(log.read_text().split("known_hosts line: ", 1)[1].splitlines()[0] + "\n")
        store = base / "store"
        vault = write_config(
            base / "vault.yaml",
            {
                **common,
                "run_dir": str(base / "vault-run"),
                "backup": {
                    "vault": {
                        "pull_from": f"127.0.0.1:{port}",
                        "identity": str(base / "vault_key"),
                        "known_hosts": str(base / "known_hosts"),
                        "store": str(store),
                        "drill": False,
                    }
                },
            },
        )
        env = {**os.environ, "HELLO_CONFIG": str(vault)}
        rclone_conf = base / "vault-run" / "vault" / "rclone.conf"  # written by the first pull
        plain_dir = base / "plain"
        pulls, plains = [], []
        for run in range(runs):
            shutil.rmtree(store, ignore_errors=True)
            pulls.append(timed([PYTHON, SCRIPT, "pull"], env))
            shutil.rmtree(plain_dir, ignore_errors=True)
            include = ["--include", archive.name, "--include", archive.name + ".sha256"]
            plains.append(
                timed(["rclone", "--config", str(rclone_conf), "copy", "production:", str(plain_dir), *include], env)
            )
            if (store / archive.name).stat().st_size != archive.stat().st_size:
                raise RuntimeError("the pulled copy has another size")
            say(f"  run {run + 1}: pull {pulls[-1]:.2f} s, plain rclone copy {plains[-1]:.2f} s")
        idle = timed([PYTHON, SCRIPT, "pull"], env)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    pull, plain = statistics.median(pulls), statistics.median(plains)
    return {
        "megabytes": megabytes,
        "runs": runs,
        "pull_seconds": pull,
        "plain_rclone_copy_seconds": plain,
        "pull_mb_per_s": megabytes / pull,
        "plain_mb_per_s": megabytes / plain,
        "ratio": plain / pull,
        "nothing_new_pull_seconds": idle,
        "pulls": pulls,
        "plains": plains,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The vault's pull against plain rclone copy.")
    parser.add_argument("--megabytes", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.megabytes < 1 or args.runs < 1:
        parser.error("--megabytes and --runs must be at least 1")
    for tool in ("rclone", "ssh-keygen"):
        if shutil.which(tool) is None:
            say(f"bench_vault: {tool} is not installed")
            return 1
    say(f"vault pull of a {args.megabytes} MB archive against plain rclone copy, over 127.0.0.1 SFTP")
    with tempfile.TemporaryDirectory(prefix="hello-bench-vault-") as scratch:
        try:
            result = bench(Path(scratch), args.megabytes, args.runs)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            say(f"bench_vault: {exc}")
            return 1
    result["goal_ratio"] = GOAL_RATIO
    met = result["ratio"] >= GOAL_RATIO
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        pull, plain = result["pull_seconds"], result["plain_rclone_copy_seconds"]
        print(f"pull            {pull:6.2f} s  {result['pull_mb_per_s']:7.1f} MB/s  (median of {args.runs})")
        print(f"rclone copy     {plain:6.2f} s  {result['plain_mb_per_s']:7.1f} MB/s")
        verdict = "met" if met else "NOT met"
        print(f"ratio           {result['ratio']:6.2f}x plain's throughput (goal >= {GOAL_RATIO}): {verdict}")
        print(f"nothing new     {result['nothing_new_pull_seconds']:6.2f} s  (a pull that finds no new archive)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
