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

This module is the command: arguments, output, exit codes, the lock and the metrics of each run. The parts:
hello/backup/: naming.py (names, sidecars, the checksum check), archive.py (reading back, verify),
archive_writer.py (the tar stream), create.py (one archive, crash-safe), retention.py (keep and prune),
offsite.py (the remote, over rclone.py), schedule_loop.py (the daily loop), restore.py.

A restore (hello/backup/restore.py) changes nothing outside its target, whatever the archive holds: members are
written into a new folder beside the target without ever following a symbolic link, checked on disk,
and the folder then takes the target's place. Setuid/setgid bits are dropped unless --keep-setuid. A
`restore --force` killed between its two renames is completed by the next restore into that target: its journal
and lock live in the private <run_dir>/restore/, never beside the target.

Archives are <destination>/hello-world-<UTC YYYYmmddTHHMMSSZ>.tar.gz (mode 0600, destination 0700), each
with a sidecar <archive>.sha256 that `sha256sum -c` accepts. An archive is streamed to a dot-named
`.hello-world-....partial` file, fsynced, then its sidecar is written (temporary name, fsync, rename), and
only then the archive is renamed to its final name and the directory fsynced: a final name always means a
complete archive whose sidecar already exists. Leftovers of a killed run are removed by the next create.
Two creates within one second: the second waits for the next second, so names never collide.

Excluded: the destination itself (compared by device and inode, so also when it lies inside the source
under another spelling), and every file or directory whose name matches a system.backup.exclude pattern
(fnmatch: `.git`, `*.pyc`) at any depth; an excluded directory is skipped with all it contains.
Symbolic links are stored as links. Compression is gzip-compatible, by ISA-L (python-isal) in a
background thread, so `tar xzf` and `gzip -t` read the archives.

