"""A real systemd host for the e2e tier: a Debian root file system booted with systemd-nspawn, driven with nsenter.

    tarball = rootfs_tarball()                       # cached by content under /var/cache/hello-e2e
    host = SystemdHost(tmp_path / "root", "hello-e2e-1")
    host.unpack(tarball); host.copy_checkout(CHECKOUT, Path("/srv/hello"))
    host.boot(); host.wait_running()
    host.run("make", "-C", "/srv/hello", "systemd-install")
    host.reboot(); host.stop()                         # stop() kills by PID also after a failure

The recipe is /work/shared/e2e-hosts.md: the host's PID 1 is not systemd, so machinectl and systemd-run -M do
not work; `nsenter -t <the container's PID 1> -a` does. `systemctl reboot` inside makes nspawn (with
--keep-unit) exit 133: boot again. The apt mirror is the one this machine's apt uses, read at run time.
No pytest here: the module only raises HostError.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CACHE = Path("/var/cache/hello-e2e")
SUITE = "bookworm"
# What the kit needs on a host (README "Running under systemd"), and a systemd to boot.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "ca-certificates",
    "make",
    "git",
    "procps",
    "python3",
    "python3-venv",
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-pushgateway",
    "prometheus-node-exporter",
    "rclone",
)
# Debian's own units of the monitoring packages: an operator disables them (README), the kit runs its own.
DEBIAN_MONITORING_UNITS = (
    "prometheus.service",
    "prometheus-alertmanager.service",
    "prometheus-pushgateway.service",
    "prometheus-node-exporter.service",
)
# The host's pip settings and package sources, so `make` inside reaches the same index (read-only binds).
PIP_SOURCES = ("/opt/wheels", "/opt/pypi", "/opt/pypi-more")
PIP_CONFIG = Path("/etc/pip.conf")
CA_DIR = Path("/usr/local/share/ca-certificates")
ROOTFS_RECIPE = "1"  # raise when rootfs_tarball() changes what it builds
REBOOT_EXIT = 133  # nspawn --keep-unit after `systemctl reboot` inside
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 60.0
COMMAND_TIMEOUT = 300.0
TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux"}


class HostError(Exception):
    """The systemd host could not be built, booted or driven; str() says what and where."""


def missing_tools() -> list[str]:
    """'name (Debian package pkg)' for each program this needs that is not installed."""
    return [f"{tool} (Debian package {package})" for tool, package in TOOLS.items() if not shutil.which(tool)]


def apt_mirror() -> str:
    """The Debian archive this machine's apt uses (sources.list or a deb822 .sources file), for debootstrap."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if path.suffix not in ("", ".list", ".sources") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):  # deb822: URIs: and Suites: in one stanza
            uris, suites = re.search(r"^URIs:\s*(.+)$", stanza, re.M), re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1).split()[0]
        for line in text.splitlines():  # one-line format: deb [options] URI SUITE components
            match = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if match and match.group(2) == SUITE:
                return match.group(1)
    raise HostError(f"no apt source for Debian {SUITE} in /etc/apt/sources.list*: debootstrap needs a mirror")


def _run(args: list[str], timeout: float = COMMAND_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-3:]
        raise HostError(f"{' '.join(args[:3])} ... failed ({done.returncode}): {' | '.join(detail)}")
    return done


def _cache_key() -> str:
    """What the root file system is made of: a change builds a new one (the old stays until removed)."""
    recipe = [SUITE, *PACKAGES, *DEBIAN_MONITORING_UNITS, ROOTFS_RECIPE]
    return hashlib.sha256("\n".join(recipe).encode()).hexdigest()[:16]


def rootfs_tarball(progress=print) -> Path:
    """The cached tarball of a bootable root file system with what the kit needs; built once (debootstrap)."""
    tarball = CACHE / f"systemd-host-{_cache_key()}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "systemd-host.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait and take its tarball
        if tarball.exists():
            return tarball
        return _build(tarball, progress)


def _build(tarball: Path, progress) -> Path:
    with tempfile.TemporaryDirectory(prefix="systemd-host-", dir=CACHE) as scratch:
        root = Path(scratch) / "root"
        mirror = apt_mirror()
        progress(f"e2e: debootstrap {SUITE} from {mirror} into {root} (once; cached as {tarball})")
        started = time.monotonic()
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror],
            timeout=1200,
        )
        _run(["systemctl", f"--root={root}", "mask", *DEBIAN_MONITORING_UNITS])
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        (root / "etc" / "machine-id").write_text("")  # a fresh one at each boot of a copy
        partial = Path(scratch) / "rootfs.tar"
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], timeout=600)
        partial.rename(tarball)  # whole or not at all: a concurrent builder renames the same content
        progress(f"e2e: root file system built in {time.monotonic() - started:.0f}s: {tarball}")
    return tarball


