"""Production's side of the vault: the archives served read-only over SFTP to the vault's key, and nothing else.

    serve(config)      # foreground until SIGTERM/SIGINT (backup_script.py serve-vault, make serve-vault, a unit)

`rclone serve sftp <destination> --read-only --dir-cache-time 0s --addr <listen> --authorized-keys <file>
--key <host key>`: the vault pulls (hello/backup/vault_pull.py); production holds no credential of the vault at all.
Key authentication only: every RCLONE_* variable is dropped from rclone's environment (RCLONE_USER/RCLONE_PASS
would turn password logins on) and no password is ever given. --dir-cache-time 0s: a new archive is listed at
once (rclone caches listings for 5 minutes otherwise). --authorized-keys is always named (without it rclone reads
root's own ~/.ssh/authorized_keys). The host key is the kit's own, made with ssh-keygen on the first start in the
private <run_dir>/vault/; the vault pins it in its known_hosts (the line is printed at each start).
rclone dies with this process (PR_SET_PDEATHSIG); SIGTERM stops it and returns 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from hello.backup.naming import BackupError, UsageError
from hello.backup.rclone import RCLONE
from hello.base.files import private_dir
from hello.base.proc import die_with_parent

log = logging.getLogger("vault")

SSH_KEYGEN = "ssh-keygen"
HOST_KEY = "ssh_host_ed25519_key"
START_TIMEOUT = 30.0
LISTENING = "SFTP server listening on"  # rclone 1.60's NOTICE once the socket is bound
STOP_TIMEOUT = 10.0


def vault_dir(config: dict[str, Any]) -> Path:
    """<run_dir>/vault: the kit's private vault state (host key here, the rclone config on a vault)."""
    return private_dir(Path(config["run_dir"]) / "vault")


def host_key(config: dict[str, Any]) -> Path:
    """The SFTP host key (ed25519), made on first use; its public half beside it (.pub)."""
    key = vault_dir(config) / HOST_KEY
    if not key.exists():
        keygen = shutil.which(SSH_KEYGEN)
        if keygen is None:
            raise BackupError("ssh-keygen is not installed (Debian package openssh-client): it makes the host key")
        # -N '': the host key has no passphrase (as sshd's own); it never leaves the 0700 folder.
        done = subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "hello-world serve-vault", "-f", str(key)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise BackupError(f"ssh-keygen failed making {key}: {done.stderr.strip()[-300:]}")
    return key


def known_hosts_line(config: dict[str, Any], key: Path) -> str:
    """The line the vault's known_hosts needs to pin this host's key at the listen address."""
    host, port = config["backup"]["vault"]["listen"].rsplit(":", 1)
    algorithm, blob = key.with_name(key.name + ".pub").read_text().split()[:2]
    return f"[{host.strip('[]')}]:{port} {algorithm} {blob}"


def check_settings(config: dict[str, Any]) -> tuple[str, Path, Path]:
    """(listen, authorized keys file, destination) or UsageError naming the key to set."""
    vault = config["backup"]["vault"]
    if vault["listen"] is None:
        raise UsageError("serve-vault: system.backup.vault.listen is null: set the host:port the vault pulls from")
    if vault["authorized_keys"] is None:
        raise UsageError("serve-vault: system.backup.vault.authorized_keys is null: name the vault's public key file")
    keys = Path(vault["authorized_keys"])
    try:
        lines = [line for line in keys.read_text().splitlines() if line.strip() and not line.startswith("#")]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"system.backup.vault.authorized_keys: cannot read {keys}: {exc}") from None
    if not lines:
        raise UsageError(f"system.backup.vault.authorized_keys: {keys} holds no key: add the vault's public key")
    destination = Path(config["backup"]["destination"])
    if not destination.is_dir():
        raise UsageError(f"serve-vault: system.backup.destination {destination} is not a folder (no backup yet?)")
    return vault["listen"], keys, destination


def serve_command(listen: str, keys: Path, key: Path, destination: Path) -> list[str]:
    # --config /dev/null: no remote of root's rclone.conf is reachable through the server.
    return [
        RCLONE, "serve", "sftp", str(destination), "--read-only", "--dir-cache-time", "0s", "--addr", listen,
        "--authorized-keys", str(keys), "--key", str(key), "--config", "/dev/null", "--log-level", "NOTICE",
    ]  # fmt: skip


def serve(config: dict[str, Any]) -> int:
    """Serve the archives until SIGTERM or SIGINT; 0 on a clean stop, BackupError when rclone fails."""
    listen, keys, destination = check_settings(config)
    key = host_key(config)
    env = {name: value for name, value in os.environ.items() if not name.startswith("RCLONE_")}
    stop = {"asked": False}

    def asked_to_stop(signum: int, _frame: object) -> None:
        stop["asked"] = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, asked_to_stop)
    with tempfile.TemporaryFile() as output:
        try:
            server = subprocess.Popen(
                serve_command(listen, keys, key, destination),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env=env,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only prctl runs before exec
            )
        except FileNotFoundError:
            raise BackupError("rclone is not installed (Debian package rclone)") from None
        try:
            _wait_listening(server, output)
            print(f"serving {destination} read-only over SFTP on {listen} to the keys in {keys}", flush=True)
            print(f"  the vault's known_hosts line: {known_hosts_line(config, key)}", flush=True)
            while not stop["asked"] and server.poll() is None:
                time.sleep(0.2)
        finally:
            _stop(server)
        if not stop["asked"]:
            raise BackupError(f"rclone serve sftp exited ({server.returncode}): {_last_line(output)}")
    print("serve-vault: stopped", flush=True)
    return 0


def _wait_listening(server: subprocess.Popen, output: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        output.seek(0)
        text = output.read().decode(errors="replace")
        if LISTENING in text:
            return
        if server.poll() is not None or time.monotonic() > deadline:
            raise BackupError(f"rclone serve sftp did not start: {_last_line(output)}")
        time.sleep(0.05)


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _last_line(output: Any) -> str:
    output.seek(0)
    lines = [line for line in output.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "no message"
