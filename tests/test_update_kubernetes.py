"""update_protocol.py with `system.update.deploy: kubernetes`, against real git and a real server.

No cluster runs here: tests/bin/kubectl stands in for kubectl (a Deployment with revisions; `rollout
status` reloads the real local server of the scratch deployment, as new pods would serve the new commit;
`port-forward` relays to that server) and tests/bin/docker for the image build and push. The deployment
is tests/support/scratch.py's ScratchDeployment, as in tests/test_update.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from hello.base.http_client import http_request
from hello.base.proc import free_port
from tests.support.deployment import assert_step, consistent, shown
from tests.support.fake_docker import STAND_INS
from tests.support.processes import ProcessRegistry
from tests.support.scratch import ScratchDeployment
from tests.support.tools import PYTHON

REGISTRY = "registry.test/team"
KUBE = {"registry": REGISTRY, "context": "kind-test", "namespace": "hello-ns", "rollout_timeout": "2m"}
SCOPE = ["--context", "kind-test", "--namespace", "hello-ns"]
START_REVISION = 4


@pytest.fixture
def site(deployment: tuple[ScratchDeployment, ProcessRegistry], tmp_path: Path) -> ScratchDeployment:
    """The deployment at its served commit, and a Deployment whose image is that commit's, at START_REVISION."""
    site, served = deployment[0], consistent(deployment)
    image = f"{REGISTRY}/hello-world:{served}"
    history = {str(n): f"{REGISTRY}/hello-world:old{n}" for n in range(1, START_REVISION)} | {
        str(START_REVISION): image
    }
    (tmp_path / "kubectl.json").write_text(json.dumps({"image": image, "revision": START_REVISION, "history": history}))
    return site


def kube_env(
    site: ScratchDeployment, tmp_path: Path, update: dict[str, Any] | None = None, **extra: str
) -> dict[str, str]:
    update = {"deploy": "kubernetes", **(update or {})}
    config = site.write_config(tmp_path / "kube.yaml", {"update": update, "kubernetes": KUBE})
    return {
        "HELLO_CONFIG": str(config),
        "PATH": f"{STAND_INS}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_KUBECTL_LOG": str(tmp_path / "kubectl.log"),
        "FAKE_KUBECTL_STATE": str(tmp_path / "kubectl.json"),
        "FAKE_KUBECTL_TARGET": f"127.0.0.1:{site.port}",
        "FAKE_KUBECTL_RELOAD": "1",
        "FAKE_KUBECTL_PYTHON": PYTHON,
        "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
        "FAKE_DOCKER_STATE": str(tmp_path / "docker.json"),
        **extra,
    }


def calls(tmp_path: Path, tool: str) -> list[list[str]]:
    path = tmp_path / f"{tool}.log"
    return [entry["argv"] for entry in map(json.loads, path.read_text().splitlines())] if path.exists() else []


def kubectl_calls(tmp_path: Path) -> list[tuple[str, ...]]:
    """Each kubectl call without its scope flags, which every call must carry."""
    out = []
    for argv in calls(tmp_path, "kubectl"):
        assert argv[:4] == SCOPE, argv
        out.append(tuple(argv[4:]))
    return out


def state(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "kubectl.json").read_text())


def last_log(site: ScratchDeployment) -> dict:
    return json.loads((site.run_dir / "update.log").read_text().splitlines()[-1])


GET = ("get", "deployment/hello-world", "--output", "json")
FORWARD = ("port-forward", "service/hello-world", ":80")
STATUS = ("rollout", "status", "deployment/hello-world", "--timeout=120s")


def test_update_builds_pushes_sets_the_image_and_verifies_through_the_service(
    site: ScratchDeployment, tmp_path: Path
) -> None:
    commit = site.harmless_commit("kubernetes")
    result = site.update(env=kube_env(site, tmp_path))
    assert result.returncode == 0, shown(result)
    for name in ("preflight", "fetch", "test", "build", "deploy", "verify", "record"):
        assert_step(result, name)
    image = f"{REGISTRY}/hello-world:{commit}"
    assert calls(tmp_path, "docker") == [
        ["build", "--build-arg", f"COMMIT={commit}", "--tag", image, str(site.deploy)],
        ["push", image],
    ]
    assert kubectl_calls(tmp_path) == [
        FORWARD,  # preflight: the serving commit, the rollback point
        GET,
        ("set", "image", "deployment/hello-world", f"hello-world={image}"),
        STATUS,
        FORWARD,  # verify
    ]
    assert state(tmp_path)["image"] == image and state(tmp_path)["revision"] == START_REVISION + 1
    assert site.served() == commit == site.head()
    assert last_log(site)["outcome"] == "updated"


