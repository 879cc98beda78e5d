"""A restore changes nothing outside its target, whatever the archive holds (hello/restore.py).

The property test generates thousands of hostile archives (folders, files, symbolic links, hard links, fifos,
devices; relative and absolute link targets; `..` anywhere; long names; names used twice), each with a valid
sidecar, restores each in-process into an empty target beside a sentinel tree, and checks that the sentinel
tree is byte- and stat-identical and that every link in the target resolves inside it.
HELLO_RESTORE_CASES sets the number of generated archives (default 2000).
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import backup_script
from conftest import PYTHON, REPO, write_config
from hello import restore
from hello.archive import open_tar_stream
from hello.naming import check_checksum

CASES = int(os.environ.get("HELLO_RESTORE_CASES", "2000"))
NOBODY = (65534, 65534, "nobody", "nogroup")
ROOT = (0, 0, "root", "root")


# --- a sentinel tree and its exact state ---


def make_sentinel(base: Path) -> Path:
    """base/{outer.txt, parent/{victim.txt, sentinel/...}}; the target goes in base/parent. Returns parent."""
    parent = base / "parent"
    (parent / "sentinel" / "sub").mkdir(parents=True)
    (parent / "sentinel" / "empty").mkdir()
    (base / "outer.txt").write_text("outer\n")
    (parent / "victim.txt").write_text("victim\n")
    (parent / "sentinel" / "file.txt").write_text("file\n")
    (parent / "sentinel" / "sub" / "deep.txt").write_text("deep\n")
    (parent / "sentinel" / "run.sh").write_text("#!/bin/sh\n")
    (parent / "sentinel" / "run.sh").chmod(0o755)
    (parent / "sentinel" / "link").symlink_to("file.txt")
    (parent / "sentinel" / "up").symlink_to("..")
    os.link(parent / "sentinel" / "file.txt", parent / "sentinel" / "hard")
    os.mkfifo(parent / "sentinel" / "fifo")
    return parent


def state(base: Path, target: Path) -> dict[str, tuple]:
    """Every entry under base except target: kind, mode, owner, link count, size, mtime, content or link."""
    result: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if Path(folder, d) != target]
        for name in [*dirs, *files, "."] if folder == str(base) else [*dirs, *files]:
            path = Path(folder, name)
            if path == target:
                continue
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            else:
                content = None
            entry = (info.st_mode, info.st_uid, info.st_gid, info.st_nlink, info.st_size, info.st_mtime_ns, content)
            if path == target.parent:  # its mtime and link count move as the target comes and goes
                entry = (info.st_mode, info.st_uid, info.st_gid)
            result[str(path.relative_to(base))] = entry
    return result


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def check_target(target: Path) -> None:
    """Every symbolic link resolves inside target, every hard link has all its names in it, no setuid/setgid."""
    root = os.path.realpath(target)
    names: dict[tuple[int, int], list[str]] = {}
    for folder, dirs, files in os.walk(target):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                assert inside(os.path.realpath(path), root), f"{path} -> {os.readlink(path)} leads outside"
                continue
            assert not info.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{path} is setuid/setgid"
            if not stat.S_ISDIR(info.st_mode):
                names.setdefault((info.st_dev, info.st_ino), []).append(path)
    for paths in names.values():
        assert os.lstat(paths[0]).st_nlink == len(paths), f"{paths[0]} has names outside the target"


# --- archives ---


Member = tuple[str, str, str, int, tuple, int]  # kind, name, link target, mode, owner, mtime


def write_archive(folder: Path, members: list[Member]) -> Path:
    """A gzip tar of members with a valid sidecar, as backup_script names them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=1) as tar:
        for kind, name, link, mode, (uid, gid, uname, gname), mtime in members:
            info = tarfile.TarInfo(name)
            info.type = {
                "dir": tarfile.DIRTYPE,
                "file": tarfile.REGTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "device": tarfile.CHRTYPE,
            }[kind]
            info.linkname, info.mode, info.mtime = link, mode, mtime
            info.uid, info.gid, info.uname, info.gname = uid, gid, uname, gname
            data = f"{kind} {name}\n".encode() if kind == "file" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = folder / "hello-world-20250101T000000Z.tar.gz"
    archive.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    archive.with_name(archive.name + ".sha256").write_text(f"{digest}  {archive.name}\n")
    return archive


