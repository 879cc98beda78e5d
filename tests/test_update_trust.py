"""What an upstream commit can and cannot do to the host (issue 20 items 3 and 4, issue 24 item 5).

The attacks are commits in the bare remote of a scratch deployment laid out as the shipped config.yaml lays a
checkout out (tests/support/scratch.py, state_inside: run/ and backups/ git-ignored inside the checkout, beside
a .venv and a .env): a commit that tracks local state is refused before anything runs, and the local state, the
checkout and what serves are as they were.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hello.base.git import GitError, switch_branch
from tests.support.deployment import assert_step, log_lines, serving_deployment, shown
from tests.support.processes import ProcessRegistry
from tests.support.scratch import SMOKE_TEST, ScratchDeployment, git
from tests.support.tools import require_tool

PROTECTED = ("run", "backups", ".venv", ".env")  # the shipped layout's local state inside the checkout
# What is compared byte for byte: all but run/, where the server and the record step write (its PID is compared,
# and the operator's file planted there).
COMPARED = ["backups", ".venv", ".env", "run/operator-notes.txt", "run/hello_world.pid"]
ARCHIVE = "hello-world-20260101T020000Z.tar.gz"
# The deployment's tests run as nobody (system.update.test_user), with a Python nobody can run (this suite's lives
# under /root here) and without pytest: every test_ function of the smoke file, called in order.
RUN_SMOKE = 'ns = runpy.run_path("tests_smoke/test_smoke.py"); [ns[n]() for n in sorted(ns) if n.startswith("test_")]'
AS_NOBODY = f"/usr/bin/python3 -c 'import runpy; {RUN_SMOKE}'"


@pytest.fixture(scope="module")
def deployment() -> Iterator[tuple[ScratchDeployment, ProcessRegistry]]:
    """This module's serving deployment, its run dir and backups inside the checkout, in a folder every user may
    enter (pytest's are root's 0700): what keeps the test user out of it is ownership, as on a real host."""
    root = Path(tempfile.mkdtemp(prefix="hello-trust-"))
    root.chmod(0o755)
    try:
        with serving_deployment(root, state_inside=True) as pair:
            site = pair[0]
            site.write_config(site.config_path, {"update": {"test_user": "nobody", "test_command": AS_NOBODY}})
            yield pair
    finally:
        shutil.rmtree(root)


@pytest.fixture
def local_state(site: ScratchDeployment) -> dict[str, bytes]:
    """An archive, a venv file, the secrets file and an operator's note in the run dir: {path: bytes}."""
    planted = {
        f"backups/{ARCHIVE}": b"an archive the operator needs\n",
        ".venv/lib/site-packages/kept.pth": b"# the live venv's own file\n",
        ".env": b"GF_ADMIN_PASSWORD=not-for-upstream\n",
        "run/operator-notes.txt": b"the kit's private state\n",
    }
    for name, data in planted.items():
        (site.deploy / name).parent.mkdir(parents=True, exist_ok=True)
        (site.deploy / name).write_bytes(data)
    return planted


def files_under(root: Path, names: list[str]) -> dict[str, tuple[int, bytes]]:
    """Each regular file at or under the names (relative to root): its mode and bytes (a symlink: its target).
    Not __pycache__: the kit itself (root) writes its bytecode there where PYTHONDONTWRITEBYTECODE is unset."""
    found = {}
    for name in names:
        top = root / name
        for path in [top, *sorted(top.rglob("*"))] if top.is_dir() and not top.is_symlink() else [top]:
            if "__pycache__" in path.relative_to(root).parts:
                continue
            if path.is_symlink():
                found[str(path.relative_to(root))] = (0, os.readlink(path).encode())
            elif path.is_file():
                found[str(path.relative_to(root))] = (path.stat().st_mode, path.read_bytes())
    return found


