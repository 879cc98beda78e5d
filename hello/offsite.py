"""Off-host copies on an rclone remote: upload to a temporary name, check there, rename; list, verify, prune, download.

    remote = Remote("offsite:hello-backups", rclone_config="/etc/hello/rclone.conf")   # or a plain path
    remote.upload(Path("backups/x.tar.gz"), "x.tar.gz", temp=".x.tar.gz.partial")
    remote.files()                 # {"x.tar.gz": 1234, ...}: the files at the remote's top level
    remote.sha256("x.tar.gz")      # every byte downloaded and hashed

rclone does the transport and any encryption (a `crypt` remote): this module only runs it. Written against
rclone 1.60 (Debian 12): the commands copyto, moveto, cat, lsjson, hashsum, deletefile, backend features and
their exit code 3 for "directory not found"; tests/test_offsite.py runs them against `rclone serve sftp`.

Why the temporary name: rclone 1.60 writes in place, so an interrupted upload would leave a partial file under
the final name. upload() writes to `temp`, compares the remote's hash of it with the local file's (a hash both
sides compute, so nothing is downloaded; remotes without hashes, such as crypt, are read back in full), and only
then renames it to its final name. Each rclone runs with PR_SET_PDEATHSIG, so it dies with us on a kill -9 and
never finishes an upload nobody checks.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

log = logging.getLogger("offsite")

RCLONE = "rclone"
CHUNK = 1 << 20
EXIT_DIRECTORY_NOT_FOUND = 3  # rclone's exit code for a missing directory: an empty remote
HASHES = ("sha256", "sha1", "md5")  # those hashlib computes, best first
_PR_SET_PDEATHSIG = 1


class OffsiteError(Exception):
    """rclone failed or a copy did not check; str() names the remote and the file."""


def _die_with_parent() -> None:
    """In the rclone child before exec: get SIGKILL when the parent dies, so no orphan upload runs on."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def local_digests(path: Path, kinds: tuple[str, ...]) -> dict[str, str]:
    """The hex digests of a local file for each hash kind, in one read."""
    digests = {kind: hashlib.new(kind) for kind in kinds}
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            for digest in digests.values():
                digest.update(block)
    return {kind: digest.hexdigest() for kind, digest in digests.items()}


