"""The vault's side: pull production's new archives over its read-only SFTP, check them, keep them, drill them.

    result = pull_under_lock(config)  # `backup_script.py pull`: pull() under the lock, drilled by drill.restore_steps
    result = pull(config, steps)      # PullResult; BackupError (exit 1) naming the archive it refused

A second host runs the same kit with system.backup.vault.pull_from set. Each run, under <run_dir>/vault-pull.lock:
1. lists production's archives (vault_serve.py serves them read-only; the vault logs in with its own key and
   pins production's host key in its known_hosts: no password anywhere, no secret on any command line);
2. copies the new complete ones its retention keeps (archive and sidecar, the kit's naming only) and the sidecars
   of those it already holds into a fresh private folder in the store, <store>/.incoming, with rclone (one
   `sync/copy`);
3. refuses, naming it, an archive production changed after the vault pulled it: another size or sidecar than the
   vault's copy, or rclone `copy --immutable` of the copies it holds failing (`immutable file modified`: another
   size or time); the vault's copy is never touched;
4. checks each new archive against its sidecar (sha256) and only then links it into the store, sidecar first, with
   link(2), which refuses an existing name: nothing ever overwrites a copy the vault holds;
5. prunes the store by its own retention (system.backup.vault.keep, never shorter than production's: the config
   check refuses it), the newest copy always kept; deleting on production deletes nothing here;
6. runs the restore drill (drill.py) on the newest copy when this run brought one (system.backup.vault.drill);
7. records hello_world_backup_vault_* (success, timestamps, the newest copy's time) like every job.
Any refusal fails the run (exit 1) after the good archives are kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hello.backup import rclone
from hello.backup.drill import DrillFailed, DrillResult, Steps, drill, restore_steps
from hello.backup.naming import (
    NAMING,
    Archive,
    BackupError,
    UsageError,
    check_checksum,
    find_archives,
    remove_leftovers,
    sidecar_path,
)
from hello.backup.retention import config_zone, plan_retention, prune
from hello.backup.vault_serve import vault_dir
from hello.base.files import fsync_dir, private_dir, write_atomically
from hello.base.job_metrics import record_job
from hello.base.locks import job_lock

log = logging.getLogger("vault")

REMOTE = "production"  # the rclone remote's name in the vault's generated config
USER = "vault"  # the SFTP user name (rclone serve sftp accepts any name with an authorized key)
VAULT_JOB = "hello_world_backup_vault"
NEWEST_METRIC = f"{VAULT_JOB}_newest_archive_timestamp_seconds"
PULLED_METRIC = f"{VAULT_JOB}_pulled_archives"
INCOMING = ".incoming"
PULL_LOCK = "vault-pull.lock"  # in run_dir: one pull at a time


@dataclass
class PullResult:
    source: str
    store: Path
    pulled: list[str] = field(default_factory=list)
    pruned: list[Path] = field(default_factory=list)
    newest: Path | None = None
    drilled: DrillResult | None = None
    seconds: float = 0.0


def vault_keep(config: dict[str, Any]) -> dict[str, int]:
    """The vault's retention: system.backup.vault.keep over production's system.backup.keep (checked at load)."""
    return {**config["backup"]["keep"], **(config["backup"]["vault"]["keep"] or {})}


def check_settings(config: dict[str, Any]) -> tuple[str, Path, Path]:
    """(production's host:port, the vault's key, its known_hosts) or UsageError naming the key to set."""
    vault = config["backup"]["vault"]
    if vault["pull_from"] is None:
        raise UsageError("pull: system.backup.vault.pull_from is null: set production's serve-vault host:port")
    files = []
    for key, what in (("identity", "the vault's private SSH key"), ("known_hosts", "production's pinned host key")):
        if vault[key] is None:
            raise UsageError(f"pull: system.backup.vault.{key} is null: name the file of {what}")
        path = Path(vault[key])
        if not path.is_file():
            raise UsageError(f"system.backup.vault.{key}: {path} is not a file ({what})")
        files.append(path)
    return vault["pull_from"], files[0], files[1]


def write_rclone_config(config: dict[str, Any], address: str, identity: Path, known_hosts: Path) -> Path:
    """The vault's rclone config in <run_dir>/vault (0600): an sftp remote by key, production's host key pinned.

    It names the key file and holds no secret; the rcd reads it (no setting on any command line)."""
    host, port = address.rsplit(":", 1)
    path = vault_dir(config) / "rclone.conf"
    text = (
        f"[{REMOTE}]\ntype = sftp\nhost = {host.strip('[]')}\nport = {port}\nuser = {USER}\n"
        f"key_file = {identity}\nknown_hosts_file = {known_hosts}\n"
    )
    write_atomically(path, text.encode(), mode=0o600)
    return path


def pull_under_lock(config: dict[str, Any]) -> PullResult:
    """One pull under <run_dir>/vault-pull.lock, drilled with the restore's own steps; LockHeld: another pull runs."""
    with job_lock(Path(config["run_dir"]) / PULL_LOCK):
        return pull(config, restore_steps(config))


