"""A restore changes nothing outside its target, whatever the archive holds (hello/backup/restore.py).

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
import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import backup_script
from conftest import PYTHON, REPO, require_tool, write_config
from hello.backup import manifest as manifest_module
from hello.backup import restore
from hello.backup.naming import check_checksum
from hello.base.config import load_config

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


@pytest.mark.fast
def test_no_archive_changes_anything_outside_its_target(tmp_path: Path) -> None:
    folder = scratch(tmp_path)
    try:
        check_property(folder)
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder)


def check_property(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
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
                restore.restore(opener, target, run_dir=run_dir, label="a", force=False, say=print)
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


def config(tmp_path: Path) -> dict:
    """A loaded config whose run_dir is tmp_path/cfg/run (where restores keep their journals and locks)."""
    return load_config(write_config(tmp_path / "cfg", {"monitoring": {"pushgateway": {"url": None}}}))


@pytest.mark.fast
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
    assert restore.restore_archive(config(tmp_path), archive, str(plain), force=False, keep_setid=False).members
    modes = {name: stat.S_IMODE((plain / name).stat().st_mode) for name in ("d", "d/suid", "sgid", "plain")}
    assert modes == {"d": 0o775, "d/suid": 0o755, "sgid": 0o711, "plain": 0o1640}
    kept = tmp_path / "kept"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HELLO_CONFIG", str(tmp_path / "cfg" / "config.yaml"))
        assert backup_script.main(["restore", str(archive), "--target", str(kept), "--keep-setuid"]) == 0
    modes = {name: stat.S_IMODE((kept / name).stat().st_mode) for name in ("d", "d/suid", "sgid", "plain")}
    assert modes == {"d": 0o2775, "d/suid": 0o4755, "sgid": 0o2711, "plain": 0o1640}


@pytest.mark.fast
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
    assert restore.restore_archive(config(tmp_path), archive, str(target), force=False, keep_setid=False).members
    assert (target / "f").read_text() == "file f\n" and not (target / "f").is_symlink()
    assert os.readlink(target / "g") == "f" and os.readlink(target / "h") == "f", "a hard link to a link is a link"
    assert outside.read_text() == "outside\n" and outside.stat().st_nlink == 1


# --- a restore killed at any moment: the next one finishes or undoes it, from the private journal ---

KILLED_AT = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import backup_script
from hello.backup import restore
moment = sys.argv[2]
real_rename, real_add, real_remove = os.rename, restore.Extractor.add, restore._remove_at
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def rename(src, dst, **kwargs):
    if moment == "before-renames" and ".replaced-" in os.fspath(dst):
        die()
    real_rename(src, dst, **kwargs)
    if moment == "between-renames" and ".replaced-" in os.fspath(dst):
        die()  # the old target is aside, the new one not yet in place
def add(self, member):
    real_add(self, member)
    if moment == "extracting":
        die()
def remove_at(parent, name, expect=None):
    if moment == "after-renames" and ".replaced-" in name:
        die()
    return real_remove(parent, name, expect)
os.rename = rename
restore.Extractor.add = add
restore._remove_at = remove_at
sys.exit(backup_script.main(sys.argv[3:]))
"""
NEXT_SAYS = {
    "extracting": "killed before its renames: it was never touched",
    "before-renames": "killed before its renames: it was never touched",
    "between-renames": "completed the restore into",
    "after-renames": "killed while deleting its old contents",
}


