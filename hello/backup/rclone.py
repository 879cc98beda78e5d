"""Off-host copies on an rclone remote: upload to a temporary name, check there, rename; list, verify, prune, fetch.

    with connect("offsite:hello-backups", rclone_config="/etc/hello/rclone.conf") as remote:   # or a plain path
        remote.upload(Path("backups/x.tar.gz"), "x.tar.gz", temp=".x.tar.gz.partial")
        remote.files()                 # {"x.tar.gz": 1234, ...}: the files at the remote's top level
        remote.sha256("x.tar.gz")      # every byte downloaded and hashed

rclone does the transport and any encryption (a `crypt` remote): this module only drives it. One `rclone rcd` runs
for the life of a `connect` block, listening on 127.0.0.1 with a random user and password, and every operation is
a call of its remote-control API, so the SFTP (or S3, ...) connection is made once and reused: an rclone process
per step costs about 0.2 s here, more than a whole upload of a small archive. Written against rclone 1.60
(Debian 12): rcd, operations/list, stat (showHash), fsinfo, copyfile, movefile, deletefile, job/status,
core/stats; tests/test_offsite.py runs them against `rclone serve sftp`.

The rcd is root's door to every file and every remote, so (issue 20): its user and password reach it through its
environment (RCLONE_RC_USER/RCLONE_RC_PASS, readable only by us), never its command line, which any local user
reads in /proc; every request needs them; it serves no files over HTTP (--rc-serve off: a remote file is read by
downloading it into a private folder); and it binds the port itself (see Daemon), so no other process can be
listening there first and receive the password.

Why the temporary name: rclone 1.60 writes in place, so an interrupted upload would leave a partial file under the
final name. upload() writes to `temp`, compares the remote's own hash of it with the local file's (a hash both
sides compute, so nothing is downloaded; a remote without hashes, such as crypt, is read back in full), and only
then renames it to its final name. The daemon dies with us (PR_SET_PDEATHSIG) on a kill -9, so no upload goes on
that nobody checks. On a plain-path remote (a mounted disk) copies are 0600 in 0700 folders (keep_private).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hello.backup.naming import Naming
from hello.backup.retention import Keep
from hello.base.locks import pid_alive
from hello.base.proc import die_with_parent

log = logging.getLogger("offsite")

RCLONE = "rclone"
CHUNK = 1 << 20
HASHES = ("sha256", "sha1", "md5")  # those hashlib computes, best first
START_TIMEOUT = 30.0  # seconds for rclone rcd to say where it listens
CALL_TIMEOUT = 300.0  # seconds for one quick call (a listing, a stat with a server-side hash, a rename)
READ_PREFIX = "offsite-read-"  # + our PID: the private folder a remote file is read through
POLL = 0.2  # seconds between job/status polls of a transfer shown with progress
LISTENING_RE = re.compile(r"Serving remote control on http://127\.0\.0\.1:(\d+)/")  # rclone 1.60's NOTICE
# Every API call this module makes (tests/test_offsite.py checks the installed rclone offers them all).
RC_COMMANDS = (
    "core/version",
    "core/stats",
    "job/status",
    "operations/list",
    "operations/fsinfo",
    "operations/stat",
    "operations/copyfile",
    "operations/movefile",
    "operations/deletefile",
)


class OffsiteError(Exception):
    """rclone failed or a copy did not check; str() names the remote and the file."""


def local_digests(path: Path, kinds: set[str]) -> dict[str, str]:
    """The hex digests of a local file for each hash kind, in one read."""
    digests = {kind: hashlib.new(kind) for kind in kinds}
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            for digest in digests.values():
                digest.update(block)
    return {kind: digest.hexdigest() for kind, digest in digests.items()}


class Daemon:
    """A private `rclone rcd` on 127.0.0.1 and calls of its API.

    The port: rclone binds 127.0.0.1:0 itself and we read the port from its own log (our child's stderr, a file
    only we hold). Picking a free port here and handing it over would leave a gap between our release and rclone's
    bind, in which another local process could bind it, receive our password with the first call and fake every
    answer. Bound by rclone, the port is its own for as long as it lives (no other user can bind 127.0.0.1:port or
    0.0.0.0:port then); once it has exited, no call is made (each checks first), and its password opens nothing.
    """

    def __init__(self, rclone_config: str | None, progress: bool, scratch: Path | None = None) -> None:
        self.progress = progress
        self.scratch = scratch
        self.url = ""
        user, password = "hello", secrets.token_hex(16)
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        # Every RCLONE_RC_* the caller's environment may hold is dropped (one could turn auth off or serve files),
        # and the flags that matter are given explicitly: flags beat the environment.
        env = {key: value for key, value in os.environ.items() if not key.startswith("RCLONE_RC_")}
        env |= {"RCLONE_RC_USER": user, "RCLONE_RC_PASS": password}
        config = ["--config", rclone_config] if rclone_config else []
        command = [RCLONE, "rcd", *config, "--rc-addr", "127.0.0.1:0", "--rc-serve=false", "--rc-no-auth=false"]
        command += ["--log-level", "NOTICE"]  # NOTICE: the line naming the port it bound
        # Remote.upload checks every copy itself (remote hash of the temporary file against ours) before the
        # rename: rclone's own check after each transfer would hash the file on the remote a second time.
        command.append("--ignore-checksum")
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.ready = False
        self.proc: subprocess.Popen | None = None
        # Starting never fails (a missing rclone is the first call's error): a backup starts rclone before its
        # archive, and the archive must not depend on it.
        die = die_with_parent()

        def private_and_dying_with_us() -> None:
            # umask 077: what rclone writes on a plain-path remote (a mounted disk others may read) and in our
            # download folders is 0600 in 0700 folders, as the local archives are.
            os.umask(0o077)
            die()

        with contextlib.suppress(FileNotFoundError):
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=self.log,
                env=env,
                preexec_fn=private_and_dying_with_us,  # noqa: PLW1509 - only umask and prctl run before exec
            )

    def _wait_ready(self) -> None:
        if self.proc is None:
            raise OffsiteError("rclone is not installed (Debian package rclone)")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.log.seek(0)
            found = LISTENING_RE.search(self.log.read().decode(errors="replace"))
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                self.ready = True
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise OffsiteError(f"rclone rcd did not start: {self.errors()}")
            time.sleep(0.02)

    def errors(self) -> str:
        self.log.seek(0)
        return _last_line(self.log.read().decode(errors="replace"))

    def _request(self, path: str, body: bytes | None = None) -> urllib.request.Request:
        headers = {"Authorization": self.auth, "Content-Type": "application/json"}
        return urllib.request.Request(f"{self.url}/{path}", data=body, headers=headers)

    def call(self, command: str, timeout: float | None = CALL_TIMEOUT, **params: Any) -> dict[str, Any]:
        """POST one API call (the first waits until rclone answers); OffsiteError with rclone's message on failure."""
        if not self.ready:
            self._wait_ready()
        if self.proc is None or self.proc.poll() is not None:  # its port may be someone else's by now
            raise OffsiteError(f"rclone rcd exited: {self.errors()}")
        return self._post(command, timeout, params)

    def _post(self, command: str, timeout: float | None, params: dict[str, Any]) -> dict[str, Any]:
        request = self._request(command, json.dumps(params).encode())
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error") or exc.reason
            except ValueError:
                message = exc.reason
            raise OffsiteError(str(message)) from None
        except (OSError, ValueError) as exc:
            raise OffsiteError(f"rclone rcd did not answer {command}: {exc}") from None

    def job(self, command: str, what: str, **params: Any) -> dict[str, Any]:
        """Run a long call (a transfer) and wait for it; on a terminal as an rclone job, showing progress.

        Without progress the call simply blocks until rclone is done (rclone's own --timeout bounds a stalled
        connection), so a transfer costs no polling delay."""
        if not self.progress:
            try:
                return self.call(command, timeout=None, **params)
            except OffsiteError as exc:
                raise OffsiteError(f"{what}: {exc}") from None
        jobid = self.call(command, _async=True, **params)["jobid"]
        shown = False
        while True:
            status = self.call("job/status", jobid=jobid)
            if status.get("finished"):
                break
            if self.progress:
                stats = self.call("core/stats", group=f"job/{jobid}")
                done, total = stats.get("bytes", 0), sum(t.get("size", 0) for t in stats.get("transferring") or [])
                sys.stderr.write(f"\r  {what}: {done / 1e6:.1f} of {total / 1e6:.1f} MB ")
                shown = True
            time.sleep(POLL)
        if shown:
            sys.stderr.write("\r" + " " * 70 + "\r")
        if not status.get("success"):
            raise OffsiteError(f"{what}: {status.get('error') or 'failed'}")
        return status.get("output") or {}

    @contextlib.contextmanager
    def downloaded(self, fs: str, remote: str) -> Iterator[Path]:
        """A remote file copied into a private folder (0700, under scratch), removed when the block ends.

        The rcd serves no files itself (--rc-serve off): reading a remote file means this copy."""
        if self.scratch is not None:
            self.scratch.mkdir(parents=True, exist_ok=True)
            _sweep_reads(self.scratch)
        folder = Path(tempfile.mkdtemp(prefix=f"{READ_PREFIX}{os.getpid()}-", dir=self.scratch))
        try:
            params = {"srcFs": fs, "srcRemote": remote, "dstFs": str(folder), "dstRemote": "file"}
            self.job("operations/copyfile", "downloading", **params)
            yield folder / "file"
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Stop the daemon; every call has returned by now, so nothing is cut short (core/quit takes 1.5 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _sweep_reads(scratch: Path) -> None:
    """Remove the read folders of processes that died (a kill -9 in a download); a live one's is in use."""
    for leftover in scratch.glob(READ_PREFIX + "*"):
        owner = leftover.name[len(READ_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)) and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


@dataclass(frozen=True)
class Remote:
    """An rclone remote path (`name:folder`, or a plain local path such as a mounted USB disk), through a Daemon."""

    spec: str
    daemon: Daemon

    def path(self, name: str = "") -> str:
        """The rclone path of a file at the remote's top level, for messages."""
        if not name:
            return self.spec
        return self.spec + name if self.spec.endswith((":", "/")) else f"{self.spec}/{name}"

    def _call(self, command: str, what: str, **params: Any) -> dict[str, Any]:
        try:
            return self.daemon.call(command, **params)
        except OffsiteError as exc:
            raise OffsiteError(f"{what}: {exc}") from None

    # --- reading ---

    def files(self) -> dict[str, int]:
        """name -> size of the files at the remote's top level ({} when its folder does not exist yet)."""
        opt = {"filesOnly": True, "noMimeType": True, "noModTime": True}
        try:
            listing = self.daemon.call("operations/list", fs=self.spec, remote="", opt=opt)
        except OffsiteError as exc:
            if "directory not found" in str(exc):
                return {}
            raise OffsiteError(f"listing {self.spec}: {exc}") from None
        return {entry["Name"]: int(entry["Size"]) for entry in listing.get("list") or []}

    @functools.cached_property
    def hash_kinds(self) -> list[str]:
        """The hashes the remote computes itself, among those we compute locally (none for crypt)."""
        info = self._call("operations/fsinfo", f"features of {self.spec}", fs=self.spec)
        found = {kind.lower() for kind in info.get("Hashes") or []}
        return [kind for kind in HASHES if kind in found]

    def remote_hash(self, name: str, kind: str) -> str:
        """The remote's own hash of a file (computed there: nothing is downloaded)."""
        opt = {"showHash": True, "hashTypes": [kind]}
        item = self._call("operations/stat", f"{kind} of {self.path(name)}", fs=self.spec, remote=name, opt=opt)
        return ((item.get("item") or {}).get("Hashes") or {}).get(kind, "").lower()

    def sha256(self, name: str) -> str:
        """The sha256 of every byte of a remote file, downloaded (through crypt: the plaintext)."""
        try:
            with self.daemon.downloaded(self.spec, name) as copy:
                return local_digests(copy, {"sha256"})["sha256"]
        except (OffsiteError, OSError) as exc:
            raise OffsiteError(f"reading {self.path(name)}: {exc}") from None

    def read_text(self, name: str) -> str:
        """A small remote file's text (a sidecar)."""
        try:
            with self.daemon.downloaded(self.spec, name) as copy, open(copy, "rb") as handle:
                return handle.read(1 << 16).decode("utf-8", errors="replace")
        except (OffsiteError, OSError) as exc:
            raise OffsiteError(f"reading {self.path(name)}: {exc}") from None

    # --- writing ---

    def upload(self, local: Path, name: str, *, temp: str, sha256: str | None = None) -> None:
        """Copy local to the remote as `name`: to `temp` first, checked there, then renamed.

        The local file is hashed while it uploads (a second core): with sha256 given, a local file that no longer
        has that sha256 fails the upload too. On any failure the temporary file is deleted (best effort) and
        OffsiteError raised; no file ever has the final name unless its checksum matched.
        """
        kind = self.hash_kinds[0] if self.hash_kinds else "sha256"
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            local_hashes = pool.submit(local_digests, local, {kind} | ({"sha256"} if sha256 else set()))
            what = f"uploading {local} to {self.path(temp)}"
            params = {"srcFs": str(local.parent), "srcRemote": local.name, "dstFs": self.spec, "dstRemote": temp}
            self.daemon.job("operations/copyfile", what, **params)
            digests = local_hashes.result()
        try:
            if sha256 is not None and digests["sha256"] != sha256:
                raise OffsiteError(f"{local}: does not match its checksum file (sha256 {digests['sha256'][:12]}...)")
            self.check_copy(temp, kind, digests[kind])
            self.rename(temp, name)
        except OffsiteError:
            self.delete_quietly(temp)
            raise

    def check_copy(self, name: str, kind: str, expected: str) -> None:
        """Raise OffsiteError unless the remote file's hash of this kind is expected."""
        actual = self.remote_hash(name, kind) if kind in self.hash_kinds else self.sha256(name)
        if actual != expected:
            raise OffsiteError(
                f"{self.path(name)}: {kind} after upload is {actual[:12]}..., expected {expected[:12]}... (not kept)"
            )

    def rename(self, old: str, new: str) -> None:
        params = {"srcFs": self.spec, "srcRemote": old, "dstFs": self.spec, "dstRemote": new}
        self.daemon.job("operations/movefile", f"renaming {self.path(old)} to {new}", **params)

    def download(self, name: str, local: Path) -> None:
        """Copy a remote file to local (the caller picks a private temporary path)."""
        params = {"srcFs": self.spec, "srcRemote": name, "dstFs": str(local.parent), "dstRemote": local.name}
        self.daemon.job("operations/copyfile", f"downloading {self.path(name)}", **params)

    def delete(self, name: str) -> None:
        self._call("operations/deletefile", f"deleting {self.path(name)}", fs=self.spec, remote=name)

    def delete_quietly(self, name: str) -> None:
        try:
            self.delete(name)
        except OffsiteError as exc:
            log.warning("%s", exc)


@contextlib.contextmanager
def connect(
    spec: str, rclone_config: str | None = None, *, progress: bool = False, scratch: Path | None = None
) -> Iterator[Remote]:
    """The remote at spec, through a private rclone rcd stopped when the block ends.

    rclone starts in the background: entering never fails, and the first call waits for it (or raises). scratch:
    where remote files are read (a private folder is made in it per read; default the system's temporary folder)."""
    daemon = Daemon(rclone_config, progress, scratch)
    try:
        yield Remote(spec, daemon)
    finally:
        daemon.close()


# --- the archives on a remote ---


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


def keep_private(remote: Remote, names: list[str]) -> None:
    """On a plain-path remote (a mounted disk): its folder 0700 and these files 0600, if they are ours.

    New copies are written so already (rclone runs with umask 077); this tightens the copies and the folder an
    older version left 0644 in 0755. Nothing is followed: a symlink, or what is not our own, is left alone."""
    if not remote.spec.startswith("/"):
        return
    try:
        folder = os.open(remote.spec, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        _chmod_if_ours(folder, 0o700)
        for name in names:
            try:
                handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
            except OSError:
                continue
            try:
                if stat.S_ISREG(os.fstat(handle).st_mode):
                    _chmod_if_ours(handle, 0o600)
            finally:
                os.close(handle)
    finally:
        os.close(folder)


def _chmod_if_ours(handle: int, mode: int) -> None:
    info = os.fstat(handle)
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != mode:
        try:
            os.fchmod(handle, mode)
        except OSError as exc:
            log.warning("cannot make a copy private (mode %o): %s", mode, exc)


def sync(remote: Remote, local: list[Path], naming: Naming, keep: Keep, fresh: Path | None = None) -> list[str]:
    """Upload each local archive (with its sidecar) that the remote lacks and retention keeps; return their names.

    Each is checked against its local sidecar on the way, except `fresh`, the archive this run just wrote (its
    sidecar holds the sha256 of the very bytes written: reading it again would only slow the upload). The sidecar
    goes first, the archive last: a final-named archive on the remote always has its sidecar.
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
        try:
            expected = naming.sidecar_digest(path.with_name(sidecar).read_text(encoding="utf-8"), name)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise OffsiteError(f"{path}: its checksum file cannot be used ({exc}); not copied") from None
        log.info("copying %s to %s", name, remote.spec)
        remote.upload(path.with_name(sidecar), sidecar, temp=naming.temp(sidecar))
        remote.upload(path, name, temp=naming.temp(name), sha256=None if path == fresh else expected)
        uploaded.append(name)
    copies = archives_on({**files, **dict.fromkeys(uploaded, 0)}, naming)
    keep_private(remote, [each for name in copies for each in (name, naming.sidecar(name))])
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


def prune(
    remote: Remote, naming: Naming, keep: Keep, *, dry_run: bool, files: dict[str, int] | None = None
) -> list[str]:
    """Delete the remote archives retention does not keep, never the newest with its sidecar; return them.

    Only names matching the archive naming are touched (and the sidecars of those deleted). files: a listing
    made just before, to save one."""
    files = remote.files() if files is None else files
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
    for name in doomed:
        remote.delete(name)  # the archive first, its sidecar after, as locally
        if naming.sidecar(name) in files:
            remote.delete(naming.sidecar(name))
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


def _last_line(stderr: str | None) -> str:
    lines = [line for line in (stderr or "").strip().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "no error message"
