"""The vault (issue 26 part 2): a second host pulls the archives; production holds no credential of it at all.

Everything real: two network namespaces of the test's own (production and vault, a veth pair in 10.200.0.0/24,
names unique per run, deleted at teardown), `backup_script.py serve-vault` (rclone serve sftp --read-only) in the
production namespace, `backup_script.py pull` run in the vault's (`ip netns exec`), real archives by `create`.
The attacker is root on production with everything the kit holds there. Namespaces separate only the network:
the test's "production root" still shares the disk, so what it may touch is production's folders only.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hello.backup import vault_pull
from hello.base.checkout import CHECKOUT
from hello.base.config import load_config
from hello.base.locks import job_lock
from hello.base.proc import wait_until
from hello.platform.kubernetes import deep_merge
from hello.platform.units import Checkout, check_units, render_units
from tests.support.backups import archives, backup, make_tree
from tests.support.configs import write_config
from tests.support.processes import ProcessRegistry
from tests.support.tools import IN_CI, PYTHON, require_tool
from tests.test_offsite import PASSWORD_FLAGS, CommandLineWatch

SCRIPT = str(CHECKOUT / "backup_script.py")
PROD_IP, VAULT_IP = "10.200.0.1", "10.200.0.2"
PORT = 2222  # in the test's own namespace: no other listener can be there


# --- the two hosts ---


@dataclass(frozen=True)
class Namespaces:
    ip: str
    prod: str
    vault: str

    def run(self, namespace: str, argv: list[str]) -> list[str]:
        return [self.ip, "netns", "exec", namespace, *argv]


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI must be able to make network namespaces: {reason}")
    pytest.skip(f"network namespaces unavailable here ({reason}): the vault tests need root and `ip netns`")


@pytest.fixture(scope="module")
def netns():
    ip = require_tool("ip", "iproute2")
    require_tool("rclone")
    require_tool("ssh-keygen", "openssh-client")
    if os.geteuid() != 0:
        _unavailable("not root")
    token = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"
    spaces = Namespaces(ip, f"hello-prod-{token}", f"hello-vault-{token}")
    veth_prod, veth_vault = f"hp{token}", f"hv{token}"  # 11 characters: interface names stop at 15
    made: list[str] = []

    def ip_do(*args: str) -> None:
        done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")

    try:
        try:
            for name in (spaces.prod, spaces.vault):
                ip_do("netns", "add", name)
                made.append(name)
        except RuntimeError as exc:
            _unavailable(str(exc))
        ip_do("link", "add", veth_prod, "type", "veth", "peer", "name", veth_vault)
        ip_do("link", "set", veth_prod, "netns", spaces.prod)
        ip_do("link", "set", veth_vault, "netns", spaces.vault)
        for name, device, address in ((spaces.prod, veth_prod, PROD_IP), (spaces.vault, veth_vault, VAULT_IP)):
            ip_do("-n", name, "addr", "add", f"{address}/24", "dev", device)
            ip_do("-n", name, "link", "set", "lo", "up")
            ip_do("-n", name, "link", "set", device, "up")
        yield spaces
    finally:
        for name in made:  # the veth pair goes with them
            subprocess.run([ip, "netns", "delete", name], capture_output=True, timeout=30)


@dataclass
class Pair:
    netns: Namespaces
    prod_config: Path
    vault_config: Path
    destination: Path  # production's archives
    store: Path  # the vault's copies
    vault_run: Path
    vault_key: Path
    serve: subprocess.Popen
    secrets: tuple[str, ...]

    def pull(self) -> subprocess.CompletedProcess:
        return self.in_vault([PYTHON, SCRIPT, "pull"], self.vault_config)

    def in_vault(self, argv: list[str], config: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
        env = {**os.environ, "HELLO_CONFIG": str(config or self.vault_config)}
        return subprocess.run(
            self.netns.run(self.netns.vault, argv), env=env, capture_output=True, text=True, timeout=120, cwd=CHECKOUT
        )

    def in_prod(self, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(self.netns.run(self.netns.prod, argv), capture_output=True, text=True, timeout=60)


def keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def key_body(path: Path) -> str:
    """A line of the private key's base64: what would show if the key were ever put on a command line."""
    return [line for line in path.read_text().splitlines() if not line.startswith("-----")][1]