Each archive ends with its manifest (.hello-backup/manifest.json, hello/backup/manifest.py): every member's name, type,
size, mode and sha256, the commit being served and the config used; what system.backup.hooks.before wrote to
$HELLO_BACKUP_STAGING is under .hello-backup/staging/ (hello/backup/hooks.py). A failing hook, or a destination
with less free space than the last archive's size plus a margin (hello/backup/disk_guard.py), fails the run before
anything is written. With system.backup.offsite.remote set, create then copies every archive the remote lacks
(hello/backup/rclone.py,
through rclone: temporary name, checksum checked there, rename) and prunes the remote by the same plan; a failed
copy keeps the local archives, records hello_world_backup_offsite_success 0 and exits 1. `drill` verifies the newest
archive (off-host when configured), restores it into <run_dir>/drill/ and compares it with its manifest
(hello/backup/drill.py), recording hello_world_backup_drill_success.
"""

from __future__ import annotations

import hello.base.venv  # noqa: F401 - first: outside the checkout's .venv this runs the command in it

# isort: split
import argparse
import contextlib
import functools
import json
import logging
import signal
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from hello.backup import offsite_versions, rclone, restore, vault_pull, vault_serve
from hello.backup.archive import open_tar_stream, verify_archive
from hello.backup.archive_writer import TERMINATION, Progress, Terminated
from hello.backup.create import create
from hello.backup.drill import DrillFailed, Steps, drill
from hello.backup.manifest import MANIFEST_DIR
from hello.backup.naming import DRILL_JOB, JOB, NAMING, SIDECAR, BackupError, UsageError, check_checksum, find_archives
from hello.backup.offsite import configured_remote, copy_offsite, fetched, immutable, require_remote, session
from hello.backup.retention import keep_plan, prune
from hello.backup.schedule_loop import ScheduleError, run_schedule
from hello.base.config import EXIT_CONFIG, EXIT_FAILED, EXIT_LOCKED, EXIT_OK, ConfigError, load_config
from hello.base.files import NotPrivate
from hello.base.job_metrics import record_job
from hello.base.locks import LockHeld, job_lock

log = logging.getLogger("backup")


# --- create ---


def run_create(config: dict[str, Any], *, show_progress: bool = False) -> int:
    """One backup under the lock, then its metrics, then prune; return the exit code.

    Every run that fails, whatever step failed (taking the lock, say on a full disk; the archive; its sidecar;
    the prune), is recorded as failed: the textfile attempted, the Pushgateway pushed when configured. A run
    is recorded as soon as its archive is written; a prune failing after that fails the run (exit 1) and is
    recorded again: success 0, but the last success is that archive's (it exists and is good).
    """
    started = time.time()
    lock = Path(config["run_dir"]) / "backup.lock"
    extra: dict[str, float] = {}
    written: float | None = None  # when the archive got its final name
    try:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(job_lock(lock))
            except OSError as exc:
                raise BackupError(f"cannot take the lock {lock}: {exc.strerror or exc}") from None
            # rclone (when a remote is configured) starts beside the archive's writing, ready when the copy begins.
            remote = stack.enter_context(session(config, show_progress))
            archive, size = create(config, progress=Progress(show_progress))
            written = time.time()
            extra = {f"{JOB}_size_bytes": float(size), f"{JOB}_duration_seconds": written - started}
            print(f"created {archive.path}")
            print(f"  size {size} bytes ({size / 1e6:.1f} MB), took {written - started:.2f} s")
            record_job(config, JOB, success=True, started=started, finished=written, extra=extra)
            copied = copy_offsite(config, remote, fresh=archive.path)
            try:
                prune(config, dry_run=False, known_good=archive.path)
            except Terminated:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever stopped the prune, the archive stands
                failed = f"backup {archive.path} was written, but pruning old archives failed"
                raise BackupError(f"{failed}: {exc}") from None
    except LockHeld as exc:
        log.error("another backup run holds %s (PID %s); not starting", exc.path, exc.pid)
        return EXIT_LOCKED
    except BaseException:
        finished = time.time()
        extra[f"{JOB}_duration_seconds"] = finished - started
        record_job(config, JOB, success=False, started=started, finished=finished, extra=extra, last_success=written)
        raise
    return EXIT_OK if copied else EXIT_FAILED


# --- off-host copies (hello/backup/offsite.py, hello/backup/rclone.py) ---


def run_list_offsite(config: dict[str, Any], as_json: bool) -> int:
    with require_remote(config) as remote:
        files = offsite_versions.every_file(remote) if immutable(config) else remote.files()
    rows = [
        {
            "name": name,
            "path": remote.path(name),
            "time": created.isoformat(),
            "size": files[name],
            "has_checksum": NAMING.sidecar(name) in files,
        }
        for name, created in rclone.archives_on(files, NAMING).items()
    ]
    status = {True: "sidecar ok", False: "NO SIDECAR"}
    return _print_listing(rows, as_json, lambda row: status[row["has_checksum"]], f"no archives on {remote.spec}")


def run_verify_offsite(config: dict[str, Any], name: str | None) -> int:
    with require_remote(config) as remote:
        names = [name] if name else list(rclone.archives_on(remote.files(), NAMING))
        if not names:
            log.error("no archives on %s to verify", remote.spec)
            return EXIT_FAILED
        failed = 0
        for each in names:
            started = time.monotonic()
            try:
                rclone.verify(remote, each, NAMING)
            except rclone.OffsiteError as exc:
                failed += 1
                print(f"FAIL {exc}")
            else:
                print(f"OK   {remote.path(each)} (every byte matches its sidecar, {time.monotonic() - started:.2f} s)")
    return EXIT_FAILED if failed else EXIT_OK


def run_restore_offsite(config: dict[str, Any], name: str, target: str, force: bool, keep_setid: bool) -> int:
    with require_remote(config) as remote, fetched(config, remote, name) as path:
        return run_restore(config, str(path), target, force, keep_setid)


def run_prune_offsite(config: dict[str, Any], dry_run: bool) -> None:
    if immutable(config):  # (a remote is set: the config check makes sure)
        days = config["backup"]["offsite"]["immutable"]["retention_days"]
        print(
            f"prune: {config['backup']['offsite']['remote']} is immutable (Object Lock, {days} days): nothing deleted "
            "there; its lifecycle rule or an admin-side job expires old copies"
        )
        return
    connection = configured_remote(config)
    if connection is not None:
        with connection as remote:
            doomed = rclone.prune(remote, NAMING, keep_plan(config), dry_run=dry_run)
        print(f"prune: {'would delete' if dry_run else 'deleted'} {len(doomed)} archive(s) on {remote.spec}")


# --- the restore drill (hello/backup/drill.py) ---


def _drill_restore(config: dict[str, Any], archive: Path, target: Path) -> Path | None:
    return _restore(config, archive, str(target), force=False, keep_setid=False).kept


def run_drill(config: dict[str, Any]) -> int:
    """Restore the newest archive (off-host when configured) into a scratch folder and compare it with its manifest."""
    run_dir = Path(config["run_dir"])
    try:
        with job_lock(run_dir / "backup.lock"):  # no prune deletes the archive under the drill
            started = time.time()
            try:
                result = _drill_newest(config, run_dir)
            except (BackupError, rclone.OffsiteError, DrillFailed, OSError, tarfile.TarError) as exc:
                record_job(config, DRILL_JOB, success=False, started=started, finished=time.time())
                raise BackupError(f"drill failed: {exc}") from None
            record_job(config, DRILL_JOB, success=True, started=started, finished=time.time())
    except LockHeld as exc:
        log.error("another backup run holds %s (PID %s); no drill now", exc.path, exc.pid)
        return EXIT_LOCKED
    print(f"drill passed: {result.archive.name} (commit {result.commit[:12]}, {result.seconds:.2f} s)")
    print(
        f"  {result.entries} manifest entries restored exactly ({result.entries - result.kept} in the tree, "
        f"{result.kept} in {MANIFEST_DIR}/, kept apart) + the manifest itself = {result.entries + 1} members"
    )
    return EXIT_OK


def _drill_newest(config: dict[str, Any], run_dir: Path):
    connection = configured_remote(config)
    scratch = run_dir / "drill"
    # Checksum first; the full read of `verify` would be done twice: the restore reads every byte (scan, extract).
    steps = Steps(
        verify=check_checksum, restore=functools.partial(_drill_restore, config), remove_tree=restore.remove_tree
    )
    if connection is None:
        found = find_archives(Path(config["backup"]["destination"]))
        if not found:
            raise BackupError(f"no archives in {config['backup']['destination']} to drill")
        return drill(found[-1].path, scratch, steps)
    with connection as remote:
        files = offsite_versions.every_file(remote) if immutable(config) else remote.files()
        names = list(rclone.archives_on(files, NAMING))
        if not names:
            raise BackupError(f"no archives on {remote.spec} to drill")
        with fetched(config, remote, names[-1]) as path:
            return drill(path, scratch, steps)


# --- the vault: a second host pulls (hello/backup/vault_serve.py, hello/backup/vault_pull.py) ---


def run_pull(config: dict[str, Any]) -> int:
    steps = Steps(
        verify=check_checksum, restore=functools.partial(_drill_restore, config), remove_tree=restore.remove_tree
    )
    try:
        with job_lock(Path(config["run_dir"]) / "vault-pull.lock"):
            result = vault_pull.pull(config, steps)
    except LockHeld as exc:
        log.error("another pull holds %s (PID %s); not starting", exc.path, exc.pid)
        return EXIT_LOCKED
    newest = result.newest.name if result.newest else "none"
    print(
        f"pulled {len(result.pulled)} archive(s) from {result.source} into {result.store} in {result.seconds:.2f} s; "
        f"newest there {newest}; pruned {len(result.pruned)}"
    )
    if result.drilled is not None:
        print(f"  drill passed: {result.drilled.archive.name} ({result.drilled.seconds:.2f} s)")
    return EXIT_OK


# --- verify and list ---


def _archive_arg(config: dict[str, Any], value: str) -> Path:
    """The archive a command was given: a path, or a bare name as `list` prints it (looked for in the destination)."""
    destination = Path(config["backup"]["destination"])
    path = Path(value)
    if not path.is_file() and "/" not in value and (destination / value).is_file():
        path = destination / value
    if path.name.endswith(SIDECAR):
        archive = path.name.removesuffix(SIDECAR)
        raise UsageError(f"{value}: that is the checksum sidecar of {archive}; give the archive itself")
    if not path.is_file():
        raise UsageError(f"{value}: no such archive (neither a file nor an archive name in {destination})")
    return path


def run_verify(config: dict[str, Any], archive: str | None) -> int:
    paths = (
        [_archive_arg(config, archive)]
        if archive
        else [a.path for a in find_archives(Path(config["backup"]["destination"]))]
    )
    if not paths:
        log.error("no archives in %s to verify", config["backup"]["destination"])
        return EXIT_FAILED
    failed = 0
    for path in paths:
        started = time.monotonic()
        try:
            members = verify_archive(path)
        except BackupError as exc:
            failed += 1
            print(f"FAIL {exc}")
        else:
            print(f"OK   {path} ({members} members, {time.monotonic() - started:.2f} s)")
    return EXIT_FAILED if failed else EXIT_OK


def run_list(config: dict[str, Any], as_json: bool) -> int:
    rows = []
    destination = config["backup"]["destination"]
    for archive in find_archives(Path(destination)):
        try:
            check_checksum(archive.path)
            verified, problem = True, None
        except BackupError as exc:
            verified, problem = False, str(exc)
        rows.append(
            {
                "name": archive.path.name,
                "path": str(archive.path),
                "time": archive.created.isoformat(),
                "size": archive.path.stat().st_size,
                "checksum_ok": verified,
                "problem": problem,
            }
        )
    status = {True: "checksum ok", False: "checksum BAD"}
    return _print_listing(rows, as_json, lambda row: status[row["checksum_ok"]], f"no archives in {destination}")


def _print_listing(rows: list[dict[str, Any]], as_json: bool, status, nothing: str) -> int:
    """list's output: JSON, or one line per archive (name, time, size, status), or what says there is none."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        print(f"{row['name']}  {row['time']}  {row['size']:>12}  {status(row)}")
    if not rows:
        print(nothing)
    return EXIT_OK