def pull(config: dict[str, Any], steps: Steps | None) -> PullResult:
    """One pull (steps: the drill's, None: no drill); BackupError naming what was refused, after recording it."""
    address, identity, known_hosts = check_settings(config)
    started = time.time()
    store = private_dir(Path(config["backup"]["vault"]["store"]))
    result = PullResult(address, store)
    try:
        refused = _pull(config, result, address, write_rclone_config(config, address, identity, known_hosts), steps)
    except (BackupError, rclone.OffsiteError, DrillFailed, OSError) as exc:
        _record(config, result, started, success=False)
        raise BackupError(f"pull from {address}: {exc}") from None
    result.seconds = time.time() - started
    _record(config, result, started, success=not refused)
    if refused:
        first, *others = refused.items()
        more = f"; and {len(others)} more refused: {', '.join(name for name, _ in others)}" if others else ""
        raise BackupError(f"pull from {address}: {first[0]}: {first[1]}{more}")
    return result


def _pull(config: dict[str, Any], result: PullResult, address: str, rclone_conf: Path, steps: Steps | None):
    store, run_dir = result.store, Path(config["run_dir"])
    remove_leftovers(store)  # what a killed run left: orphan sidecars
    with rclone.connect(f"{REMOTE}:", str(rclone_conf), progress=sys.stderr.isatty(), scratch=run_dir) as remote:
        files = remote.files()
        on_production = [name for name in rclone.archives_on(files, NAMING) if NAMING.sidecar(name) in files]
        held = {archive.path.name: archive for archive in find_archives(store)}
        kept = _kept_by_vault(config, [*held, *on_production])
        new = [name for name in on_production if name not in held and name in kept]
        both = [name for name in on_production if name in held]
        incoming = _fresh_incoming(store)
        try:
            wanted = [*new, *(NAMING.sidecar(name) for name in [*new, *both])]
            if wanted:
                _copy(remote, str(incoming), wanted, immutable=False)
            refused = {name: why for name in both if (why := _changed(name, files, incoming, store))}
            if both and not refused:
                # rclone's own guard over the copies held: nothing to transfer, and a file production changed in
                # size or time fails it (`immutable file modified`) without a byte written here.
                held_names = [each for name in both for each in (name, NAMING.sidecar(name))]
                try:
                    _copy(remote, str(store), held_names, immutable=True)
                except rclone.OffsiteError as exc:
                    held_label = both[0] if len(both) == 1 else f"one of the {len(both)} copies held"
                    refused[held_label] = f"production changed it ({exc}); the vault's copy is kept unchanged"
            for name in new:
                try:
                    check_checksum(incoming / name)
                except BackupError as exc:
                    refused[name] = f"does not match its sidecar, refused ({str(exc).split(': ', 1)[-1]})"
                    continue
                _accept(incoming, store, name)
                result.pulled.append(name)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
    newest = find_archives(store)[-1:] or [None]
    result.newest = newest[0].path if newest[0] else None
    view = {**config, "backup": {**config["backup"], "destination": str(store), "keep": vault_keep(config)}}
    result.pruned = prune(view, dry_run=False, known_good=result.newest)
    if result.pulled and steps is not None and config["backup"]["vault"]["drill"] and result.newest:
        result.drilled = drill(result.newest, run_dir / "drill", steps)
    return refused


def _kept_by_vault(config: dict[str, Any], names: list[str]) -> set[str]:
    """The archive names the vault's retention keeps among these: one it would prune at once is not pulled (nor
    pulled again at every run while production still keeps it)."""
    found = [Archive(Path(name), created) for name in names if (created := NAMING.created(name)) is not None]
    return {path.name for path in plan_retention(found, vault_keep(config), config_zone(config))}


def _fresh_incoming(store: Path) -> Path:
    incoming = store / INCOMING
    if incoming.is_symlink() or incoming.is_file():
        incoming.unlink()
    shutil.rmtree(incoming, ignore_errors=True)  # a killed run's partial downloads (we hold the lock)
    incoming.mkdir(mode=0o700)
    return incoming


def _copy(remote: rclone.Remote, destination: str, names: list[str], *, immutable: bool) -> None:
    """rclone copy of exactly these names (archive names hold no glob characters) from production."""
    params: dict[str, Any] = {"srcFs": remote.spec, "dstFs": destination, "_filter": {"IncludeRule": names}}
    if immutable:
        params["_config"] = {"Immutable": True}
    what = "checking the held copies" if immutable else f"pulling from {remote.spec}"
    remote.daemon.job("sync/copy", what, **params)


def _changed(name: str, files: dict[str, int], incoming: Path, store: Path) -> str | None:
    """Why production's copy of an archive the vault holds is not the one pulled, or None."""
    held = store / name
    if files[name] != held.stat().st_size:
        return (
            f"production's copy changed after the vault pulled it (size {files[name]}, the vault's "
            f"{held.stat().st_size}); the vault's copy is kept"
        )
    theirs = (incoming / NAMING.sidecar(name)).read_bytes()
    if theirs != sidecar_path(held).read_bytes():
        return "production's copy changed after the vault pulled it (its sidecar differs); the vault's copy is kept"
    return None


def _accept(incoming: Path, store: Path, name: str) -> None:
    """Link a checked archive into the store, sidecar first; link(2) fails rather than replace a name."""
    for each in (NAMING.sidecar(name), name):
        os.link(incoming / each, store / each)
        os.chmod(store / each, 0o600)
    fsync_dir(store)
    log.info("pulled %s", name)


def _record(config: dict[str, Any], result: PullResult, started: float, *, success: bool) -> None:
    extra = {PULLED_METRIC: float(len(result.pulled))}
    with contextlib.suppress(OSError, IndexError):
        newest = find_archives(result.store)[-1]
        extra[NEWEST_METRIC] = newest.created.timestamp()
    record_job(config, VAULT_JOB, success=success, started=started, finished=time.time(), extra=extra)