def start_serve(netns: Namespaces, registry: ProcessRegistry, config: Path, log: Path) -> subprocess.Popen:
    # RCLONE_USER/RCLONE_PASS in its environment must not turn password logins on (serve-vault drops them).
    env = {**os.environ, "HELLO_CONFIG": str(config), "RCLONE_USER": "vault", "RCLONE_PASS": "guessable"}
    with open(log, "wb") as out:
        serve = registry.start(
            netns.run(netns.prod, [PYTHON, SCRIPT, "serve-vault"]), env=env, stdout=out, stderr=subprocess.STDOUT
        )

    def ready() -> bool:
        if serve.poll() is not None:
            raise AssertionError(f"serve-vault exited {serve.returncode}: {log.read_text()[-2000:]}")
        return "known_hosts line:" in log.read_text()

    wait_until(ready, 60, "serve-vault listening")
    return serve


@pytest.fixture
def pair(tmp_path: Path, netns: Namespaces, processes: ProcessRegistry) -> Pair:
    prod, vault = tmp_path / "prod", tmp_path / "vault"
    (prod / "src").mkdir(parents=True)
    vault.mkdir()
    make_tree(prod / "src")
    vault_key = keygen(vault / "id_ed25519", "vault")
    prod_config = write_config(
        prod,
        {
            "monitoring": {"pushgateway": {"url": None}},
            "backup": {
                "source": str(prod / "src"),
                "destination": str(prod / "backups"),
                "timezone": "UTC",
                "vault": {"listen": f"{PROD_IP}:{PORT}", "authorized_keys": str(vault_key) + ".pub"},
            },
        },
    )
    for _ in range(2):
        made = backup(prod_config, "create")
        assert made.returncode == 0, made.stderr
    log = prod / "serve.log"
    serve = start_serve(netns, processes, prod_config, log)
    known_hosts = vault / "known_hosts"
    known_hosts.write_text(log.read_text().split("known_hosts line: ", 1)[1].splitlines()[0] + "\n")
    vault_config = write_config(
        vault,
        {
            "monitoring": {"pushgateway": {"url": None}},
            "backup": {
                "timezone": "UTC",
                "vault": {
                    "pull_from": f"{PROD_IP}:{PORT}",
                    "identity": str(vault_key),
                    "known_hosts": str(known_hosts),
                    "store": str(vault / "store"),
                },
            },
        },
    )
    host_key = prod / "run" / "vault" / "ssh_host_ed25519_key"
    return Pair(
        netns, prod_config, vault_config, prod / "backups", vault / "store", vault / "run", vault_key, serve,
        (key_body(vault_key), key_body(host_key), "guessable"),
    )  # fmt: skip


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def vault_metrics(pair: Pair) -> dict[str, float]:
    text = (pair.vault_run / "metrics" / f"{vault_pull.VAULT_JOB}.prom").read_text()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("backup_script.py:")]
    assert len(lines) == 1, stderr
    return lines[0]


# --- a pull ---


def test_a_pull_copies_every_archive_byte_exact_with_its_sidecar_and_drills(pair: Pair) -> None:
    pulled = pair.pull()
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled 2 archive(s)" in pulled.stdout and "drill passed" in pulled.stdout, pulled.stdout
    assert digests(pair.store) == digests(pair.destination), "the vault's copies differ from production's"
    assert len(archives(pair.store)) == 2
    assert oct(pair.store.stat().st_mode & 0o777) == "0o700"
    assert all(p.stat().st_mode & 0o077 == 0 for p in pair.store.iterdir()), "copies readable by others"
    values = vault_metrics(pair)
    newest = archives(pair.store)[-1].name
    stamp = time.strptime(newest.removeprefix("hello-world-").removesuffix(".tar.gz"), "%Y%m%dT%H%M%SZ")
    assert values[f"{vault_pull.VAULT_JOB}_success"] == 1
    assert values[vault_pull.NEWEST_METRIC] == calendar.timegm(stamp)
    again = pair.pull()  # nothing new: nothing copied, no drill
    assert again.returncode == 0 and "pulled 0 archive(s)" in again.stdout, again.stderr
    assert "drill" not in again.stdout
    made = backup(pair.prod_config, "create")  # a new one is listed at once (--dir-cache-time 0s)
    assert made.returncode == 0, made.stderr
    third = pair.pull()
    assert third.returncode == 0 and "pulled 1 archive(s)" in third.stdout, third.stderr
    assert digests(pair.store) == digests(pair.destination)


