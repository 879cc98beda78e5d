"""Backups that restore: daily gzip tar archives of the system, checked, pruned and restorable.

    python backup_script.py [create]                   one backup now (make backup, what cron calls)
    python backup_script.py verify [ARCHIVE]           checksum, then a full read (default: every archive)
                                                       (ARCHIVE: a path, or the bare name that `list` prints)
    python backup_script.py list [--json]              name, time, size, checksum verified
    python backup_script.py restore ARCHIVE --target DIR [--force] [--keep-setuid]
    python backup_script.py prune [--dry-run]          apply system.backup.keep
    python backup_script.py schedule [--at HH:MM[:SS] | --every SECONDS]   the daily loop (make backup-schedule)
    python backup_script.py drill                      restore the newest archive into a scratch folder, compare
    python backup_script.py list|verify [NAME] --offsite, restore NAME --offsite --target DIR   the off-host copies
    python backup_script.py serve-vault                production: serve the archives read-only to the vault's key
    python backup_script.py pull                       the vault: copy production's new archives, check, keep, drill

Settings come from config.yaml (system.backup, run_dir, monitoring.pushgateway) via hello/base/config.py.
Exit codes: 0 done; 1 the job failed (nothing partial left); 2 bad usage or config; 75 another run holds
<run_dir>/backup.lock (for restore: another restore into that target holds its lock in <run_dir>/restore/).

This module is the command (arguments, output, exit codes); the work is in hello/backup/, a module per concept
(docs/architecture.md): create.py, inventory.py (list, verify), restore.py, drill.py, offsite.py, vault_pull.py.
"""

from __future__ import annotations

import hello.base.venv  # noqa: F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
import argparse
import contextlib
import json
import logging
import signal
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hello.backup import inventory, rclone, vault_pull, vault_serve
from hello.backup.archive_writer import TERMINATION, Terminated
from hello.backup.create import backup_run
from hello.backup.drill import drill_newest
from hello.backup.manifest import MANIFEST_DIR
from hello.backup.naming import Archive, BackupError, UsageError, archive_argument
from hello.backup.offsite import fetched, prune_everywhere, require_remote
from hello.backup.restore import restore_archive
from hello.backup.schedule_loop import ScheduleError, schedule_backups
from hello.base.config import EXIT_CONFIG, EXIT_FAILED, EXIT_LOCKED, EXIT_OK, ConfigError, load_config
from hello.base.locks import LockHeld

log = logging.getLogger("backup")


def _say_created(archive: Archive, size: int, seconds: float) -> None:
    print(f"created {archive.path}")
    print(f"  size {size} bytes ({size / 1e6:.1f} MB), took {seconds:.2f} s")


def _locked(message: str, exc: LockHeld) -> int:
    log.error(message, exc.path, exc.pid)
    return EXIT_LOCKED


def run_create(config: dict[str, Any], *, show_progress: bool = False) -> int:
    try:
        copied = backup_run(config, show_progress=show_progress, written=_say_created)
    except LockHeld as exc:
        return _locked("another backup run holds %s (PID %s); not starting", exc)
    return EXIT_OK if copied else EXIT_FAILED


def run_list(config: dict[str, Any], args: argparse.Namespace) -> int:
    """list's output: JSON, or one line per archive (name, time, size, status), or what says there is none."""
    if args.offsite:
        with require_remote(config) as remote:
            rows = inventory.offsite_rows(config, remote)
        status, nothing = ("has_checksum", "sidecar ok", "NO SIDECAR"), f"no archives on {remote.spec}"
    else:
        rows, status = inventory.local_rows(config), ("checksum_ok", "checksum ok", "checksum BAD")
        nothing = f"no archives in {config['backup']['destination']}"
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        print(f"{row['name']}  {row['time']}  {row['size']:>12}  {status[1] if row[status[0]] else status[2]}")
    if not rows:
        print(nothing)
    return EXIT_OK


def run_verify(config: dict[str, Any], args: argparse.Namespace) -> int:
    with require_remote(config) if args.offsite else contextlib.nullcontext() as remote:
        if remote is None:
            found: list[Any] = inventory.local_to_verify(config, args.archive)
            verdicts, where = inventory.verify_local(found), f"in {config['backup']['destination']}"
        else:
            found = inventory.offsite_to_verify(config, remote, args.archive)
            verdicts, where = inventory.verify_offsite(config, remote, found), f"on {remote.spec}"
        if not found:
            log.error("no archives %s to verify", where)
            return EXIT_FAILED
        failed = 0
        for passed, text in verdicts:
            failed += not passed
            print(f"OK   {text}" if passed else f"FAIL {text}")
    return EXIT_FAILED if failed else EXIT_OK


def run_restore(config: dict[str, Any], args: argparse.Namespace) -> int:
    if args.offsite:  # downloaded into a private folder under run_dir with its sidecar, checked, then restored
        with require_remote(config) as remote, fetched(config, remote, args.archive) as path:
            return _restore(config, path, args)
    return _restore(config, archive_argument(config, args.archive), args)


def _restore(config: dict[str, Any], path: Path, args: argparse.Namespace) -> int:
    started, target = time.monotonic(), args.target
    try:
        done = restore_archive(config, path, target, force=args.force, keep_setid=args.keep_setuid)
    except LockHeld as exc:
        log.error("another restore into %s holds %s (PID %s); not starting", target, exc.path, exc.pid)
        return EXIT_LOCKED
    print(f"restored {done.members} members of {path} into {target} in {time.monotonic() - started:.2f} s")
    if done.kept is not None:
        print(f"  {done.members - done.kept_members} in the tree, {done.kept_members} in the archive's {MANIFEST_DIR}/")
        print(f"  its manifest (and any hooks' output), kept apart from the tree: {done.kept}")
    return EXIT_OK


