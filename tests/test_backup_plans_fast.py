"""Retention plans (hello/backup/retention.py) and manifests (hello/backup/manifest.py), in-process.

plan_retention by example and by property (the rules of restic's --keep-*: the newest `last`, the newest of each
of the last N days, ISO weeks and months, in the configured zone), prune on a folder of stand-in archives, and the
manifest: written by ManifestWriter, read back and checked by read_manifest, compared with trees by compare_tree.
tests/test_backup.py runs prune through backup_script.py on real archives.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hello.backup import manifest as manifest_module
from hello.backup.manifest import (
    MANIFEST_DIR,
    MANIFEST_NAME,
    ManifestError,
    ManifestWriter,
    compare_tree,
    entry,
    entry_problem,
    read_manifest,
)
from hello.backup.naming import Archive, archive_name, find_archives, sidecar_path
from hello.backup.retention import keep_plan, plan_retention, prune

pytestmark = pytest.mark.fast  # the in-process tier (make test-fast)

NEW_YORK = ZoneInfo("America/New_York")
KEEP_NONE = {"last": 0, "daily": 0, "weekly": 0, "monthly": 0}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def archive(when: datetime) -> Archive:
    return Archive(Path(archive_name(when)), when)


# --- plan_retention by example -----------------------------------------------------------------------


def test_last_keeps_the_newest_whatever_their_bucket() -> None:
    same_day = [archive(at(f"2025-03-10T{hour:02d}:00:00")) for hour in range(6)]
    plan = plan_retention(same_day, {**KEEP_NONE, "last": 2}, UTC)
    assert plan == {same_day[5].path: ["last"], same_day[4].path: ["last"]}


def test_daily_keeps_the_newest_of_each_of_the_last_n_days_with_archives() -> None:
    found = [archive(at("2025-03-10T01:00:00")), archive(at("2025-03-10T23:00:00")), archive(at("2025-03-07T12:00:00"))]
    found.append(archive(at("2025-03-01T00:00:00")))
    plan = plan_retention(found, {**KEEP_NONE, "daily": 2}, UTC)
    assert plan == {found[1].path: ["daily"], found[2].path: ["daily"]}, "days without archives are no bucket"


def test_weekly_buckets_are_iso_weeks() -> None:
    sunday, monday = archive(at("2025-03-09T12:00:00")), archive(at("2025-03-10T12:00:00"))  # weeks 10 and 11
    saturday = archive(at("2025-03-08T12:00:00"))  # week 10, older than Sunday
    plan = plan_retention([saturday, sunday, monday], {**KEEP_NONE, "weekly": 5}, UTC)
    assert plan == {monday.path: ["weekly"], sunday.path: ["weekly"]}


def test_monthly_buckets_tell_years_apart() -> None:
    march_2024, march_2025 = archive(at("2024-03-15T00:00:00")), archive(at("2025-03-15T00:00:00"))
    plan = plan_retention([march_2024, march_2025], {**KEEP_NONE, "monthly": 2}, UTC)
    assert set(plan) == {march_2024.path, march_2025.path}


def test_the_buckets_are_taken_in_the_configured_zone() -> None:
    # 03:00 UTC on March 10 is still March 9 in New York: one day there, two in UTC.
    late, early = archive(at("2025-03-10T03:00:00")), archive(at("2025-03-09T20:00:00"))
    assert set(plan_retention([late, early], {**KEEP_NONE, "daily": 5}, UTC)) == {late.path, early.path}
    assert set(plan_retention([late, early], {**KEEP_NONE, "daily": 5}, NEW_YORK)) == {late.path}


def test_one_archive_can_be_kept_by_several_rules_and_says_so() -> None:
    only = archive(at("2025-03-10T03:00:00"))
    plan = plan_retention([only], {"last": 1, "daily": 1, "weekly": 1, "monthly": 1}, UTC)
    assert plan == {only.path: ["last", "daily", "weekly", "monthly"]}


def test_nothing_found_keeps_nothing_and_no_rules_keep_nothing() -> None:
    assert plan_retention([], {"last": 3, "daily": 7, "weekly": 4, "monthly": 6}, UTC) == {}
    assert plan_retention([archive(at("2025-01-01T00:00:00"))], KEEP_NONE, UTC) == {}


def test_keep_plan_works_on_names() -> None:
    config = {"backup": {"keep": {"last": 1, "daily": 2, "weekly": 0, "monthly": 0}, "timezone": "UTC"}}
    names = {archive_name(at(f"2025-03-{day:02d}T02:00:00")): at(f"2025-03-{day:02d}T02:00:00") for day in range(1, 9)}
    kept = keep_plan(config)(names)
    assert kept == {archive_name(at("2025-03-08T02:00:00")), archive_name(at("2025-03-07T02:00:00"))}


# --- plan_retention by property ----------------------------------------------------------------------

BUCKETS = {
    "daily": lambda t: t.date(),
    "weekly": lambda t: t.isocalendar()[:2],
    "monthly": lambda t: (t.year, t.month),
}


@settings(max_examples=300, deadline=2000, database=None)
@given(
    hours=st.lists(st.integers(0, 800 * 24), max_size=40, unique=True),
    keep=st.fixed_dictionaries({rule: st.integers(0, 6) for rule in ("last", "daily", "weekly", "monthly")}),
    zone=st.sampled_from([UTC, NEW_YORK, ZoneInfo("Asia/Kolkata")]),
)
def test_the_plan_keeps_the_newest_of_each_bucket_and_nothing_else(
    hours: list[int], keep: dict[str, int], zone: Any
) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    found = [archive(start + timedelta(hours=hour)) for hour in hours]
    plan = plan_retention(found, keep, zone)
    newest_first = sorted(found, key=lambda a: a.created, reverse=True)
    assert {a.path for a in newest_first[: keep["last"]]} == {p for p, why in plan.items() if "last" in why}
    for rule, bucket_of in BUCKETS.items():
        local = {a.path: bucket_of(a.created.astimezone(zone)) for a in found}
        newest_buckets = list(dict.fromkeys(local[a.path] for a in newest_first))[: keep[rule]]
        expected = {
            next(a.path for a in newest_first if local[a.path] == bucket) for bucket in newest_buckets
        }  # the newest archive of each of the newest N buckets
        assert {p for p, why in plan.items() if rule in why} == expected, rule
    assert all(why for why in plan.values())


# --- prune -------------------------------------------------------------------------------------------


def destination_with(tmp_path: Path, stamps: list[datetime]) -> Path:
    folder = tmp_path / "backups"
    folder.mkdir()
    for when in stamps:
        path = folder / archive_name(when)
        path.write_bytes(b"not really an archive\n")
        sidecar_path(path).write_text(f"{'0' * 64}  {path.name}\n")
    (folder / "notes.txt").write_text("not an archive of ours\n")
    return folder


def prune_config(folder: Path, keep: dict[str, int]) -> dict[str, Any]:
    return {"backup": {"destination": str(folder), "keep": keep, "timezone": "UTC"}}


def test_prune_deletes_what_the_plan_does_not_keep_with_its_sidecar(tmp_path: Path) -> None:
    stamps = [at("2025-03-31T02:00:00") - timedelta(days=day) for day in range(10)]
    folder = destination_with(tmp_path, stamps)
    config = prune_config(folder, {**KEEP_NONE, "daily": 3})
    newest = folder / archive_name(stamps[0])
    assert len(prune(config, dry_run=True, known_good=newest)) == 7
    assert len(find_archives(folder)) == 10, "a dry run deletes nothing"
    doomed = prune(config, dry_run=False, known_good=newest)
    assert sorted(p.name for p in doomed) == sorted(archive_name(when) for when in stamps[3:])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*(archive_name(w) for w in stamps[:3]), *(archive_name(w) + ".sha256" for w in stamps[:3]), "notes.txt"]
    )


def test_prune_keeps_the_newest_good_archive_whatever_the_rules(tmp_path: Path) -> None:
    stamps = [at("2025-03-31T02:00:00") - timedelta(days=day) for day in range(3)]
    folder = destination_with(tmp_path, stamps)
    good = folder / archive_name(stamps[1])  # the newest does not verify (it is no gzip at all)
    doomed = prune(prune_config(folder, KEEP_NONE), dry_run=False, known_good=good)
    assert {p.name for p in doomed} == {archive_name(stamps[0]), archive_name(stamps[2])}
    assert [a.path for a in find_archives(folder)] == [good]


# --- the manifest ------------------------------------------------------------------------------------


def tree(root: Path) -> list[tarfile.TarInfo]:
    """A small tree of every kind the manifest knows, and its members as tar would archive them."""
    (root / "d").mkdir(parents=True)
    os.chmod(root / "d", 0o750)
    (root / "d" / "a.txt").write_text("a\n")
    os.chmod(root / "d" / "a.txt", 0o640)
    (root / "b.bin").write_bytes(bytes(range(256)))
    os.chmod(root / "b.bin", 0o644)
    (root / "link").symlink_to("d/a.txt")
    os.link(root / "b.bin", root / "hard")
    os.mkfifo(root / "pipe")
    members = []
    with tarfile.open(os.devnull, "w") as tar:
        for name in ("d", "d/a.txt", "b.bin", "link", "hard", "pipe"):
            member = tar.gettarinfo(root / name, arcname=name)
            member.mode = stat.S_IMODE(member.mode)  # as hello/backup/archive_writer.py makes its members
            members.append(member)
    return members


def manifest_of(members: list[tarfile.TarInfo], root: Path) -> dict[str, Any]:
    writer = ManifestWriter()
    for member in members:
        digest = hashlib.sha256((root / member.name).read_bytes()).hexdigest() if member.isreg() else None
        writer.add(member, digest)
    info, data = writer.finish({"commit": "c0ffee", "hooks": []})
    with data:
        text = data.read()
    assert info.name == MANIFEST_NAME and info.size == len(text) and info.mode == 0o600
    return json.loads(text)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_a_written_manifest_reads_back_and_matches_its_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    members = tree(root)
    manifest = manifest_of(members, root)
    assert manifest["format"] == 1 and manifest["entry_count"] == len(members) and manifest["commit"] == "c0ffee"
    kinds = {record["name"]: record["type"] for record in manifest["entries"]}
    assert kinds == {"d": "dir", "d/a.txt": "file", "b.bin": "file", "link": "symlink", "hard": "hardlink",
                     "pipe": "fifo"}  # fmt: skip
    kept = tmp_path / "kept"
    write_manifest(kept, manifest)
    assert read_manifest(kept) == manifest
    assert compare_tree(root, read_manifest(kept)) == []
    os.chmod(root / "b.bin", 0o600)  # and its hard link: one inode
    assert compare_tree(root, manifest) == ["b.bin: mode 0600, expected 0644", "hard: mode 0600, expected 0644"]


def test_an_empty_manifest_is_valid_json() -> None:
    writer = ManifestWriter()
    _, data = writer.finish({})
    with data:
        assert json.loads(data.read()) == {"format": 1, "entry_count": 0, "entries": []}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda root: (root / "d" / "a.txt").write_text("b\n"), "d/a.txt: content differs (sha256)"),
        (lambda root: (root / "d" / "a.txt").write_text("longer\n"), "d/a.txt: size 7, expected 2"),
        (lambda root: os.chmod(root / "d" / "a.txt", 0o600), "d/a.txt: mode 0600, expected 0640"),
        (lambda root: (root / "link").unlink(), "link: missing"),
        (lambda root: ((root / "link").unlink(), (root / "link").symlink_to("b.bin")), "links to 'b.bin'"),
        (lambda root: (root / "extra").write_text("x"), "extra: not in the manifest"),
        (lambda root: ((root / "pipe").unlink(), (root / "pipe").write_text("")), "pipe: not a FIFO"),
        (lambda root: ((root / "hard").unlink(), (root / "hard").mkdir(mode=0o644)), "hard: not a regular file"),
    ],
)
def test_compare_tree_names_each_difference(tmp_path: Path, change, problem: str) -> None:
    root = tmp_path / "root"
    manifest = manifest_of(tree(root), root)
    change(root)
    problems = compare_tree(root, manifest)
    assert len(problems) == 1 and problem in problems[0], problems


def test_manifest_entries_are_looked_for_in_the_kept_folder(tmp_path: Path) -> None:
    root, kept = tmp_path / "root", tmp_path / "kept"
    root.mkdir()
    (kept / MANIFEST_DIR / "staging").mkdir(parents=True)
    (kept / MANIFEST_DIR / "staging" / "dump.sql").write_text("dump\n")
    member = tarfile.TarInfo(f"{MANIFEST_DIR}/staging/dump.sql")
    member.size, member.mode = 5, (kept / MANIFEST_DIR / "staging" / "dump.sql").stat().st_mode & 0o7777
    record = entry(member, hashlib.sha256(b"dump\n").hexdigest())
    manifest = {"format": 1, "entries": [record]}
    write_manifest(kept, manifest)
    problems = compare_tree(root, manifest, kept)
    assert problems == [f"{MANIFEST_DIR}: not in the manifest", f"{MANIFEST_DIR}/staging: not in the manifest"]
    assert compare_tree(root, manifest) == [f"{MANIFEST_DIR}/staging/dump.sql: missing"]


GOOD_FILE = {"name": "a", "type": "file", "mode": 0o644, "size": 1, "sha256": "0" * 64}


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (GOOD_FILE, None),
        ({"name": "d/", "type": "dir", "mode": 0o755}, None),
        ({"name": "l", "type": "symlink", "mode": 0o777, "target": "../anywhere"}, None),
        ({"name": "h", "type": "hardlink", "mode": 0o644, "target": "a"}, None),
        ([], "not an object"),
        ({**GOOD_FILE, "name": "/etc/passwd"}, "is an absolute path"),
        ({**GOOD_FILE, "name": "a/../../b"}, "has '..' in it"),
        ({**GOOD_FILE, "name": "./."}, "names no member"),
        ({**GOOD_FILE, "name": "a\0b"}, "not a name"),
        ({**GOOD_FILE, "name": 7}, "not a name"),
        ({**GOOD_FILE, "type": "socket"}, "type 'socket' is none of"),
        ({**GOOD_FILE, "mode": 0o10000}, "is not a file mode"),
        ({**GOOD_FILE, "mode": True}, "is not a file mode"),
        ({**GOOD_FILE, "size": -1}, "is not a byte count"),
        ({**GOOD_FILE, "sha256": "A" * 64}, "is not a sha256"),
        ({**GOOD_FILE, "sha256": "0" * 63}, "is not a sha256"),
        ({"name": "l", "type": "symlink", "mode": 0o777, "target": ""}, "no link target"),
        ({"name": "h", "type": "hardlink", "mode": 0o644, "target": "../x"}, "hard link target:"),
    ],
)
def test_entry_problem(record: object, problem: str | None) -> None:
    found = entry_problem(record)
    assert found is None if problem is None else (found is not None and problem in found), found


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "no manifest"),
        ("{", "unreadable manifest"),
        ("[" * 100_000, "unreadable manifest"),  # deeper than json's recursion limit
        ('{"format": 2, "entries": []}', "not a manifest of format 1"),
        ('{"format": 1, "entries": {}}', "not a manifest of format 1"),
        ('{"format": 1, "entries": [{"name": "a", "type": "dir", "mode": 493}, 5]}', "entry 2: not an object"),
    ],
)
def test_read_manifest_refuses_what_is_no_manifest(tmp_path: Path, text: str | None, problem: str) -> None:
    if text is not None:
        (tmp_path / MANIFEST_DIR).mkdir()
        (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(ManifestError, match=problem) as caught:
        read_manifest(tmp_path)
    assert str(tmp_path / MANIFEST_NAME) in str(caught.value) and "\n" not in str(caught.value)


names = st.text(st.sampled_from("ab./"), min_size=0, max_size=8)
records = st.fixed_dictionaries(
    {"name": names, "type": st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "x"])},
    optional={
        "mode": st.one_of(st.integers(-1, 0o10001), st.booleans(), st.none()),
        "size": st.integers(-2, 5),
        "sha256": st.sampled_from(["0" * 64, "f" * 64, "g" * 64, ""]),
        "target": names,
    },
)


@settings(max_examples=150, deadline=2000, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(records, max_size=6))
def test_read_manifest_accepts_exactly_the_manifests_whose_entries_have_no_problem(
    tmp_path: Path, entries: list[dict[str, Any]]
) -> None:
    folder = tmp_path / "m"
    write_manifest(folder, {"format": 1, "entries": entries})
    problems = [(n, entry_problem(record)) for n, record in enumerate(entries, 1)]
    first = next(((n, p) for n, p in problems if p), None)
    if first is None:
        assert read_manifest(folder)["entries"] == entries
        for record in entries:  # what the restore would refuse, the manifest refuses too
            parts = record["name"].split("/")
            assert not record["name"].startswith("/") and ".." not in parts
    else:
        with pytest.raises(ManifestError, match=f"entry {first[0]}: "):
            read_manifest(folder)


def test_the_manifest_folder_name_is_reserved() -> None:
    assert MANIFEST_NAME.startswith(MANIFEST_DIR + "/") and manifest_module.STAGING_NAME.startswith(MANIFEST_DIR)