# --- the attacker: root on production, with everything the kit holds there ---


def test_production_cannot_reach_the_vault_and_holds_no_credential_of_it(pair: Pair, tmp_path: Path) -> None:
    assert pair.pull().returncode == 0
    listening = pair.in_vault(["ss", "-H", "-l", "-t", "-u", "-n"])
    assert listening.returncode == 0 and not listening.stdout.strip(), f"a socket listens in the vault: {listening}"
    probe = (
        "import socket, sys\n"
        "for port in (22, 2222, 8000, 9090, 9091, 9100, 53682):\n"
        "    s = socket.socket(); s.settimeout(3)\n"
        f"    code = s.connect_ex(('{VAULT_IP}', port)); s.close()\n"
        "    print(port, code)\n"
        "    if code == 0: sys.exit(1)\n"
    )
    tried = pair.in_prod([PYTHON, "-c", probe])
    assert tried.returncode == 0, f"production reached the vault: {tried.stdout}{tried.stderr}"
    assert len(tried.stdout.splitlines()) == 7
    private = pair.vault_key.read_bytes()
    for path in (tmp_path / "prod").rglob("*"):
        if path.is_file():
            assert private not in path.read_bytes(), f"production holds the vault's private key: {path}"


def test_an_archive_overwritten_on_production_with_a_matching_sidecar_fails_the_next_pull(pair: Pair) -> None:
    assert pair.pull().returncode == 0
    before = digests(pair.store)
    victim = archives(pair.destination)[0]
    garbage = os.urandom(victim.stat().st_size)  # same size: only the sidecar tells
    victim.write_bytes(garbage)
    victim.with_name(victim.name + ".sha256").write_text(f"{hashlib.sha256(garbage).hexdigest()}  {victim.name}\n")
    refused = pair.pull()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    line = one_line(refused.stderr)
    assert victim.name in line and "changed after the vault pulled it" in line, line
    assert digests(pair.store) == before, "the vault's copy changed"
    assert vault_metrics(pair)[f"{vault_pull.VAULT_JOB}_success"] == 0


def test_an_archive_changed_in_place_keeping_its_sidecar_trips_rclones_immutable_check(pair: Pair) -> None:
    assert pair.pull().returncode == 0
    before = digests(pair.store)
    victim = archives(pair.destination)[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))  # same size, same sidecar, a new time
    os.utime(victim, (time.time() + 5, time.time() + 5))
    refused = pair.pull()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "immutable file modified" in one_line(refused.stderr)
    assert digests(pair.store) == before


def test_a_new_archive_not_matching_its_sidecar_is_refused_and_the_good_ones_kept(pair: Pair) -> None:
    bad = archives(pair.destination)[-1]
    bad.write_bytes(bad.read_bytes() + b"poison")
    refused = pair.pull()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    line = one_line(refused.stderr)
    assert bad.name in line and "does not match its sidecar" in line, line
    assert [p.name for p in archives(pair.store)] == [archives(pair.destination)[0].name]
    assert not (pair.store / bad.name).exists() and not (pair.store / (bad.name + ".sha256")).exists()
    assert not (pair.store / ".incoming").exists()