# The case of issue 9: a hard link through two symbolic links to a file beside the target, mode 06777, nobody's.
ISSUE_CASE: list[Member] = [
    ("dir", "b", "", 0o755, ROOT, 0),
    ("symlink", "a", "b", 0o777, ROOT, 0),
    ("symlink", "a/c", ".", 0o777, ROOT, 0),
    ("symlink", "b/c/d", "../..", 0o777, ROOT, 0),
    ("hardlink", "x", "b/c/d/victim.txt", 0o6777, NOBODY, 0),
]
# Other known shapes of escape, run with every property run besides the generated ones.
KNOWN_ESCAPES: list[list[Member]] = [
    # a hard link to a symbolic link is a symbolic link: harmless one folder down, out of the target at the top
    [
        ("dir", "s", "", 0o755, ROOT, 0),
        ("symlink", "s/up", "..", 0o777, ROOT, 0),
        ("hardlink", "up", "s/up", 0, ROOT, 0),
    ],
    # a link redefined later in the archive
    [("symlink", "l", "a", 0o777, ROOT, 0), ("symlink", "l", "../..", 0o777, ROOT, 0)],
    # a link that leaves the target by name and comes back in through the private folder's own name
    [("symlink", "l", "../.target.restoring-x/victim.txt", 0o777, ROOT, 0)],
    # a file written through a link made earlier in the archive
    [("symlink", "out", "..", 0o777, ROOT, 0), ("file", "out/victim.txt", "", 0o644, ROOT, 0)],
    # a link through itself (found by the generator): it loops, and by its name it leads out
    [("symlink", "b", "b/../..", 0o644, ROOT, 0)],
]

KINDS = ["dir", "file", "symlink", "hardlink"] * 8 + ["fifo", "device"]
MODES = [0o644, 0o755, 0o700, 0o555, 0o000, 0o777, 0o1777, 0o4755, 0o2755, 0o6777]
MTIMES = [0, 1, 1_700_000_000, 2**31 - 1, 2**33]


def _paths(components: list[str], leaves: list[str] = ()) -> list[str]:
    """Every path of 1 to 3 components, and of up to 2 components then a leaf."""
    paths = ["/".join(parts) for depth in (1, 2, 3) for parts in itertools.product(components, repeat=depth)]
    return paths + [f"{path}/{leaf}" for path in ["", *paths] for leaf in leaves if path.count("/") < 2]


# Few names, so that members meet: links through links, names used twice, hard links to what came before.
# Each pool is drawn from whole (one draw per name keeps a case cheap to generate).
NAMES = _paths(["a", "b", "c"], ["victim.txt", "x"])
LINKS = _paths(["a", "b", "..", "."], ["victim.txt"])  # relative link targets, many of them climbing
HOSTILE = _paths(["a", "..", ".", "", "sentinel", "n" * 255, "n" * 256], ["victim.txt", "file.txt"])


def weighted(draw: st.DrawFn, choices: list[tuple[list[str], int]]) -> str:
    """A value of one of the pools, picked in proportion to its weight: two cheap draws."""
    pick = draw(st.integers(min_value=0, max_value=sum(weight for _pool, weight in choices) - 1))
    for pool, weight in choices:
        if pick < weight:
            return draw(st.sampled_from(pool))
        pick -= weight
    raise AssertionError("unreachable")


def members(base: Path) -> st.SearchStrategy[list[Member]]:
    """Lists of members whose names and link targets mostly meet (a few names), often with '..' or absolute."""
    roots = [str(base), str(base / "parent"), str(base / "parent" / "victim.txt"), "/", "/etc", "/tmp"]
    rooted = [f"{root}/{name}" for root in roots for name in HOSTILE]
    attrs = st.sampled_from(list(itertools.product(MODES, [ROOT, NOBODY], MTIMES)))  # one draw for all three

    @st.composite
    def archive(draw: st.DrawFn) -> list[Member]:
        result: list[Member] = []
        for _ in range(draw(st.integers(min_value=1, max_value=7))):
            kind = draw(st.sampled_from(KINDS))
            if kind == "hardlink" and result and draw(st.booleans()):
                target = draw(st.sampled_from([m[1] for m in result]))  # to an earlier member, maybe a link
            else:
                target = weighted(draw, [(NAMES, 6), (LINKS, 10), (HOSTILE, 2), (roots, 1), (rooted, 1)])
            name = weighted(draw, [(NAMES, 40), (HOSTILE, 3), (rooted, 1)])
            result.append((kind, name, target, *draw(attrs)))
        return result

    return archive()