def push(
    site: ScratchDeployment,
    message: str,
    write: dict[str, str] | None = None,
    delete: tuple = (),
    key: Path | None = None,
) -> str:
    """A commit on the remote's tip writing (git add -f: ignored paths too) and deleting paths, signed with the
    ssh key when given; the commit."""
    git(site.dev, "fetch", "-q", "origin")
    git(site.dev, "reset", "-q", "--hard", "origin/main")
    for name, text in (write or {}).items():
        path = site.dev / name
        if path.is_dir():  # a name the commit makes a file where the dev clone has an ignored folder
            raise AssertionError(f"{path} is a folder in the dev clone")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        git(site.dev, "add", "-f", "--", name)
    for name in delete:
        git(site.dev, "rm", "-q", "--", name)
    signing = ("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-S") if key else ("commit",)
    git(site.dev, *signing, "-q", "-m", message)
    git(site.dev, "push", "-q", "--force", "origin", "HEAD:main")
    return git(site.dev, "rev-parse", "HEAD")


def random_protected_name() -> str:
    """One path at or under a protected name, picked at random (the seed printed, PROTECTED_SEED replays it)."""
    seed = int(os.environ.get("PROTECTED_SEED") or random.randrange(2**32))
    print(f"PROTECTED_SEED={seed}")
    rng = random.Random(seed)
    parts = [rng.choice(PROTECTED)]
    for _ in range(rng.randint(0, 3)):
        parts.append(rng.choice(["lib", "bin", "x.pth", ARCHIVE, "update.log", "metrics", "a b", "sitecustomize.py"]))
    return "/".join(parts)


# --- A. an update never deletes or replaces an untracked or ignored path ------------------------------------


@pytest.mark.parametrize("name", ["backups", "run", ".venv/lib/site-packages/evil.pth", ".env", "random"])
def test_a_commit_tracking_local_state_is_refused_before_anything_runs(
    site: ScratchDeployment, local_state: dict[str, bytes], name: str
) -> None:
    if name == "random":
        name = random_protected_name()
    before = files_under(site.deploy, COMPARED)
    served, pid, logged = site.served(), site.pid(), len(log_lines(site))
    bad = push(site, f"upstream tracks {name}", write={name: "upstream's\n"})
    result = site.update()
    assert result.returncode == 1, shown(result)
    assert_step(result, "fetch", "FAILED")
    inside = name.split("/")[0]
    assert re.search(rf"{bad[:10]} tracks '{re.escape(inside)}[^']*' in the ", result.stdout), shown(result)
    assert not re.search(r"^(test|backup|checkout|deploy)\s", result.stdout, re.MULTILINE), shown(result)
    assert files_under(site.deploy, COMPARED) == before
    assert {name: (site.deploy / name).read_bytes() for name in local_state} == local_state
    assert site.served() == served == site.head() and site.pid() == pid
    entries = log_lines(site)
    assert len(entries) == logged + 1 and entries[-1]["outcome"] == "refused", entries[-1]
    assert not (site.run_dir / "update.pending.json").exists()


def test_a_commit_replacing_an_ignored_folder_is_refused(site: ScratchDeployment) -> None:
    cache = site.deploy / ".ruff_cache" / "CACHEDIR.TAG"  # ignored, not protected: git would delete it
    cache.parent.mkdir(exist_ok=True)
    cache.write_text("Signature: an ignored file\n")
    served = site.served()
    bad = push(site, "upstream tracks .ruff_cache as a file", write={".ruff_cache": "upstream's\n"})
    result = site.update()
    assert result.returncode == 1, shown(result)
    assert f"{bad[:10]} would delete or replace 1 untracked or ignored path(s) of the checkout: .ruff_cache" in (
        result.stdout
    ), shown(result)
    assert cache.read_text() == "Signature: an ignored file\n"
    assert site.served() == served == site.head()