@pytest.mark.parametrize("moment", list(NEXT_SAYS))
def test_a_restore_killed_at_any_moment_is_finished_by_the_next(tmp_path: Path, moment: str) -> None:
    archive = write_archive(
        tmp_path, [("file", "new.txt", "", 0o644, ROOT, 0), ("file", "two.txt", "", 0o644, ROOT, 0)]
    )
    place = tmp_path / "place"
    target = place / "target"
    (target / "sub").mkdir(parents=True)
    (target / "old.txt").write_text("old\n")
    cfg = write_config(tmp_path / "cfg", {"monitoring": {"pushgateway": {"url": None}}})
    state_folder = tmp_path / "cfg" / "run" / restore.STATE_FOLDER
    env = {**os.environ, "HELLO_CONFIG": str(cfg)}
    args = ["restore", str(archive), "--target", str(target), "--force"]
    killed = subprocess.run([PYTHON, "-c", KILLED_AT, str(REPO), moment, *args], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (not target.exists()) == (moment == "between-renames")
    assert [p.suffix for p in state_folder.glob("*.json")] == [".json"], "the journal is in the private run_dir"
    assert not list(place.glob(".target.restore*")), "no journal or lock beside the target"
    assert stat.S_IMODE(state_folder.stat().st_mode) == 0o700

    result = subprocess.run([PYTHON, str(REPO / "backup_script.py"), *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert NEXT_SAYS[moment] in result.stdout, result.stdout
    assert sorted(p.name for p in target.iterdir()) == ["new.txt", "two.txt"]
    assert sorted(p.name for p in place.iterdir()) == ["target"], "no folder left beside it"
    assert sorted(p.name for p in state_folder.iterdir()) == [], "no journal, lock or incoming folder left"


# --- attacks by another local user on a root restore into a shared sticky folder (issue 20.2) ---


def as_nobody(*args: str) -> None:
    """Run a command as the unprivileged user nobody (the attacker)."""
    runuser = require_tool("runuser", "util-linux")
    subprocess.run([runuser, "-u", "nobody", "--", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A sticky folder every user may write, like /tmp (under /tmp: nobody can reach it), and root's victims."""
    if os.geteuid() != 0:
        pytest.skip("the attacks need root for the restore and nobody for the attacker")
    top = Path(tempfile.mkdtemp(prefix="hello-shared-", dir="/tmp"))
    top.chmod(0o755)
    (top / "shared").mkdir(mode=0o1777)
    (top / "shared").chmod(0o1777)
    victim = top / "victim"
    (victim / "folder" / "inner").mkdir(parents=True)
    (victim / "folder" / "inner").chmod(0o750)
    (victim / "folder" / "data.txt").write_text("root's data\n")
    (victim / "file.txt").write_text("root's file\n")
    (victim / "file.txt").chmod(0o644)
    try:
        yield top
    finally:
        restore.remove_tree(top)


ATTACKS = {
    # the old journal beside the target, naming a victim folder as the restore's old contents
    "planted journal": lambda shared, victim: [
        ["sh", "-c", f'printf \'{{"new": "x", "old": "{victim / "folder"}"}}\\n\' > {shared}/.target.restore.json'],
        ["sh", "-c", f'printf \'{{"new": "x", "old": "../victim/folder"}}\\n\' > {shared}/.other.restore.json'],
    ],
    # the old lock beside the target, a link to a victim file
    "symlinked lock": lambda shared, victim: [["ln", "-s", str(victim / "file.txt"), f"{shared}/.target.restore.lock"]],
    # a leftover-looking folder name, a link to a victim folder (the clean-up chmod-ed what it named)
    "planted restoring link": lambda shared, victim: [
        ["ln", "-s", str(victim / "folder"), f"{shared}/.target.restoring-abcd1234"],
        ["ln", "-s", str(victim / "folder"), f"{shared}/.target.replaced-abcd1234"],
        ["mkdir", f"{shared}/.target.restoring-efgh5678"],
        ["ln", "-s", str(victim / "file.txt"), f"{shared}/.target.restoring-efgh5678/link"],
    ],
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_attack_beside_the_target_changes_nothing_and_the_restore_works(
    tmp_path: Path, shared: Path, attack: str
) -> None:
    place, victim = shared / "shared", shared / "victim"
    target = place / "target"
    for command in ATTACKS[attack](place, victim):
        as_nobody(*command)
    planted = state(place, target)
    victims = state(victim, victim / "none")
    archive = write_archive(tmp_path, [("dir", "d", "", 0o755, ROOT, 0), ("file", "d/new.txt", "", 0o644, ROOT, 0)])
    cfg = write_config(tmp_path / "cfg", {"monitoring": {"pushgateway": {"url": None}}})
    env = {**os.environ, "HELLO_CONFIG": str(cfg)}
    script = str(REPO / "backup_script.py")
    for force in ([], ["--force"]):  # into a missing target, then over the restored one
        result = subprocess.run(
            [PYTHON, script, "restore", str(archive), "--target", str(target), *force],
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert "finished" not in result.stdout and "undid" not in result.stdout, "nothing planted is acted on"
        assert (target / "d" / "new.txt").read_text() == "file d/new.txt\n"
        assert state(victim, victim / "none") == victims, "the victims are byte- and stat-identical"
        assert state(place, target) == planted, "what was planted beside the target is left as it was"
    assert (victim / "file.txt").read_text() == "root's file\n"


def test_a_run_dir_of_another_user_holds_no_restore_state(tmp_path: Path, shared: Path) -> None:
    """A run_dir the attacker owns (or a link in its place) is refused: one line, exit 2, nothing restored."""
    archive = write_archive(tmp_path, [("file", "new.txt", "", 0o644, ROOT, 0)])
    run_dir = shared / "shared" / "run"
    as_nobody("mkdir", str(run_dir))
    cfg = write_config(tmp_path / "cfg", {"monitoring": {"pushgateway": {"url": None}}, "run_dir": str(run_dir)})
    target = tmp_path / "target"
    result = subprocess.run(
        [PYTHON, str(REPO / "backup_script.py"), "restore", str(archive), "--target", str(target)],
        env={**os.environ, "HELLO_CONFIG": str(cfg)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "belongs to uid 65534" in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert not target.exists() and list(run_dir.iterdir()) == []


# --- a journal in the private run_dir that is not what the kit wrote (corrupt, edited): never acted on blindly ---


def hostile_journals(final: Path, identities: list[list[int]]) -> st.SearchStrategy:
    """Journals close to the real format (so that most checks are reached), with names and identities that point
    at what must not be touched, and JSON that is no journal at all."""

    def mostly(right: object, *wrong: object) -> st.SearchStrategy:
        return st.sampled_from([right] * (3 * len(wrong)) + list(wrong))  # so that most journals reach recovery

    names = st.sampled_from(
        [
            ".target.restoring-abcd1234",  # planted beside the target: links into the sentinel
            ".target.replaced-abcd1234",
            ".target.restoring-zzzz9999",  # missing
            ".target.replaced-zzzz9999",
            "sentinel",
            "victim.txt",
            "../outer.txt",
            "/etc",
            ".target.restoring-../../x",
            ".other.restoring-abcd1234",
        ]
    )
    identity = st.one_of(st.none(), st.sampled_from(identities), st.just("x"), st.lists(st.integers(-1, 3), max_size=3))
    folder = st.one_of(st.fixed_dictionaries({"name": names, "id": identity}), st.none(), st.text(max_size=5))
    record = st.fixed_dictionaries(
        {
            "format": mostly(restore.JOURNAL_FORMAT, 1, str(restore.JOURNAL_FORMAT)),
            "target": mostly(str(final), str(final) + "x", str(final.parent)),
            "parent": mostly(identities[0], identities[1], [0, 0]),
            "uid": mostly(os.geteuid(), 65534, "0"),
            "restoring": folder,
        },
        optional={"replaced": folder, "target_id": identity},
    )
    junk = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )
    return st.one_of(
        record.map(json.dumps), record.map(json.dumps), junk.map(json.dumps), st.binary(max_size=20).map(repr)
    )


@pytest.mark.fast
def test_a_hostile_journal_is_refused_or_harmless(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    base = tmp_path / "base"
    parent = make_sentinel(base)
    (parent / ".target.restoring-abcd1234").symlink_to("sentinel")
    (parent / ".target.replaced-abcd1234").symlink_to("sentinel/sub")
    target = parent / "target"
    final = Path(os.path.realpath(target))
    identity = [(p.stat().st_dev, p.stat().st_ino) for p in (parent, parent / "sentinel", parent / "sentinel" / "sub")]
    archive = write_archive(tmp_path, [("file", "new.txt", "", 0o644, ROOT, 0)])
    journal = restore.State.of(run_dir, final).journal
    before = state(base, target)
    outcomes = {"restored": 0, "refused": 0}

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(hostile_journals(final, [list(i) for i in identity]))
    def restore_with(text: str) -> None:
        journal.write_text(text)
        try:
            restore.restore(
                functools.partial(tarfile.open, archive, "r:gz"), target, run_dir=run_dir, label="a", force=False
            )
        except restore.RestoreError as exc:
            outcomes["refused"] += 1
            assert str(journal) in str(exc) and "\n" not in str(exc)
        else:
            outcomes["restored"] += 1
            assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
        finally:
            journal.unlink(missing_ok=True)
            if target.exists():
                restore.remove_tree(target)
        assert state(base, target) == before, f"something outside the target changed: {text}"

    restore_with()
    print(f"hostile journals: {outcomes}")
    assert outcomes["refused"] and outcomes["restored"], "malformed journals are refused; accepted ones harmless"


# --- the drill's manifest: its entries are checked like archive members (issue 20.2) ---

GOOD_ENTRIES = [
    {"name": ".hello-backup", "mode": 0o700, "type": "dir"},
    {
        "name": "a.txt",
        "mode": 0o644,
        "type": "file",
        "size": 8,
        "sha256": hashlib.sha256(b"file a.txt\n"[:8]).hexdigest(),
    },
]


def drill_archive(folder: Path, entries: list) -> Path:
    """An archive as backup_script writes them: .hello-backup/, a.txt, then .hello-backup/manifest.json (entries)."""
    manifest = json.dumps({"format": 1, "commit": "c0ffee", "entry_count": len(entries), "entries": entries}).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(manifest_module.folder_member(manifest_module.MANIFEST_DIR))
        for name, data in (("a.txt", b"file a.t"), (manifest_module.MANIFEST_NAME, manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "hello-world-20250101T000000Z.tar.gz"
    archive.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    archive.with_name(archive.name + ".sha256").write_text(f"{digest}  {archive.name}\n")
    return archive


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ({"name": "/etc/shadow", "mode": 0o640, "type": "file", "size": 1, "sha256": "0" * 64}, "absolute path"),
        ({"name": "../../../etc/shadow", "mode": 0o640, "type": "file", "size": 1, "sha256": "0" * 64}, "'..'"),
        ({"name": "a.txt", "mode": 0o644}, "type None"),
        ({"name": "x", "mode": 0o644, "type": "device"}, "type 'device'"),
        ({"name": "x", "mode": 0o644, "type": "file", "sha256": "0" * 64}, "size None"),
        ({"name": "x", "mode": "0644", "type": "dir"}, "mode '0644'"),
        ({"name": "x", "mode": 0o777, "type": "hardlink", "target": "../../etc/passwd"}, "hard link target"),
        ("a.txt", "not an object"),
    ],
)
def test_a_malformed_manifest_is_a_failed_drill_recorded_in_one_line(tmp_path: Path, entry, said: str) -> None:
    run_dir = tmp_path / "run"
    destination = tmp_path / "backups"
    drill_archive(destination, [*GOOD_ENTRIES, entry])
    cfg = write_config(
        tmp_path / "cfg",
        {
            "monitoring": {"pushgateway": {"url": None}},
            "backup": {"destination": str(destination)},
            "run_dir": str(run_dir),
        },
    )
    env = {**os.environ, "HELLO_CONFIG": str(cfg)}
    result = subprocess.run(
        [PYTHON, str(REPO / "backup_script.py"), "drill"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "drill failed" in result.stderr and "entry 3" in result.stderr and said in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    recorded = (run_dir / "metrics" / "hello_world_backup_drill.prom").read_text()
    assert "hello_world_backup_drill_success 0.0" in recorded, recorded
    assert list((run_dir / "drill").iterdir()) == [] and list((run_dir / "restore").iterdir()) == []


def test_a_good_manifest_drills_and_says_why_members_and_entries_differ(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    destination = tmp_path / "backups"
    drill_archive(destination, GOOD_ENTRIES)
    cfg = write_config(
        tmp_path / "cfg",
        {
            "monitoring": {"pushgateway": {"url": None}},
            "backup": {"destination": str(destination)},
            "run_dir": str(run_dir),
        },
    )
    result = subprocess.run(
        [PYTHON, str(REPO / "backup_script.py"), "drill"],
        env={**os.environ, "HELLO_CONFIG": str(cfg)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "2 manifest entries restored exactly (1 in the tree, 1 in .hello-backup/, kept apart)" in result.stdout
    assert "+ the manifest itself = 3 members" in result.stdout
    assert all(len(line) <= 120 for line in result.stdout.splitlines()), result.stdout
    assert list((run_dir / "restore").iterdir()) == [], "the drill's kept manifest is removed with its scratch"


ENTRY_FIELDS = {
    "name": st.sampled_from(
        ["a.txt", "b", "/etc/shadow", "../x", "a/../../x", ".", "", "./a.txt", "d/", "a\0b", "a.txt/x", "b/x", "l/x"]
    )
    | st.integers()
    | st.none(),
    "mode": st.sampled_from([0o644, -1, 0o10000, "644", None, 1.5]),
    "type": st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "device", None, 3]),
    "size": st.sampled_from([0, 8, -1, "8", None, 2**70]),
    "sha256": st.sampled_from(["0" * 64, GOOD_ENTRIES[1]["sha256"], "x" * 64, "0" * 63, None]),
    "target": st.sampled_from(["a.txt", "../../etc/passwd", "/etc/passwd", "", None, "b"]),
}


VALID_ENTRIES = [
    {"name": "a.txt", "mode": 0o644, "type": "file", "size": 8, "sha256": "0" * 64},
    {"name": "d", "mode": 0o755, "type": "dir"},
    {"name": "b", "mode": 0o777, "type": "symlink", "target": "a.txt"},
    {"name": "h", "mode": 0o644, "type": "hardlink", "target": "a.txt"},
    {"name": "f", "mode": 0o644, "type": "fifo"},
]


@st.composite
def hostile_entry(draw: st.DrawFn) -> object:
    """A valid entry with, most of the time, one field changed to a hostile value or dropped; or no object."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([None, "a.txt", [], 1]))
    record = dict(draw(st.sampled_from(VALID_ENTRIES)))
    record["name"] = draw(ENTRY_FIELDS["name"]) if draw(st.booleans()) else record["name"]
    if draw(st.booleans()):
        field = draw(st.sampled_from(list(ENTRY_FIELDS)))
        if draw(st.booleans()):
            record.pop(field, None)
        else:
            record[field] = draw(ENTRY_FIELDS[field])
    return record


@pytest.mark.fast
def test_hostile_manifests_are_refused_or_compared_inside_the_tree(tmp_path: Path) -> None:
    """Whatever the entries: ManifestError (one line), or a comparison that names only paths inside the tree."""
    root, kept = tmp_path / "tree", tmp_path / "kept"
    (root / "d").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"file a.t")
    (root / "b").symlink_to("a.txt")
    (root / "l").symlink_to("l")  # a loop: looked at, never followed
    (kept / ".hello-backup").mkdir(parents=True)
    outcomes = {"refused": 0, "compared": 0}

    @settings(max_examples=500, deadline=None, database=None)
    @given(st.lists(hostile_entry(), max_size=4))
    def check(entries: list) -> None:
        (kept / manifest_module.MANIFEST_NAME).write_text(json.dumps({"format": 1, "entries": entries}))
        try:
            manifest = manifest_module.read_manifest(kept)
        except manifest_module.ManifestError as exc:
            outcomes["refused"] += 1
            assert "\n" not in str(exc)
            return
        outcomes["compared"] += 1
        for record in manifest["entries"]:
            resolved = os.path.normpath(os.path.join(root, record["name"]))
            assert inside(resolved, str(root)), record
        problems = manifest_module.compare_tree(root, manifest, kept)
        assert isinstance(problems, list)

    check()
    print(f"hostile manifests: {outcomes}")
    assert outcomes["refused"] and outcomes["compared"]


def test_a_target_holding_the_run_dir_is_refused(tmp_path: Path) -> None:
    archive = write_archive(tmp_path, [("file", "new.txt", "", 0o644, ROOT, 0)])
    target = tmp_path / "cfg"  # holds cfg/run
    cfg = write_config(target, {"monitoring": {"pushgateway": {"url": None}}})
    before = sorted(p.name for p in target.iterdir())
    result = subprocess.run(
        [PYTHON, str(REPO / "backup_script.py"), "restore", str(archive), "--target", str(target), "--force"],
        env={**os.environ, "HELLO_CONFIG": str(cfg)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "holds system.run_dir" in result.stderr, result.stderr
    assert sorted(p.name for p in target.iterdir()) == before