def scratch(tmp_path: Path) -> Path:
    """A folder on tmpfs when there is one: thousands of restores, each with its fsyncs, stay fast."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="hello-restore-test-", dir=shm))
    return tmp_path


def test_no_archive_changes_anything_outside_its_target(tmp_path: Path) -> None:
    folder = scratch(tmp_path)
    try:
        check_property(folder)
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder)


def check_property(tmp_path: Path) -> None:
    base = tmp_path / "base"
    parent = make_sentinel(base)
    target = parent / "target"
    archives = tmp_path / "archives"
    archives.mkdir()
    before = state(base, target)
    outcomes = {"restored": 0, "refused": 0}

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(members(base))
    @example(ISSUE_CASE)
    @example(KNOWN_ESCAPES[0])
    @example(KNOWN_ESCAPES[1])
    @example(KNOWN_ESCAPES[2])
    @example(KNOWN_ESCAPES[3])
    @example(KNOWN_ESCAPES[4])
    def restore_one(case: list[Member]) -> None:
        archive = write_archive(archives, case)
        empty = len(case) % 2 == 0  # half of the targets exist (empty), half do not
        if empty:
            target.mkdir()
        try:
            try:
                check_checksum(archive)
                # Python's own gzip reader: no decompression thread per case (restore is what is tested here).
                opener = functools.partial(tarfile.open, archive, "r:gz")
                restore.restore(opener, target, label="a", force=False, say=print)
            except restore.RestoreError:
                outcomes["refused"] += 1
                assert not target.exists() or not any(target.iterdir()), "a refused restore left files"
            else:
                outcomes["restored"] += 1
                check_target(target)
            assert state(base, target) == before, f"something outside the target changed: {case}"
        finally:
            if target.exists():
                restore.remove_tree(target)

    restore_one()
    print(f"restore property: {sum(outcomes.values())} archives, {outcomes}")
    assert outcomes["restored"] and outcomes["refused"], "the cases cover both outcomes"


# --- the case of the issue, through the command line ---


def test_the_issue_case_is_refused_and_the_victim_untouched(tmp_path: Path) -> None:
    base = tmp_path / "base"
    parent = make_sentinel(base)
    target = parent / "target"
    before = state(base, target)
    archive = write_archive(tmp_path, ISSUE_CASE)
    config = write_config(tmp_path / "cfg", {"monitoring": {"pushgateway": {"url": None}}})
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    script = str(REPO / "backup_script.py")
    result = subprocess.run(
        [PYTHON, script, "restore", str(archive), "--target", str(target)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stderr
    assert "refusing to restore" in result.stderr and "'a/c'" in result.stderr and "symbolic link" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert state(base, target) == before
    victim = (parent / "victim.txt").stat()
    assert victim.st_nlink == 1 and stat.S_IMODE(victim.st_mode) == 0o644 and victim.st_uid == 0
    assert not target.exists()


# --- setuid and setgid ---


def test_setuid_and_setgid_are_dropped_unless_asked_for(tmp_path: Path) -> None:
    archive = write_archive(
        tmp_path,
        [
            ("dir", "d", "", 0o2775, ROOT, 0),
            ("file", "d/suid", "", 0o4755, ROOT, 0),
            ("file", "sgid", "", 0o2711, ROOT, 0),
            ("file", "plain", "", 0o1640, ROOT, 0),
        ],
    )
    plain = tmp_path / "plain"
    assert backup_script.run_restore(str(archive), str(plain), force=False) == 0
    modes = {name: stat.S_IMODE((plain / name).stat().st_mode) for name in ("d", "d/suid", "sgid", "plain")}
    assert modes == {"d": 0o775, "d/suid": 0o755, "sgid": 0o711, "plain": 0o1640}
    kept = tmp_path / "kept"
    assert backup_script.main(["restore", str(archive), "--target", str(kept), "--keep-setuid"]) == 0
    modes = {name: stat.S_IMODE((kept / name).stat().st_mode) for name in ("d", "d/suid", "sgid", "plain")}
    assert modes == {"d": 0o2775, "d/suid": 0o4755, "sgid": 0o2711, "plain": 0o1640}


def test_later_members_replace_earlier_ones_but_never_through_a_link(tmp_path: Path) -> None:
    """A name used twice: the later member wins (as with tar), and a file after a link replaces the link."""
    outside = tmp_path / "outside.txt"
    outside.write_text("outside\n")
    archive = write_archive(
        tmp_path,
        [
            ("symlink", "f", "../outside.txt", 0o777, ROOT, 0),
            ("file", "f", "", 0o644, ROOT, 0),
            ("file", "g", "", 0o600, ROOT, 0),
            ("symlink", "g", "f", 0o777, ROOT, 0),
            ("hardlink", "h", "g", 0o644, ROOT, 0),
        ],
    )
    target = tmp_path / "target"
    assert backup_script.run_restore(str(archive), str(target), force=False) == 0
    assert (target / "f").read_text() == "file f\n" and not (target / "f").is_symlink()
    assert os.readlink(target / "g") == "f" and os.readlink(target / "h") == "f", "a hard link to a link is a link"
    assert outside.read_text() == "outside\n" and outside.stat().st_nlink == 1


# --- a --force restore killed between its two renames ---

KILL_BETWEEN_RENAMES = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import backup_script
from hello import restore
from hello import restore
real = os.rename
def rename(src, dst):
    real(src, dst)
    if ".replaced-" in os.fspath(dst):  # the old target is aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
restore.os.rename = rename
sys.exit(backup_script.main(sys.argv[2:]))
"""