# --- restore (hello/backup/restore.py: what is written where, and the checks) ---


def _restore(config: dict[str, Any], path: Path, target: str, *, force: bool, keep_setid: bool) -> restore.Restored:
    """The checked restore of the archive at path (hello/backup/restore.py); its errors as this command's."""
    check_checksum(path)
    try:
        return restore.restore(
            functools.partial(open_tar_stream, path),
            Path(target),
            run_dir=Path(config["run_dir"]),
            label=str(path),
            force=force,
            keep_setid=keep_setid,
        )
    except restore.TargetError as exc:
        raise UsageError(str(exc)) from None
    except restore.RestoreError as exc:
        raise BackupError(str(exc)) from None
    except NotPrivate as exc:
        raise UsageError(f"system.run_dir: {exc}") from None


def run_restore(config: dict[str, Any], archive: str, target: str, force: bool, keep_setid: bool = False) -> int:
    path = _archive_arg(config, archive)
    started = time.monotonic()
    try:
        done = _restore(config, path, target, force=force, keep_setid=keep_setid)
    except LockHeld as exc:
        log.error("another restore into %s holds %s (PID %s); not starting", target, exc.path, exc.pid)
        return EXIT_LOCKED
    print(f"restored {done.members} members of {path} into {target} in {time.monotonic() - started:.2f} s")
    if done.kept is not None:
        print(f"  {done.members - done.kept_members} in the tree, {done.kept_members} in the archive's {MANIFEST_DIR}/")
        print(f"  its manifest (and any hooks' output), kept apart from the tree: {done.kept}")
    return EXIT_OK