@dataclass(frozen=True)
class Remote:
    """An rclone remote path (`name:folder`, or a plain local path such as a mounted USB disk)."""

    spec: str
    rclone_config: str | None = None
    progress: bool = False  # rclone's own progress line on uploads and downloads
    _features: dict = field(default_factory=dict, compare=False, repr=False)

    def path(self, name: str = "") -> str:
        """The rclone path of a file at the remote's top level."""
        if not name:
            return self.spec
        return self.spec + name if self.spec.endswith((":", "/")) else f"{self.spec}/{name}"

    def _command(self, *args: str) -> list[str]:
        config = ["--config", self.rclone_config] if self.rclone_config else []
        return [RCLONE, *config, *args]

    def _run(self, *args: str, what: str, ok_codes: tuple[int, ...] = (0,), show: bool = False) -> str:
        """rclone's stdout; OffsiteError with rclone's last error line unless its exit code is in ok_codes."""
        command = self._command(*args, *(("--progress",) if show and self.progress else ()))
        log.debug("running %s", " ".join(command))
        try:
            proc = subprocess.run(
                command,
                stdout=subprocess.PIPE,
                stderr=None if show and self.progress else subprocess.PIPE,
                text=True,
                preexec_fn=_die_with_parent,
            )
        except FileNotFoundError:
            raise OffsiteError(f"{what}: rclone is not installed (Debian package rclone)") from None
        if proc.returncode not in ok_codes:
            raise OffsiteError(f"{what}: rclone failed (exit {proc.returncode}): {_last_line(proc.stderr)}")
        return proc.stdout if proc.returncode == 0 else ""

    # --- reading ---

    def files(self) -> dict[str, int]:
        """name -> size of the files at the remote's top level ({} when its folder does not exist yet)."""
        out = self._run(
            "lsjson", "--files-only", "--no-mimetype", self.spec, what=f"listing {self.spec}", ok_codes=(0, 3)
        )
        return {entry["Name"]: int(entry["Size"]) for entry in json.loads(out or "[]")}

    def hash_kinds(self) -> list[str]:
        """The hashes the remote computes itself, among those we compute locally (none for crypt)."""
        if "hashes" not in self._features:
            out = self._run("backend", "features", self.spec, what=f"features of {self.spec}")
            found = {kind.lower() for kind in json.loads(out).get("Hashes") or []}
            self._features["hashes"] = [kind for kind in HASHES if kind in found]
        return self._features["hashes"]

    def remote_hash(self, name: str, kind: str) -> str:
        """The remote's own hash of a file (no download)."""
        out = self._run("hashsum", kind, self.path(name), what=f"{kind} of {self.path(name)}")
        return out.split()[0].lower() if out.split() else ""

    def sha256(self, name: str) -> str:
        """The sha256 of every byte of a remote file, downloaded as a stream (through crypt, the plaintext)."""
        digest = hashlib.sha256()
        command = self._command("cat", self.path(name))
        try:
            proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_die_with_parent
            )
        except FileNotFoundError:
            raise OffsiteError(f"reading {self.path(name)}: rclone is not installed (Debian package rclone)") from None
        assert proc.stdout is not None and proc.stderr is not None
        while block := proc.stdout.read(CHUNK):
            digest.update(block)
        error = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            failed = f"rclone failed (exit {proc.returncode}): {_last_line(error)}"
            raise OffsiteError(f"reading {self.path(name)}: {failed}")
        return digest.hexdigest()

    def read_text(self, name: str) -> str:
        """A small remote file's text (a sidecar)."""
        return self._run("cat", self.path(name), what=f"reading {self.path(name)}")

    # --- writing ---

    def upload(self, local: Path, name: str, *, temp: str) -> None:
        """Copy local to the remote as `name`: to `temp` first, checked there, then renamed.

        On any failure the temporary file is deleted (best effort) and OffsiteError raised; no file ever has
        the final name unless its checksum matched.
        """
        self._run("copyto", str(local), self.path(temp), what=f"uploading {local} to {self.path(temp)}", show=True)
        try:
            self.check_copy(local, temp)
            self.rename(temp, name)
        except OffsiteError:
            self.delete_quietly(temp)
            raise

    def check_copy(self, local: Path, name: str) -> None:
        """Raise OffsiteError unless the remote file has the local file's bytes."""
        kinds = self.hash_kinds()
        kind = kinds[0] if kinds else "sha256"
        expected = local_digests(local, (kind,))[kind]
        actual = self.remote_hash(name, kind) if kinds else self.sha256(name)
        if actual != expected:
            raise OffsiteError(
                f"{self.path(name)}: {kind} after upload is {actual[:12]}..., expected {expected[:12]}... (not kept)"
            )

    def rename(self, old: str, new: str) -> None:
        self._run("moveto", self.path(old), self.path(new), what=f"renaming {self.path(old)} to {new}")

    def download(self, name: str, local: Path) -> None:
        """Copy a remote file to local (the caller picks a private temporary path)."""
        self._run("copyto", self.path(name), str(local), what=f"downloading {self.path(name)}", show=True)

    def delete(self, name: str) -> None:
        self._run("deletefile", self.path(name), what=f"deleting {self.path(name)}")

    def delete_many(self, names: list[str]) -> None:
        """Delete files at the top level in one rclone run (one connection, deletes in parallel)."""
        if not names:
            return
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".list") as listing:
            listing.write("".join(f"{name}\n" for name in names))
            listing.flush()
            what = f"deleting {len(names)} file(s) on {self.spec}"
            self._run("delete", "--files-from-raw", listing.name, self.spec, what=what)

    def delete_quietly(self, name: str) -> None:
        try:
            self.delete(name)
        except OffsiteError as exc:
            log.warning("%s", exc)


# --- the archives on a remote ---


@dataclass(frozen=True)
class Naming:
    """The archive naming, handed in by backup_script.py (where those facts are defined)."""

    created: Callable[[str], datetime | None]  # an archive's time from its name; None: not an archive name
    sidecar: Callable[[str], str]  # archive name -> its checksum file's name
    temp: Callable[[str], str]  # final name -> the dot-named name it has while unchecked
    is_temp: Callable[[str], bool]
    sidecar_digest: Callable[[str, str], str]  # (sidecar text, archive name) -> sha256; ValueError if malformed


Keep = Callable[[dict[str, datetime]], set[str]]  # archives (name -> time) -> the names retention keeps