def test_a_force_restore_killed_between_its_renames_is_completed_by_the_next(tmp_path: Path) -> None:
    archive = write_archive(tmp_path, [("file", "new.txt", "", 0o644, ROOT, 0)])
    place = tmp_path / "place"
    target = place / "target"
    (target / "sub").mkdir(parents=True)
    (target / "old.txt").write_text("old\n")
    config = write_config(tmp_path / "cfg", {"monitoring": {"pushgateway": {"url": None}}})
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    args = ["restore", str(archive), "--target", str(target), "--force"]
    killed = subprocess.run([PYTHON, "-c", KILL_BETWEEN_RENAMES, str(REPO), *args], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not target.exists(), "the kill came between the renames"
    assert (place / ".target.restore.json").exists()

    result = subprocess.run([PYTHON, str(REPO / "backup_script.py"), *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "completed the restore into" in result.stdout and "killed between its two renames" in result.stdout
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in place.iterdir()) == ["target"], "no journal, lock or folder left beside it"


@pytest.mark.parametrize("moment", ["extracting", "before-renames", "after-renames"])
def test_other_leftovers_of_a_killed_restore_are_cleaned_up_and_said(tmp_path: Path, moment: str) -> None:
    archive = write_archive(tmp_path, [("file", "new.txt", "", 0o644, ROOT, 0)])
    place = tmp_path / "place"
    target = place / "target"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old\n")
    new = place / ".target.restoring-abcd1234"
    old = place / ".target.replaced-abcd1234"
    new.mkdir()
    (new / "half.txt").write_text("half\n")
    if moment != "extracting":
        old.mkdir()
        (place / ".target.restore.json").write_text(f'{{"new": "{new.name}", "old": "{old.name}"}}\n')
    if moment == "after-renames":
        shutil.rmtree(new)
        (old / "old-contents.txt").write_text("the replaced contents\n")
    said: list[str] = []
    count = restore.restore(lambda: open_tar_stream(archive), target, label="a", force=True, say=said.append)
    assert count == 1 and len(said) == 1
    assert {"extracting": "killed while extracting", "before-renames": "never touched"}.get(
        moment, "killed while deleting its old contents"
    ) in said[0]
    assert sorted(p.name for p in place.iterdir()) == ["target"]
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
