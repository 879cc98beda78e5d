"""`system.update.deploy: kubernetes`: the build, deploy, verify and rollback steps of update_protocol.py
against the Deployment of deploy/kubernetes.

    kube = KubernetesDeploy(config, repo)  # the methods of hello/update/deploy.py's deploy modes
    kube.serving_commit()            # /version through `kubectl port-forward service/hello-world`
    kube.build(old, commit)          # docker|podman build --build-arg COMMIT=<commit> --tag <image>; push
                                     # (<image> is <system.kubernetes.registry>/hello-world:<commit>)
    kube.deploy(commit)              # kubectl set image deployment/hello-world hello-world=<image>;
                                     # kubectl rollout status --timeout=<system.kubernetes.rollout_timeout>
    kube.verify(commit, validate)    # through a port-forward: /version is commit, /readyz 200, validate(config)
    kube.rollback(commit, validate)  # kubectl rollout undo --to-revision=<the revision before deploy>, status, verify

Every kubectl call carries --namespace (system.kubernetes.namespace) and --context when one is set; the
kubectl and the build tool are the host's (first on PATH; docker before podman). A failure raises
hello.update.deploy.DeployError with one line. The rollback undoes only what deploy changed: nothing when
`set image` never ran, and back to the exact revision recorded before it (a plain `rollout undo` after a failed second
attempt would go one revision too far).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from hello.base.config import ConfigError
from hello.base.git import short
from hello.platform.kubernetes import APP, SERVICE_PORT
from hello.update.deploy import DeployError, Probe, Validate, run_tool

log = logging.getLogger("update_protocol")

BUILD_TIMEOUT = 1800.0  # an image build from scratch, dependencies included
KUBECTL_TIMEOUT = 60.0  # one kubectl call that does not wait on the cluster
FORWARD_WAIT = 20.0  # how long `kubectl port-forward` may take to say which port it listens on
VERSION_WAIT = 30.0  # after a rollout, how long the Service may take to answer with the new commit
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
FORWARDING_RE = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")


def check_config(config: dict[str, Any]) -> None:
    """ConfigError (exit 2) when deploy is kubernetes and system.kubernetes lacks what it needs."""
    if config["update"]["deploy"] == "kubernetes" and not config["kubernetes"]["registry"]:
        shown = os.path.relpath(config["config_file"])
        raise ConfigError(
            f"{shown}: system.kubernetes.registry: expected the registry the cluster pulls from "
            "(e.g. registry.example.com/team) when system.update.deploy is kubernetes, got null"
        )


class ForwardedProbe(Probe):
    """The Service's /version and /readyz through a port-forward: messages name the Service, not the port."""

    def where(self) -> str:
        return f"service/{APP} "

    def unanswered(self, exc: Exception) -> str:
        return f"service/{APP} does not answer /version through the port-forward ({exc})"

    def not_a_commit(self, status: int, commit: object) -> str:
        return f"service/{APP} /version answered {status} with commit {commit!r}"

    def other_commit(self, now: str, commit: str) -> str:
        return f"service/{APP} serves {short(now)}, expected {short(commit)}"


