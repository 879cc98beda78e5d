"""The house rules of docs/architecture.md, checked on the source: arrows point one way, commands stay thin.

Each rule reads the import statements (ast) of every Python file in the checkout, so a new module that breaks one
fails here with the file and the import that does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hello.base.checkout import CHECKOUT

pytestmark = pytest.mark.fast  # the in-process tier (make test-fast)

CONCEPTS = ("server", "backup", "update", "monitoring", "platform", "validation")
# The deliberate seams between concepts (docs/architecture.md says why each exists).
SEAMS = {
    ("platform", "monitoring"),  # the systemd units run the monitoring stack's own services
    ("update", "platform"),  # the kubernetes deploy mode changes the Deployment that platform renders
}
VALIDATION_MAY_IMPORT = set(CONCEPTS)  # validation checks every concept on the live system
COMMANDS = ("hello_world", "backup_script", "update_protocol", "validation_test")
MAX_COMMAND_LINES = 250


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (CHECKOUT / folder).rglob("*.py"))


def imported_modules(path: Path) -> list[str]:
    """Every module path imports (absolute imports only; the kit uses no relative ones)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def package_of(path: Path) -> str:
    return path.relative_to(CHECKOUT / "hello").parts[0]


def test_the_base_imports_no_concept_package() -> None:
    wrong = [
        f"{path.relative_to(CHECKOUT)}: {module}"
        for path in python_files("hello/base")
        for module in imported_modules(path)
        if module.startswith("hello.") and module.split(".")[1] != "base"
    ]
    assert not wrong, wrong


def test_concept_packages_import_only_the_base_and_the_documented_seams() -> None:
    wrong = []
    for path in python_files(*(f"hello/{concept}" for concept in CONCEPTS if (CHECKOUT / "hello" / concept).is_dir())):
        own = package_of(path)
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] != "hello" or len(parts) < 2 or parts[1] in ("base", own) or parts[1] not in CONCEPTS:
                continue
            if (own, parts[1]) in SEAMS or (own == "validation" and parts[1] in VALIDATION_MAY_IMPORT):
                continue
            wrong.append(f"{path.relative_to(CHECKOUT)}: {module}")
    assert not wrong, wrong


def test_no_command_imports_a_command_and_the_product_imports_no_test_code() -> None:
    """Benchmarks (scripts/bench_*) may use tests/support: they are measurements, not the product."""
    wrong = [
        f"{path.relative_to(CHECKOUT)}: {module}"
        for path in [*python_files("hello", "scripts"), *(CHECKOUT / f"{name}.py" for name in COMMANDS)]
        for module in imported_modules(path)
        if module.split(".")[0] in (*COMMANDS, "scripts", "conftest")
        or (module.split(".")[0] == "tests" and not path.name.startswith("bench_"))
    ]
    assert not wrong, wrong


def test_the_tests_import_no_command_or_benchmark_script() -> None:
    wrong = [
        f"{path.relative_to(CHECKOUT)}: {module}"
        for path in [*python_files("tests"), CHECKOUT / "test_hello_world.py", CHECKOUT / "conftest.py"]
        for module in imported_modules(path)
        if module.split(".")[0] in (*COMMANDS, "scripts") or module == "conftest"
    ]
    assert not wrong, wrong


SYS_PATH_EDITS = tuple(f"sys.path.{edit}" for edit in ("insert", "append"))  # spelled so: this file edits none


def test_no_module_edits_sys_path() -> None:
    """Code in strings too: the child scripts a test runs start in the checkout, or have PYTHONPATH set."""
    wrong = [
        str(path.relative_to(CHECKOUT))
        for path in [*python_files("hello", "scripts", "tests"), *CHECKOUT.glob("*.py")]
        if any(edit in path.read_text(encoding="utf-8") for edit in SYS_PATH_EDITS)
    ]
    assert not wrong, wrong


@pytest.mark.parametrize("command", COMMANDS)
def test_the_commands_of_the_design_card_are_thin(command: str) -> None:
    lines = len((CHECKOUT / f"{command}.py").read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_COMMAND_LINES, f"{command}.py has {lines} lines: move what is not the command into hello/"