def test_deleting_on_production_deletes_nothing_in_the_vault(pair: Pair) -> None:
    assert pair.pull().returncode == 0
    before = digests(pair.store)
    for path in pair.destination.iterdir():
        path.unlink()
    after = pair.pull()
    assert after.returncode == 0, after.stderr
    assert "pulled 0 archive(s)" in after.stdout
    assert digests(pair.store) == before


def test_the_vaults_sftp_account_is_read_only_and_takes_no_password(pair: Pair, tmp_path: Path) -> None:
    assert pair.pull().returncode == 0
    before = digests(pair.destination)
    config = pair.vault_run / "vault" / "rclone.conf"  # the vault's own remote: its key, production's pinned key
    evil = tmp_path / "evil.txt"
    evil.write_text("ransom note\n")
    rclone = ["rclone", "--config", str(config), "--retries", "1", "--low-level-retries", "1"]
    written = pair.in_vault([*rclone, "copyto", str(evil), "production:evil.txt"])
    assert written.returncode != 0 and "Read only file system" in written.stderr, written.stderr
    name = archives(pair.destination)[0].name
    deleted = pair.in_vault([*rclone, "deletefile", f"production:{name}"])
    assert deleted.returncode != 0, deleted.stderr
    assert digests(pair.destination) == before
    # A password login (the serve's environment held RCLONE_USER/RCLONE_PASS) is refused: keys only.
    obscured = subprocess.run(
        ["rclone", "obscure", "-"], input="guessable", capture_output=True, text=True, check=True
    ).stdout.strip()
    by_password = tmp_path / "password.conf"
    by_password.write_text(
        f"[pw]\ntype = sftp\nhost = {PROD_IP}\nport = {PORT}\nuser = vault\npass = {obscured}\n"
        f"known_hosts_file = {pair.vault_config.parent / 'known_hosts'}\n"
    )
    listed = pair.in_vault(["rclone", "--config", str(by_password), "--low-level-retries", "1", "lsf", "pw:"])
    assert listed.returncode != 0 and not listed.stdout, listed.stdout