def run_prune(config: dict[str, Any], args: argparse.Namespace) -> int:
    try:
        doomed, remote_said = prune_everywhere(config, args.dry_run)
    except LockHeld as exc:
        return _locked("another backup run holds %s (PID %s); not pruning", exc)
    if remote_said:
        print(remote_said)
    print(f"prune: {'would delete' if args.dry_run else 'deleted'} {len(doomed)} archive(s)")
    return EXIT_OK


def run_drill(config: dict[str, Any], args: argparse.Namespace) -> int:
    try:
        result = drill_newest(config)
    except LockHeld as exc:
        return _locked("another backup run holds %s (PID %s); no drill now", exc)
    print(f"drill passed: {result.archive.name} (commit {result.commit[:12]}, {result.seconds:.2f} s)")
    print(
        f"  {result.entries} manifest entries restored exactly ({result.entries - result.kept} in the tree, "
        f"{result.kept} in {MANIFEST_DIR}/, kept apart) + the manifest itself = {result.entries + 1} members"
    )
    return EXIT_OK


def run_pull(config: dict[str, Any], args: argparse.Namespace) -> int:
    try:
        result = vault_pull.pull_under_lock(config)
    except LockHeld as exc:
        return _locked("another pull holds %s (PID %s); not starting", exc)
    newest = result.newest.name if result.newest else "none"
    print(
        f"pulled {len(result.pulled)} archive(s) from {result.source} into {result.store} in {result.seconds:.2f} s; "
        f"newest there {newest}; pruned {len(result.pruned)}"
    )
    if result.drilled is not None:
        print(f"  drill passed: {result.drilled.archive.name} ({result.drilled.seconds:.2f} s)")
    return EXIT_OK


def run_schedule(config: dict[str, Any], args: argparse.Namespace) -> int:
    schedule_backups(config, lambda: run_create(config), at=args.at, every=args.every)  # ScheduleError: exit 2
    return EXIT_OK


COMMANDS: dict[str, Callable[[dict[str, Any], argparse.Namespace], int]] = {
    "create": lambda config, _args: run_create(config, show_progress=sys.stderr.isatty()),
    "verify": run_verify,
    "list": run_list,
    "restore": run_restore,
    "drill": run_drill,
    "prune": run_prune,
    "serve-vault": lambda config, _args: vault_serve.serve(config),
    "pull": run_pull,
    "schedule": run_schedule,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="backup_script.py", description="Backups that restore (see the module docstring and README)."
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("create", help="one backup now, then prune (the default)")
    verify = commands.add_parser("verify", help="check the checksum, then read the whole archive")
    verify.add_argument(
        "archive", nargs="?", help="one archive, a path or the name `list` prints (default: every archive)"
    )
    verify.add_argument("--offsite", action="store_true", help="download and check the copies on the remote")
    listing = commands.add_parser("list", help="archives with time, size and checksum status")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--offsite", action="store_true", help="the copies on system.backup.offsite.remote")
    restore_cmd = commands.add_parser("restore", help="restore an archive into a directory")
    restore_cmd.add_argument(
        "archive", help="an archive path or the name `list` prints (with --offsite: an archive name on the remote)"
    )
    restore_cmd.add_argument("--offsite", action="store_true", help="download ARCHIVE from the remote, check, restore")
    restore_cmd.add_argument("--target", required=True, help="the directory to restore into")
    restore_cmd.add_argument("--force", action="store_true", help="restore into a non-empty directory")
    restore_cmd.add_argument(
        "--keep-setuid", action="store_true", help="keep setuid/setgid bits of restored files (dropped by default)"
    )
    prune_cmd = commands.add_parser("prune", help="delete archives beyond system.backup.keep")
    prune_cmd.add_argument("--dry-run", action="store_true", help="print what would be deleted")
    commands.add_parser("drill", help="restore the newest archive into a scratch folder and compare its manifest")
    commands.add_parser("serve-vault", help="serve the archives read-only over SFTP to the vault (foreground)")
    commands.add_parser("pull", help="on the vault: copy production's new archives, check them, prune, drill")
    sched = commands.add_parser("schedule", help="the loop: one backup a day at system.backup.time")
    when = sched.add_mutually_exclusive_group()
    when.add_argument("--at", metavar="HH:MM[:SS]", help="another time of day than system.backup.time")
    when.add_argument("--every", type=float, metavar="SECONDS", help="run every SECONDS instead (for tests)")
    args = parser.parse_args(argv or ["create"])
    args.command = args.command or "create"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s backup %(levelname)s %(message)s", stream=sys.stderr)
    if args.command != "schedule":
        signal.signal(signal.SIGTERM, TERMINATION.handler)
    try:
        return COMMANDS[args.command](load_config(), args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except (UsageError, ScheduleError) as exc:
        print(f"backup_script.py: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (BackupError, rclone.OffsiteError, OSError, tarfile.TarError) as exc:  # one line, never a traceback
        print(f"backup_script.py: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (Terminated, KeyboardInterrupt):
        print("backup_script.py: interrupted; nothing partial was left", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