class KubernetesDeploy:
    """The cluster side of one update run: what it changed, so that the rollback undoes exactly that."""

    mode = "kubernetes"
    watched = False  # several pods behind a Service: one /metrics is not the new code's whole

    def __init__(self, config: dict[str, Any], repo: Path) -> None:
        self.config, self.repo = config, repo
        settings = config["kubernetes"]
        self.registry = (settings["registry"] or "").rstrip("/")
        self.rollout_timeout = settings["rollout_timeout"]
        self.scope = ["--namespace", settings["namespace"]]
        if settings["context"]:
            self.scope = ["--context", settings["context"], *self.scope]
        self.timeout = config["validation"]["timeout"]
        self.revision_before: str | None = None  # set once `set image` ran: what the rollback returns to

    def image(self, commit: str) -> str:
        return f"{self.registry}/{APP}:{commit}"

    # --- running the tools ---

    def run(self, argv: list[str], timeout: float) -> str:
        return run_tool(argv, self.repo, timeout, "kubernetes")

    def kubectl(self, *args: str, timeout: float = KUBECTL_TIMEOUT) -> str:
        return self.run(["kubectl", *self.scope, *args], timeout)

    def builder(self) -> str:
        for tool in ("docker", "podman"):
            if shutil.which(tool):
                return tool
        raise DeployError("neither docker nor podman is installed: cannot build the image")

    # --- the cluster's state ---

    def deployment(self) -> dict[str, Any]:
        text = self.kubectl("get", f"deployment/{APP}", "--output", "json")
        try:
            return json.loads(text)
        except ValueError:
            raise DeployError(f"kubectl get deployment/{APP} printed no JSON: {text[:100]!r}") from None

    def current(self) -> tuple[str, str]:
        """(revision, image of the hello-world container) of the Deployment now."""
        deployment = self.deployment()
        revision = str((deployment.get("metadata", {}).get("annotations") or {}).get(REVISION_ANNOTATION, ""))
        containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        image = next((c.get("image", "") for c in containers if c.get("name") == APP), "")
        if not image:
            raise DeployError(f"deployment/{APP} has no container named {APP}")
        return revision, image

    @contextlib.contextmanager
    def forward(self) -> Iterator[str]:
        """`kubectl port-forward service/hello-world :80` for the block: the local URL of the Service."""
        argv = ["kubectl", *self.scope, "port-forward", f"service/{APP}", f":{SERVICE_PORT}"]
        try:
            proc = subprocess.Popen(
                argv, cwd=self.repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
        except FileNotFoundError:
            raise DeployError("kubectl is not installed (system.update.deploy is kubernetes)") from None
        try:
            yield f"http://127.0.0.1:{self._forwarded_port(proc)}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()

    def _forwarded_port(self, proc: subprocess.Popen) -> int:
        deadline = time.monotonic() + FORWARD_WAIT
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else ""
            match = FORWARDING_RE.search(line)
            if match:
                return int(match.group(1))
            if ready and not line:  # end of output: it exited
                why = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
                raise DeployError(f"kubectl port-forward service/{APP} failed: {why[-1] if why else 'no output'}")
        raise DeployError(f"kubectl port-forward service/{APP} named no local port within {FORWARD_WAIT:g}s")

    def serving_commit(self) -> str:
        with self.forward() as url:
            return ForwardedProbe(url, self.timeout).version()

    # --- the steps ---

    def plan(self, old: str, new: str) -> tuple[str, str]:
        build = f"docker (or podman) build --build-arg COMMIT=... and push {self.image(short(new))}..."
        return build, "kubectl set image deployment/hello-world; kubectl rollout status (failure: rollout undo)"

    def build(self, old: str, new: str) -> tuple[str, str]:
        tool, image = self.builder(), self.image(new)
        self.run([tool, "build", "--build-arg", f"COMMIT={new}", "--tag", image, str(self.repo)], BUILD_TIMEOUT)
        self.run([tool, "push", image], BUILD_TIMEOUT)
        return "ok", f"{tool}: built and pushed {image}"

    def deploy(self, commit: str) -> str:
        revision, image = self.current()
        new = self.image(commit)
        self.revision_before = revision
        if image == new:  # --force of the serving commit: set image would change nothing
            self.kubectl("rollout", "restart", f"deployment/{APP}")
            how = "rollout restart"
        else:
            self.kubectl("set", "image", f"deployment/{APP}", f"{APP}={new}")
            how = f"set image {new}"
        self.wait_rollout()
        return f"deployment/{APP}: {how} (from revision {revision}), rolled out"

    def wait_rollout(self) -> None:
        limit = self.rollout_timeout
        self.kubectl("rollout", "status", f"deployment/{APP}", f"--timeout={limit:g}s", timeout=limit + KUBECTL_TIMEOUT)

    def verify(self, commit: str, validate: Validate) -> str:
        """Through the Service: /version reports commit, /readyz is 200, then validate(a config naming it)."""
        with self.forward() as url:
            ForwardedProbe(url, self.timeout).wait_for(commit, VERSION_WAIT, 0.2)
            with tempfile.TemporaryDirectory(prefix="hello-k8s-verify-") as tmp:
                validate(self.forwarded_config(url, Path(tmp)))
        return f"service/{APP} serves {commit[:10]}, /readyz 200, validation_test.py --only service passed"

    def restore_dependencies(self, new: str, old: str) -> str:
        return ""  # the build changed nothing on this host

    def forwarded_config(self, url: str, directory: Path) -> Path:
        """The update's config file with system.server at the port-forward and a scratch run_dir."""
        data = yaml.safe_load(Path(self.config["config_file"]).read_text(encoding="utf-8")) or {}
        system = data.setdefault("system", {})
        port = int(url.rsplit(":", 1)[1])
        system["server"] = {**(system.get("server") or {}), "host": "127.0.0.1", "port": port}
        system["run_dir"] = str(directory / "run")
        path = directory / "config.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def rollback(self, commit: str, validate: Validate) -> str:
        """Undo what deploy changed (if anything), wait for it, and verify that commit serves again."""
        done = []
        if self.revision_before is not None:
            to = [f"--to-revision={self.revision_before}"] if self.revision_before else []  # "" : the previous one
            self.kubectl("rollout", "undo", f"deployment/{APP}", *to)
            self.wait_rollout()
            done.append(f"rollout undo to revision {self.revision_before or '(previous)'}")
        else:
            done.append("the Deployment was not changed")
        done.append(self.verify(commit, validate))
        return "; ".join(done)