def _unpacked(tarball: Path) -> Path:
    """The tarball unpacked beside it (once, whole or not at all): the read-only lower layer of every host."""
    base = tarball.with_suffix(".root")
    if base.is_dir():
        return base
    with open(CACHE / "systemd-host.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not base.is_dir():
            partial = Path(tempfile.mkdtemp(prefix="systemd-host-unpack-", dir=CACHE))
            _run(["tar", "-C", str(partial), "--numeric-owner", "-xpf", str(tarball)], timeout=600)
            partial.chmod(0o755)
            partial.rename(base)
    return base


class SystemdHost:
    """One booted container: its root folder, its nspawn process (by PID), and commands run inside."""

    def __init__(self, root: Path, name: str, binds: list[str] | None = None) -> None:
        self.root, self.name, self.binds = root, name, binds or []
        self.nspawn: subprocess.Popen | None = None
        self.log = root.parent / f"{name}.console.log"
        self.boots = 0
        self.mounted = False

    # --- the root file system ---

    def unpack(self, tarball: Path) -> None:
        """The root file system: an overlay whose lower layer is the tarball unpacked once (cached beside it),
        so a test writes only what it changes and a warm start copies nothing."""
        base = _unpacked(tarball)
        layers = self.root.parent / f"{self.root.name}.layers"
        for folder in (self.root, layers / "upper", layers / "work"):
            folder.mkdir(parents=True)
        options = f"lowerdir={base},upperdir={layers / 'upper'},workdir={layers / 'work'}"
        _run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)])
        self.mounted = True
        etc = self.root / "etc"
        if PIP_CONFIG.exists():
            shutil.copy(PIP_CONFIG, etc / "pip.conf")
        certs = list(CA_DIR.glob("*.crt"))  # the package index may sit behind this machine's own CA
        for cert in certs:
            shutil.copy(cert, self.root / CA_DIR.relative_to("/") / cert.name)
        if certs:
            _run(["chroot", str(self.root), "update-ca-certificates"])
        self.binds += [f"--bind-ro={path}" for path in PIP_SOURCES if Path(path).is_dir()]
        pip_cache = CACHE / "pip"
        pip_cache.mkdir(parents=True, exist_ok=True)
        self.binds.append(f"--bind={pip_cache}:/root/.cache/pip")

    def copy_checkout(self, repo: Path, inside: Path) -> Path:
        """A clone of repo at `inside`, with the working tree's uncommitted changes on top (what is tested)."""
        target = self.root / inside.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        _run(["git", "clone", "-q", "--no-hardlinks", str(repo), str(target)])
        changed = _run(["git", "-C", str(repo), "ls-files", "-z", "-m", "-o", "--exclude-standard"]).stdout
        for name in filter(None, changed.split("\0")):
            source, copy = repo / name, target / name
            if source.is_file():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy)
        return target

    # --- boot, reboot, stop ---

    def boot(self) -> None:
        args = ["systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit"]
        args += ["--console=passive", "-M", self.name, *self.binds]
        with open(self.log, "ab") as log:
            self.nspawn = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.boots += 1

    def leader(self) -> int:
        """The container's PID 1, as the host sees it: the child of the nspawn process."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.nspawn is None or self.nspawn.poll() is not None:
                raise HostError(f"systemd-nspawn exited ({self.nspawn and self.nspawn.returncode}): {self.tail()}")
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text().split()
            if children:
                return int(children[0])
            time.sleep(0.05)
        raise HostError(f"systemd-nspawn started no container within {BOOT_TIMEOUT:.0f}s: {self.tail()}")

    def tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        return "no console log"

    def wait_running(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait until systemd finished booting; its state (running, or degraded with failed units)."""
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            done = self.exec(["systemctl", "is-system-running"], timeout=10)
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.2)
        raise HostError(f"systemd in {self.name} is still {state!r} after {timeout:.0f}s: {self.tail()}")

    def reboot(self) -> None:
        """`systemctl reboot` inside; nspawn exits 133; boot again (as `--keep-unit` machines are relaunched)."""
        assert self.nspawn is not None
        self.exec(["systemctl", "reboot"], timeout=30)
        code = self.nspawn.wait(timeout=BOOT_TIMEOUT)
        if code != REBOOT_EXIT:
            raise HostError(f"systemd-nspawn exited {code} on reboot, not {REBOOT_EXIT}: {self.tail()}")
        self.boot()

    def stop(self) -> None:
        """Power off, else kill the container's PID 1 (its whole PID namespace dies) and nspawn, by PID."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        with contextlib.suppress(HostError, subprocess.TimeoutExpired, OSError):
            self.exec(["systemctl", "poweroff"], timeout=10)
            self.nspawn.wait(timeout=20)
            return
        with contextlib.suppress(HostError, OSError):
            os.kill(self.leader(), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.nspawn.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.nspawn.wait(timeout=20)

    def remove(self) -> None:
        """After stop(): unmount the overlay and remove this container's layers (never the cached base)."""
        if self.mounted:
            subprocess.run(["umount", str(self.root)], capture_output=True, timeout=60)
            self.mounted = False
        layers = self.root.parent / f"{self.root.name}.layers"
        for folder in (self.root, layers):
            if not os.path.ismount(folder):
                shutil.rmtree(folder, ignore_errors=True)

    # --- commands inside ---

    def exec(self, args: list[str], timeout: float = COMMAND_TIMEOUT, user: str | None = None):
        """Run args inside (all namespaces of its PID 1), with a clean environment; the CompletedProcess."""
        env = ["env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8"]
        runas = ["runuser", "-u", user, "--"] if user else []
        command = ["nsenter", "-t", str(self.leader()), "-a", *env, *runas, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT, user: str | None = None) -> str:
        """exec(), raising HostError unless it exits 0; its stdout."""
        done = self.exec(list(args), timeout=timeout, user=user)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().splitlines()[-8:]
            raise HostError(f"in {self.name}: {' '.join(args)} exited {done.returncode}: " + " | ".join(output))
        return done.stdout

    def prop(self, unit: str, name: str) -> str:
        """One property of a unit (systemctl show -P)."""
        return self.run("systemctl", "show", "-P", name, unit).strip()