def test_a_rollback_never_replaces_an_ignored_file(site: ScratchDeployment) -> None:
    ignore = (site.deploy / ".gitignore").read_text()
    older = push(site, "tracks notes.local", write={"notes.local": "upstream's notes\n"})
    assert site.update().returncode == 0 and site.served() == older
    newer = push(
        site,
        "notes.local is the operator's now",
        write={".gitignore": ignore + "notes.local\n"},
        delete=("notes.local",),
    )
    assert site.update().returncode == 0 and site.served() == newer
    notes = site.deploy / "notes.local"
    notes.write_text("the operator's own notes\n")
    result = site.update("rollback", older)
    assert result.returncode == 1, shown(result)
    assert_step(result, "choose", "FAILED")
    assert "would delete or replace 1 untracked or ignored path(s) of the checkout: notes.local" in result.stdout
    assert notes.read_text() == "the operator's own notes\n"
    assert site.served() == newer == site.head()


def test_git_itself_refuses_to_replace_ignored_paths(tmp_path: Path) -> None:
    """The checkout step's own guard, under the pre-checks: switch_branch changes nothing when it would lose
    an ignored file, where `git merge --ff-only` and `git reset --hard` replace it."""
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    (repo / ".gitignore").write_text("backups/\n.env\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "backups").write_text("upstream's\n")
    (repo / ".env").write_text("upstream's\n")
    git(repo, "add", "-f", "backups", ".env")
    git(repo, "commit", "-q", "-m", "tracks local state")
    bad = git(repo, "rev-parse", "HEAD")
    git(repo, "reset", "-q", "--hard", first)
    (repo / "backups").mkdir()
    (repo / "backups" / ARCHIVE).write_text("archive\n")
    (repo / ".env").write_text("secret\n")
    with pytest.raises(GitError, match="would"):
        switch_branch(repo, "main", bad)
    assert git(repo, "rev-parse", "HEAD") == first
    assert (repo / "backups" / ARCHIVE).read_text() == "archive\n" and (repo / ".env").read_text() == "secret\n"


# --- B. untested code cannot write into what serves ------------------------------------------------------------

ATTACK = """
import os
import pathlib


def test_attack():
    tried = {}
    targets = TARGETS + [os.path.join(os.environ["VIRTUAL_ENV"], "lib", LIB, "site-packages", "hello-attack-env.pth")]
    for target in targets:
        try:
            with open(target, "a") as handle:
                handle.write("# upstream was here\\n")
            tried[target] = "WROTE"
        except OSError as exc:
            tried[target] = type(exc).__name__
    print(f"attack as uid {os.getuid()}: {tried}")
    assert False, "the tests fail: the commit is refused, its writes must not stay"
"""


def test_a_commit_whose_tests_write_into_what_serves_changes_none_of_it(site: ScratchDeployment) -> None:
    if os.geteuid() != 0:
        pytest.skip("the tests run as system.update.test_user only when the kit runs as root")
    live_packages = Path(sysconfig.get_paths()["purelib"])  # the live venv: the server runs on this python
    targets = [
        live_packages / "hello-attack.pth",  # a .pth runs in every worker started later
        site.deploy / "hello_world.py",
        site.deploy / "ATTACK",
        site.run_dir / "update.log",
        site.run_dir / "attack",
    ]
    lib = live_packages.parent.name
    attack = ATTACK.replace("TARGETS", repr([str(path) for path in targets])).replace("LIB", repr(lib))
    planted = [live_packages / "hello-attack.pth", live_packages / "hello-attack-env.pth"]
    checkout = files_under(site.deploy, [name for name in os.listdir(site.deploy) if name not in ("run", ".git")])
    log = site.run_dir / "update.log"
    served, logged = site.served(), log.read_bytes() if log.exists() else b""
    push(site, "tests that write into what serves", write={"tests_smoke/test_smoke.py": attack})
    try:
        result = site.update()
        assert result.returncode == 1, shown(result)
        assert_step(result, "test", "FAILED")
        assert "attack as uid 65534: " in result.stdout, shown(result)  # the tests ran as nobody
        assert "WROTE" not in result.stdout, shown(result)
        assert not any(path.exists() for path in planted), planted
    finally:
        for path in planted:
            path.unlink(missing_ok=True)
    assert files_under(site.deploy, [name for name in os.listdir(site.deploy) if name not in ("run", ".git")]) == (
        checkout
    )
    assert not (site.run_dir / "attack").exists()
    assert log.read_bytes().startswith(logged) and b"upstream was here" not in log.read_bytes()
    assert site.served() == served == site.head()
    assert not (site.run_dir / "release").exists()


def test_the_smoke_test_passes_as_the_test_user(site: ScratchDeployment) -> None:
    """The other side: a good commit's tests, run as nobody in its own copy, pass and it is deployed."""
    good = push(site, "a good commit", write={"tests_smoke/test_smoke.py": SMOKE_TEST, "CHANGES": "good\n"})
    result = site.update()
    assert result.returncode == 0, shown(result)
    made = re.search(r"^test: \S+ at \w+ as nobody.*, the live venv read-only", result.stdout, re.MULTILINE)
    assert made, shown(result)
    assert site.served() == good


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two ssh keys (trusted, stranger) and an allowed-signers file naming the trusted one."""
    require_tool("ssh-keygen", "openssh-client")
    folder = tmp_path_factory.mktemp("keys")
    for name in ("trusted", "stranger"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(folder / name)],
            check=True,
            timeout=30,
        )
    allowed = folder / "allowed_signers"
    allowed.write_text(f'scratch@example.invalid namespaces="git" {(folder / "trusted.pub").read_text()}')
    return {"trusted": folder / "trusted", "stranger": folder / "stranger", "allowed": allowed}


@pytest.mark.parametrize("signer", ["trusted", "unsigned", "stranger"])
def test_verify_signatures_deploys_only_commits_signed_by_an_allowed_key(
    site: ScratchDeployment, tmp_path: Path, keys: dict[str, Path], signer: str
) -> None:
    config = site.write_config(tmp_path / "config.yaml", {"update": {"verify_signatures": str(keys["allowed"])}})
    served = site.served()
    commit = push(site, f"signed: {signer}", write={"CHANGES": f"{signer}\n"}, key=keys.get(signer))
    result = site.update(env={"HELLO_CONFIG": str(config)})
    if signer == "trusted":
        assert result.returncode == 0, shown(result)
        assert site.served() == commit == site.head()
        return
    assert result.returncode == 1, shown(result)
    assert_step(result, "fetch", "FAILED")
    assert f"{commit[:10]} is not signed by a key of {keys['allowed']} (verify_signatures)" in result.stdout
    assert ("No principal matched" if signer == "stranger" else "no signature") in result.stdout, shown(result)
    assert not re.search(r"^(test|backup|checkout|deploy)\s", result.stdout, re.MULTILINE), shown(result)
    assert site.served() == served == site.head()
    assert log_lines(site)[-1]["outcome"] == "refused"


# --- C. rollback reaches the release that served before the first update ------------------------------------


def test_rollback_reaches_the_commit_that_served_before_the_first_update(site: ScratchDeployment) -> None:
    log = site.run_dir / "update.log"
    earlier = log.read_bytes() if log.exists() else b""
    log.unlink(missing_ok=True)  # a deployment on which no update ran yet
    try:
        first = site.served()  # what `make start` served
        commit = push(site, "the first update", write={"CHANGES": "first\n"})
        assert site.update().returncode == 0 and site.served() == commit
        assert [(entry["from"], entry.get("good")) for entry in log_lines(site)] == [(first, commit)]
        result = site.update("rollback", first)
        assert result.returncode == 0, shown(result)
        assert site.served() == first == site.head()
        entry = log_lines(site)[-1]
        assert (entry["outcome"], entry["from"], entry["to"], entry["good"]) == ("rollback", commit, first, first)
    finally:
        log.write_bytes(earlier + (log.read_bytes() if log.exists() else b""))
