"""The versions of an archive on an object-locked S3 remote, and the newest good one behind what an attacker added.

    path = fetch_newest_good(remote, "hello-world-20261204T020000Z.tar.gz", folder, naming)
    version, passed = verify_newest_good(remote, "hello-world-20261204T020000Z.tar.gz", naming)

A compromised host cannot delete a locked version, but it can hide one behind a delete marker or put a garbage
version over it. rclone (1.60 too) lists every version with `--s3-versions`, here the connection string
`name,versions:bucket`, a version named with its time before the extension (`x.tar-v2026-12-04-164621-000.gz`);
the newest version of an archive that matches a version of its sidecar is the one restored. Only a direct s3
remote (a crypt remote over it hides the version names).
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from hello.backup.naming import Naming
from hello.backup.rclone import OffsiteError, Remote, local_digests

CANARY = ".hello-world-canary"  # a few bytes written twice per check: its older version is what the check deletes
VERSION_RE = re.compile(r"^(?P<stem>.+)-v(?P<time>\d{4}-\d\d-\d\d-\d{6}-\d{3})(?P<ext>\.[^.]*)?$")


def versions_spec(spec: str) -> str:
    """`name:path` -> `name,versions:path`: the same remote listing every version (rclone's connection string)."""
    name, sep, path = spec.partition(":")
    if not sep or spec.startswith("/"):
        raise OffsiteError(f"{spec}: versions need an s3 remote (name:bucket), not a plain path")
    return f"{name},versions:{path}"


def versions_of(listed: list[str], name: str) -> list[str]:
    """The listed names that are `name` itself or a version of it, newest first (the current one first)."""
    found = []
    for each in listed:
        match = VERSION_RE.match(each)
        if match and match.group("stem") + (match.group("ext") or "") == name:
            found.append((match.group("time"), each))
    return ([name] if name in listed else []) + [each for _, each in sorted(found, reverse=True)]


def every_file(remote: Remote) -> dict[str, int]:
    """name -> size of every file that exists in some version, hidden or not (the current or else newest one's size).

    What `list --offsite` and the drill see on an immutable remote: a delete marker hides nothing from them."""
    listed = Remote(versions_spec(remote.spec), remote.daemon).files()
    folded: dict[str, tuple[str, int]] = {}
    for each, size in listed.items():
        match = VERSION_RE.match(each)
        name, when = (match.group("stem") + (match.group("ext") or ""), match.group("time")) if match else (each, "~")
        if name not in folded or when > folded[name][0]:  # "~" sorts after every time: the current version wins
            folded[name] = (when, size)
    return {name: size for name, (_, size) in folded.items()}


def _candidates(remote: Remote, name: str, naming: Naming) -> tuple[Remote, list[str], dict[str, str]]:
    """The versions remote, an archive's versions newest first, and sha256 -> text of each readable sidecar version."""
    versions = Remote(versions_spec(remote.spec), remote.daemon)
    listed = list(versions.files())
    archives = versions_of(listed, name)
    if not archives:
        raise OffsiteError(f"{remote.path(name)}: no such archive on the remote, in any version")
    digests: dict[str, str] = {}
    for sidecar in versions_of(listed, naming.sidecar(name)):
        try:
            text = versions.read_text(sidecar)
            digests[naming.sidecar_digest(text, name)] = text
        except (OffsiteError, ValueError):
            continue  # a garbage sidecar version: not a witness
    return versions, archives, digests


def _no_good_version(remote: Remote, name: str, archives: list[str], digests: dict[str, str]) -> OffsiteError:
    return OffsiteError(
        f"{remote.path(name)}: none of its {len(archives)} version(s) matches "
        f"any of its {len(digests)} readable sidecar version(s)"
    )


def fetch_newest_good(remote: Remote, name: str, folder: Path, naming: Naming) -> Path:
    """Download the newest version of an archive that matches a version of its sidecar into folder; its path.

    The sidecar that matched is written beside it, so the caller's own checksum check passes on the same bytes."""
    versions, archives, digests = _candidates(remote, name, naming)
    for candidate in archives:
        path = folder / name
        versions.download(candidate, path)
        digest = local_digests(path, {"sha256"})["sha256"]
        if digest in digests:
            path.with_name(naming.sidecar(name)).write_text(digests[digest], encoding="utf-8")
            return path
        path.unlink()
    raise _no_good_version(remote, name, archives, digests)


def verify_newest_good(remote: Remote, name: str, naming: Naming) -> tuple[str, int]:
    """Read the versions of an archive, newest first, until one matches a version of its sidecar: that version's
    name and how many newer versions (garbage an attacker put over it) were passed on the way."""
    versions, archives, digests = _candidates(remote, name, naming)
    for passed, candidate in enumerate(archives):
        if versions.sha256(candidate) in digests:
            return candidate, passed
    raise _no_good_version(remote, name, archives, digests)


def check_canary_locked(remote: Remote, scratch: Path | None) -> None:
    """Prove the remote refuses this host's key a version delete; OffsiteError saying so when it does not.

    The canary is written twice (its first version becomes an old one, named with its time) and that old version
    deleted through the versions listing, which deletes by version id: a bucket with Object Lock refuses it."""
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        local = Path(folder) / "canary"
        for _ in range(2):
            local.write_text(f"hello-world canary {time.time_ns()}\n", encoding="utf-8")
            params = {"srcFs": folder, "srcRemote": "canary", "dstFs": remote.spec, "dstRemote": CANARY}
            remote.daemon.job("operations/copyfile", f"writing {remote.path(CANARY)}", **params)
    versions = Remote(versions_spec(remote.spec), remote.daemon)
    old = versions_of(list(versions.files()), CANARY)[1:]
    if not old:
        raise OffsiteError(f"{remote.spec}: keeps no old versions of {CANARY}: versioning (and Object Lock) is off")
    try:
        versions.delete(old[-1])
    except OffsiteError:
        if old[-1] in versions.files():
            return  # refused, and still there
        raise
    raise OffsiteError(
        f"{remote.spec}: this host's key deleted a version ({old[-1]}): the bucket does not enforce Object Lock"
    )