def archives_on(files: dict[str, int], naming: Naming) -> dict[str, datetime]:
    """name -> time of the archive names among a remote's files, oldest first."""
    found = {name: naming.created(name) for name in files}
    return dict(sorted(((n, t) for n, t in found.items() if t is not None), key=lambda item: item[1]))


def remove_leftovers(remote: Remote, files: dict[str, int], naming: Naming) -> None:
    """Delete the unchecked temporary files of an interrupted upload (never a final name)."""
    for name in files:
        if naming.is_temp(name):
            log.warning("removing %s, left by an interrupted upload", remote.path(name))
            remote.delete(name)


def sync(
    remote: Remote, local: list[Path], naming: Naming, keep: Keep, check_local: Callable[[Path], object]
) -> list[str]:
    """Upload each local archive (with its sidecar) that the remote lacks and retention keeps; return their names.

    Each is checked against its sidecar first (check_local raises on a bad one). The sidecar goes first, the
    archive last: a final-named archive on the remote always has its sidecar.
    """
    files = remote.files()
    remove_leftovers(remote, files, naming)
    local_by_name = {path.name: path for path in local}
    wanted = keep({**archives_on(files, naming), **{name: naming.created(name) for name in local_by_name}})
    uploaded = []
    for name, path in local_by_name.items():
        sidecar = naming.sidecar(name)
        if name not in wanted or (name in files and sidecar in files):
            continue
        check_local(path)
        log.info("copying %s to %s", name, remote.spec)
        remote.upload(path.with_name(sidecar), sidecar, temp=naming.temp(sidecar))
        remote.upload(path, name, temp=naming.temp(name))
        uploaded.append(name)
    return uploaded


def verify(remote: Remote, name: str, naming: Naming) -> str:
    """Download every byte of a remote archive and compare with its remote sidecar; return the sha256.

    Raises OffsiteError naming the file on a mismatch or a missing sidecar."""
    sidecar = naming.sidecar(name)
    try:
        expected = naming.sidecar_digest(remote.read_text(sidecar), name)
    except OffsiteError as exc:
        raise OffsiteError(f"{remote.path(name)}: its checksum file {sidecar} cannot be read ({exc})") from None
    except ValueError as exc:
        raise OffsiteError(f"{remote.path(sidecar)}: {exc}") from None
    actual = remote.sha256(name)
    if actual != expected:
        raise OffsiteError(
            f"{remote.path(name)}: checksum mismatch (sidecar {expected[:12]}..., remote file {actual[:12]}...)"
        )
    return actual


def prune(remote: Remote, naming: Naming, keep: Keep, *, dry_run: bool) -> list[str]:
    """Delete the remote archives retention does not keep, never the newest with its sidecar; return them.

    Only names matching the archive naming are touched (and the sidecars of those deleted)."""
    files = remote.files()
    archives = archives_on(files, naming)
    kept = keep(archives)
    complete = [name for name in archives if naming.sidecar(name) in files]
    if complete:
        kept.add(complete[-1])  # the newest good copy: every final name was checked when it was uploaded
    doomed = [name for name in archives if name not in kept]
    if dry_run:
        for name in doomed:
            print(f"would delete {remote.path(name)}")
        return doomed
    remote.delete_many(doomed)  # the archives first, their sidecars after, as locally
    remote.delete_many([naming.sidecar(name) for name in doomed if naming.sidecar(name) in files])
    for name in doomed:
        log.info("pruned %s", remote.path(name))
    return doomed


def fetch(remote: Remote, name: str, folder: Path, naming: Naming) -> Path:
    """Download an archive and its sidecar into folder (the caller's private temporary folder); the local path.

    The caller checks the download with its sidecar before use."""
    files = remote.files()
    if name not in files:
        raise OffsiteError(f"{remote.path(name)}: no such archive on the remote")
    sidecar = naming.sidecar(name)
    remote.download(sidecar, folder / sidecar)
    remote.download(name, folder / name)
    return folder / name


@functools.cache
def rclone_version() -> str:
    """`rclone version`'s first line, for reports."""
    try:
        out = subprocess.run([RCLONE, "version"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return "rclone not installed"
    return out.splitlines()[0] if out else "rclone (unknown version)"


def _last_line(stderr: str | None) -> str:
    lines = [line for line in (stderr or "").strip().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "no error message"