# --- prune (hello/backup/retention.py) ---


def run_prune(config: dict[str, Any], dry_run: bool) -> int:
    try:
        with job_lock(Path(config["run_dir"]) / "backup.lock"):
            doomed = prune(config, dry_run=dry_run)
            run_prune_offsite(config, dry_run)
    except LockHeld as exc:
        log.error("another backup run holds %s (PID %s); not pruning", exc.path, exc.pid)
        return EXIT_LOCKED
    verb = "would delete" if dry_run else "deleted"
    print(f"prune: {verb} {len(doomed)} archive(s)")
    return EXIT_OK


# --- schedule (hello/backup/schedule_loop.py) ---


def _scheduled_run(config: dict[str, Any]) -> None:
    """One scheduled backup: failures are logged (and recorded as metrics), never raised into the loop."""
    log.info("scheduled backup starting")
    try:
        code = run_create(config)
    except (BackupError, UsageError) as exc:
        log.error("scheduled backup failed: %s", exc)
    except Exception:
        log.exception("scheduled backup failed unexpectedly")
    else:
        if code == EXIT_LOCKED:
            log.warning("scheduled backup skipped: another run holds the lock")
        elif code == EXIT_FAILED:
            log.warning("scheduled backup done, but its off-host copy failed (the next run retries it)")
        else:
            log.info("scheduled backup done")


def run_schedule_loop(config: dict[str, Any], at: str | None, every: float | None) -> int:
    try:
        run_schedule(
            functools.partial(_scheduled_run, config),
            at=at or config["backup"]["time"],
            every=every,
            zone_name=config["backup"]["timezone"],
        )
    except ScheduleError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


# --- command line ---


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


def dispatch(args: argparse.Namespace) -> int:
    config = load_config()
    if args.command == "create":
        return run_create(config, show_progress=sys.stderr.isatty())
    if args.command == "verify":
        return run_verify_offsite(config, args.archive) if args.offsite else run_verify(config, args.archive)
    if args.command == "list":
        return run_list_offsite(config, args.json) if args.offsite else run_list(config, args.json)
    if args.command == "restore" and args.offsite:
        return run_restore_offsite(config, args.archive, args.target, args.force, args.keep_setuid)
    if args.command == "restore":
        return run_restore(config, args.archive, args.target, args.force, args.keep_setuid)
    if args.command == "drill":
        return run_drill(config)
    if args.command == "prune":
        return run_prune(config, args.dry_run)
    if args.command == "serve-vault":
        return vault_serve.serve(config)
    if args.command == "pull":
        return run_pull(config)
    return run_schedule_loop(config, args.at, args.every)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s backup %(levelname)s %(message)s", stream=sys.stderr)
    if args.command != "schedule":
        signal.signal(signal.SIGTERM, TERMINATION.handler)
    try:
        return dispatch(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as exc:
        print(f"backup_script.py: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (BackupError, rclone.OffsiteError) as exc:
        print(f"backup_script.py: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, tarfile.TarError) as exc:  # one line naming the problem, never a traceback
        print(f"backup_script.py: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (Terminated, KeyboardInterrupt):
        print("backup_script.py: interrupted; nothing partial was left", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