def test_failed_rollout_ends_in_rollout_undo_and_a_verified_old_commit(site: ScratchDeployment, tmp_path: Path) -> None:
    served = site.served()
    commit = site.harmless_commit("kubernetes, rollout fails")
    result = site.update(env=kube_env(site, tmp_path, FAKE_KUBECTL_FAIL_ROLLOUT=commit))
    assert result.returncode == 1, shown(result)
    assert_step(result, "deploy", "FAILED")
    assert "exceeded its progress deadline" in result.stdout
    assert_step(result, "rollback")
    assert kubectl_calls(tmp_path)[2:] == [
        ("set", "image", "deployment/hello-world", f"hello-world={REGISTRY}/hello-world:{commit}"),
        STATUS,  # fails
        ("rollout", "undo", "deployment/hello-world", f"--to-revision={START_REVISION}"),
        STATUS,
        FORWARD,  # the old commit verified through the Service
    ]
    assert state(tmp_path)["image"] == f"{REGISTRY}/hello-world:{served}"
    assert site.served() == served == site.head()
    assert last_log(site)["outcome"] == "rolled-back"


def test_failed_verify_is_undone_and_the_old_commit_verified(site: ScratchDeployment, tmp_path: Path) -> None:
    served = site.served()
    greeting = "hello/server/routes.py"
    text = (site.deploy / greeting).read_text()
    assert "Hello, World!" in text, f"the test needs the greeting literal in {greeting}"
    site.commit("kubernetes: a different greeting", {greeting: text.replace("Hello, World!", "Goodbye!")})
    result = site.update(env=kube_env(site, tmp_path))
    assert result.returncode == 1, shown(result)
    assert_step(result, "deploy")
    assert_step(result, "verify", "FAILED")
    assert "validation_test.py --only service exited 1" in result.stdout
    assert_step(result, "rollback")
    assert kubectl_calls(tmp_path)[-3:] == [
        ("rollout", "undo", "deployment/hello-world", f"--to-revision={START_REVISION}"),
        STATUS,
        FORWARD,
    ]
    assert site.served() == served == site.head()
    assert http_request(site.url + "/")[2] == b"Hello, World!\n"


def test_dry_run_changes_nothing_in_the_cluster(site: ScratchDeployment, tmp_path: Path) -> None:
    site.harmless_commit("kubernetes, dry run")
    before = state(tmp_path)
    result = site.update("--dry-run", env=kube_env(site, tmp_path, update={"watch": "3s"}))
    assert result.returncode == 0, shown(result)
    assert "kubectl set image deployment/hello-world" in result.stdout
    assert re.search(r"^  watch\s+skipped \(deploy: kubernetes\)$", result.stdout, re.M), shown(result)
    assert kubectl_calls(tmp_path) == [FORWARD]
    assert calls(tmp_path, "docker") == []
    assert state(tmp_path) == before


def test_unreachable_service_is_refused_before_anything_changes(site: ScratchDeployment, tmp_path: Path) -> None:
    head = site.head()
    site.harmless_commit("kubernetes, no cluster")
    result = site.update(env=kube_env(site, tmp_path, FAKE_KUBECTL_TARGET=f"127.0.0.1:{free_port()}"))
    assert result.returncode == 1, shown(result)
    assert_step(result, "preflight", "FAILED")
    assert "nothing to roll back to" in result.stdout
    assert kubectl_calls(tmp_path) == [FORWARD]
    assert site.head() == head


def test_kubernetes_mode_without_a_registry_is_a_config_error(site: ScratchDeployment, tmp_path: Path) -> None:
    env = kube_env(site, tmp_path)
    config = site.write_config(tmp_path / "no-registry.yaml", {"update": {"deploy": "kubernetes"}})
    result = site.update(env={**env, "HELLO_CONFIG": str(config)})
    assert result.returncode == 2, shown(result)
    assert "system.kubernetes.registry: expected the registry" in result.stderr
    assert calls(tmp_path, "kubectl") == []
