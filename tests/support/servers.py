"""HelloServer: a real `python hello_world.py` on a free port with its own config and run dir (the `hello_server`
fixture's)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hello.base.checkout import CHECKOUT
from hello.base.http_client import http_request
from hello.base.proc import free_port, wait_until
from hello.platform.kubernetes import deep_merge
from tests.support.configs import write_config
from tests.support.processes import ProcessRegistry
from tests.support.tools import PYTHON


class HelloServer:
    """A real `python hello_world.py` in the foreground, on a free port, with its own config and run dir."""

    def __init__(self, registry: ProcessRegistry, directory: Path, workers: int = 1, overrides: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server = {"host": "127.0.0.1", "port": self.port, "workers": workers}
        self.config_path = write_config(directory, deep_merge({"server": server}, overrides or {}))
        self.env = {**os.environ, "HELLO_CONFIG": str(self.config_path)}
        self.log_path = directory / "server.log"
        self.start(registry)

    def start(self, registry: ProcessRegistry) -> None:
        """Start the server on its port and config (again, after a stop), its output appended to its log."""
        with open(self.log_path, "ab") as log:
            self.proc = registry.start(
                [PYTHON, str(CHECKOUT / "hello_world.py")],
                cwd=CHECKOUT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log()}")
            return http_request(self.url + "/readyz", timeout=1)[0] == 200

        wait_until(ready, timeout, f"{self.url}/readyz")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]