def test_a_host_key_other_than_the_pinned_one_is_refused(pair: Pair, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other", "impostor")
    pinned = pair.vault_config.parent / "known_hosts"
    pinned.write_text(f"[{PROD_IP}]:{PORT} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    refused = pair.pull()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "knownhosts: key mismatch" in one_line(refused.stderr) or "key mismatch" in refused.stderr
    assert not pair.store.exists() or not archives(pair.store)


def test_no_secret_on_any_command_line_while_serving_and_pulling(pair: Pair) -> None:
    serving = [
        Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
        if _session(pid) == pair.serve.pid
    ]
    rclone_serve = [argv for argv in serving if argv[0].endswith(b"rclone")]
    assert rclone_serve and b"--read-only" in rclone_serve[0] and b"--authorized-keys" in rclone_serve[0]
    assert not any(flag in argv for argv in serving for flag in (*PASSWORD_FLAGS, b"--user")), serving
    with CommandLineWatch() as watch:
        run = subprocess.Popen(
            pair.netns.run(pair.netns.vault, [PYTHON, SCRIPT, "pull"]),
            env={**os.environ, "HELLO_CONFIG": str(pair.vault_config)},
            cwd=CHECKOUT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _out, err = run.communicate(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, err
    leaks = watch.leaks(pair.secrets, run.pid)
    assert not leaks, f"a secret on a command line: {leaks}"
    assert watch.rc_passwords.get(run.pid), f"no rclone rcd seen in the pull ({watch.scans} scans)"


def _session(pid: int) -> int | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    return None


def test_serve_vault_stops_cleanly_on_sigterm_with_its_rclone(pair: Pair) -> None:
    children = [
        pid
        for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
        if _parent(pid) == pair.serve.pid
    ]
    assert children, "serve-vault runs no rclone"
    pair.serve.send_signal(signal.SIGTERM)
    assert pair.serve.wait(timeout=30) == 0
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() and _parent(pid) == pair.serve.pid for pid in children),
        15,
        "rclone gone",
    )


def _parent(pid: int) -> int | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


# --- retention and metrics ---


def edit_config(path: Path, backup: dict) -> None:
    """Put these system.backup settings over a test's config file."""
    data = yaml.safe_load(path.read_text())
    data["system"]["backup"] = deep_merge(data["system"]["backup"], backup)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_the_vault_prunes_by_its_own_longer_retention(pair: Pair) -> None:
    production_keep = {"last": 2, "daily": 0, "weekly": 0, "monthly": 0}
    edit_config(pair.prod_config, {"keep": production_keep})
    # The vault's system.backup.keep says production's (the check compares with it); vault.keep is its own.
    edit_config(pair.vault_config, {"keep": production_keep, "vault": {"keep": {"last": 3}, "drill": False}})
    for _ in range(3):
        made = backup(pair.prod_config, "create")
        assert made.returncode == 0, made.stderr
        pulled = pair.pull()
        assert pulled.returncode == 0, pulled.stderr
    on_production = [p.name for p in archives(pair.destination)]
    in_vault = [p.name for p in archives(pair.store)]
    assert len(on_production) == 2 and len(in_vault) == 3, (on_production, in_vault)
    assert in_vault[-2:] == on_production, "the vault lacks an archive production keeps"
    assert sorted(p.name for p in pair.store.iterdir()) == sorted([*in_vault, *(n + ".sha256" for n in in_vault)])
    edit_config(pair.vault_config, {"vault": {"keep": {"last": 2}}})  # as production's: the oldest goes
    again = pair.pull()
    assert again.returncode == 0 and "pulled 0 archive(s)" in again.stdout and "pruned 1" in again.stdout, again


def test_the_pull_pushes_its_metrics_to_the_pushgateway(pair: Pair, processes: ProcessRegistry) -> None:
    binary = require_tool("prometheus-pushgateway")
    listen = "127.0.0.1:9091"  # the vault's own loopback: nothing else listens in its namespace
    processes.start(pair.netns.run(pair.netns.vault, [binary, f"--web.listen-address={listen}"]))
    data = yaml.safe_load(pair.vault_config.read_text())
    data["system"]["monitoring"]["pushgateway"]["url"] = f"http://{listen}"
    pair.vault_config.write_text(yaml.safe_dump(data, sort_keys=False))
    scrape = [
        PYTHON,
        "-c",
        f"import urllib.request; print(urllib.request.urlopen('http://{listen}/metrics').read().decode())",
    ]
    wait_until(lambda: pair.in_vault(scrape).returncode == 0, 30, "the Pushgateway in the vault's namespace")
    pulled = pair.pull()
    assert pulled.returncode == 0, pulled.stderr
    text = pair.in_vault(scrape).stdout
    samples = {(s.name, s.labels.get("job")): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[(f"{vault_pull.VAULT_JOB}_success", vault_pull.VAULT_JOB)] == 1
    assert samples[(vault_pull.NEWEST_METRIC, vault_pull.VAULT_JOB)] == vault_metrics(pair)[vault_pull.NEWEST_METRIC]
    assert samples[(vault_pull.PULLED_METRIC, vault_pull.VAULT_JOB)] == 2


# --- the vault's retention setting ---


def test_the_vault_keeps_what_its_own_retention_says_never_less_than_production(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backup": {"keep": {"last": 2, "daily": 3}, "vault": {"keep": {"daily": 10}}}})
    loaded = load_config(config)
    assert vault_pull.vault_keep(loaded) == {"last": 2, "daily": 10, "weekly": 4, "monthly": 6}


# --- bad settings: exit 2, one line naming the key ---


@pytest.mark.parametrize(
    ("vault", "args", "message"),
    [
        ({"keep": {"daily": 3}}, ("list",), "system.backup.vault.keep.daily: 3 is shorter than production's"),
        ({"keep": {"hourly": 3}}, ("list",), "system.backup.vault.keep: expected null or a mapping of last"),
        ({"keep": {"last": -1}}, ("list",), "system.backup.vault.keep: last: expected a whole number"),
        ({"listen": "nowhere"}, ("list",), "system.backup.vault.listen: expected host:port such as 10.0.0.5:2222"),
        ({"pull_from": 2222}, ("list",), "system.backup.vault.pull_from: expected host:port"),
        ({"interval": "7m"}, ("list",), "system.backup.vault.interval: expected an interval cron can run"),
        ({}, ("pull",), "pull: system.backup.vault.pull_from is null"),
        ({"pull_from": "10.0.0.5:2222"}, ("pull",), "pull: system.backup.vault.identity is null"),
        (
            {"pull_from": "10.0.0.5:2222", "identity": "missing-key", "known_hosts": "kh"},
            ("pull",),
            "system.backup.vault.identity: ",
        ),
        ({}, ("serve-vault",), "serve-vault: system.backup.vault.listen is null"),
        ({"listen": "127.0.0.1:2222"}, ("serve-vault",), "serve-vault: system.backup.vault.authorized_keys is null"),
        (
            {"listen": "127.0.0.1:2222", "authorized_keys": "/dev/null"},
            ("serve-vault",),
            "system.backup.vault.authorized_keys: /dev/null holds no key",
        ),
    ],
)
def test_bad_vault_settings_exit_2_with_one_line_naming_the_key(
    tmp_path: Path, vault: dict, args: tuple[str, ...], message: str
) -> None:
    config = write_config(tmp_path, {"monitoring": {"pushgateway": {"url": None}}, "backup": {"vault": vault}})
    result = backup(config, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr


def test_a_pull_while_another_runs_exits_75(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"monitoring": {"pushgateway": {"url": None}}})
    with job_lock(tmp_path / "run" / "vault-pull.lock"):
        result = backup(config, "pull")
    assert result.returncode == 75 and "another pull holds" in result.stderr, result.stderr


# --- the schedulers ---


def test_a_vault_host_gets_a_cron_line_and_a_sandboxed_timer_for_the_pull(tmp_path: Path) -> None:
    vault = {"pull_from": "10.0.0.5:2222", "identity": "/etc/hello/vault_key", "known_hosts": "/etc/hello/kh"}
    config = write_config(tmp_path, {"backup": {"vault": {**vault, "interval": "2h"}}})
    env = {**os.environ, "HELLO_CONFIG": str(config)}
    cron = subprocess.run([PYTHON, str(CHECKOUT / "scripts" / "cron.py")], env=env, capture_output=True, text=True)
    assert cron.returncode == 0, cron.stderr
    (line,) = [line for line in cron.stdout.splitlines() if "backup_script.py pull" in line]
    assert line.startswith("0 */2 * * * ")
    units = render_units(load_config(config), Checkout.here(), env)
    assert "OnCalendar=*-*-* 00/2:00:00" in units["hello-world-pull.timer"]
    assert "backup_script.py pull" in units["hello-world-pull.service"]
    pull_units = {name: text for name, text in units.items() if name.startswith("hello-world-pull.")}
    if Path("/usr/bin/systemd-analyze").exists():
        assert check_units(pull_units) == []
    plain = write_config(tmp_path / "prod", {})
    assert not any("pull" in name for name in render_units(load_config(plain), Checkout.here(), {}))


def test_production_gets_a_sandboxed_serve_vault_unit_when_listen_is_set(tmp_path: Path) -> None:
    keys = tmp_path / "vault.pub"
    keys.write_text("ssh-ed25519 AAAA vault\n")
    vault = {"listen": "10.0.0.5:2222", "authorized_keys": str(keys)}
    config = load_config(write_config(tmp_path, {"backup": {"vault": vault}}))
    units = render_units(config, Checkout.here(), {})
    text = units["hello-world-serve-vault.service"]
    assert "backup_script.py serve-vault" in text and "KillSignal=SIGTERM" in text
    assert "WantedBy=multi-user.target" in text  # make systemd-install enables it
    if Path("/usr/bin/systemd-analyze").exists():
        assert check_units({"hello-world-serve-vault.service": text}) == []
    assert "hello-world-serve-vault.service" not in render_units(
        load_config(write_config(tmp_path / "p", {})), Checkout.here(), {}
    )
