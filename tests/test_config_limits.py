"""Config files cannot exhaust memory or time (issue 9, part 5): too large, aliases expanding too far,
recursive aliases and deep nesting are refused with one line and exit 2. Time and peak RSS: scripts/bench_config.py.
"""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hello.base.checkout import CHECKOUT
from hello.base.config import MAX_CONFIG_BYTES, MAX_YAML_VALUES, ConfigError, load_config
from tests.support.hostile_configs import alias_bomb
from tests.support.tools import PYTHON

pytestmark = pytest.mark.fast  # the in-process tier (make test-fast)

MEMORY_CAP = 200 << 20  # address space of the checking process: a bomb that expands fails loudly instead


def check_capped(path: str) -> subprocess.CompletedProcess:
    """python -m hello.base.config PATH under MEMORY_CAP, as a script run from cron would meet the file."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    return subprocess.run(
        [PYTHON, "-m", "hello.base.config", path],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=cap,
    )


def refused(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr[-500:]
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr[-500:]
    for text in expected:
        assert text in result.stderr, result.stderr


def test_the_issues_alias_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "config.yaml"
    bomb.write_text(alias_bomb())
    assert len(bomb.read_bytes()) == 496
    refused(check_capped(str(bomb)), "config.yaml", f"more than {MAX_YAML_VALUES} YAML values", "alias bomb")


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("too large", "system: {}\n" + "#" * MAX_CONFIG_BYTES, f"larger than {MAX_CONFIG_BYTES >> 10} KiB"),
        ("deep nesting", "system:\n  server:\n    port: " + "[" * 5000 + "]" * 5000 + "\n", "nesting depth"),
        ("recursive alias", "system:\n  backup:\n    exclude: &a [x, *a]\n", "refers to the value that contains it"),
    ],
)
def test_hostile_files_are_refused_with_one_line(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    refused(check_capped(str(path)), expected)


def test_an_endless_file_is_refused(tmp_path: Path) -> None:
    refused(check_capped("/dev/zero"), "/dev/zero", "larger than")


@settings(max_examples=60, deadline=None, database=None)
@given(
    width=st.integers(min_value=2, max_value=12),
    depth=st.integers(min_value=2, max_value=12),
    where=st.sampled_from(["server.port", "server.host", "backup.exclude", "backup.keep.daily", "update.branch"]),
    mappings=st.booleans(),
)
def test_alias_bombs_of_any_shape_are_refused(tmp_path_factory, width, depth, where, mappings) -> None:
    """Lists (or mappings) of aliases of aliases, under keys the schema knows: refused as soon as they
    expand past MAX_YAML_VALUES, whatever the shape, and never built."""
    if mappings:
        levels = ["&l0 {a: 1, b: 2}"]
        levels += [f"&l{i} {{{', '.join(f'k{j}: *l{i - 1}' for j in range(width))}}}" for i in range(1, depth)]
    else:
        levels = [f"&l0 [{', '.join(['x'] * width)}]"]
        levels += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    *parents, key = ["system", *where.split(".")]
    lines = [f"{'  ' * level}{name}:" for level, name in enumerate(parents)]
    lines.append(f"{'  ' * len(parents)}{key}: [{', '.join(levels)}]")
    path = tmp_path_factory.mktemp("bomb") / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    # the values the top list stands for: each level's node, its keys (mappings) and what they alias
    size = 5 if mappings else 1 + width  # {a: 1, b: 2}: the mapping, two keys, two values
    expanded = 1 + size
    for _ in range(1, depth):
        size = 1 + width * (size + (1 if mappings else 0))
        expanded += size
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    if expanded > MAX_YAML_VALUES:
        assert "alias bomb" in message, message


def test_the_shipped_config_is_far_below_the_limits() -> None:
    shipped = CHECKOUT / "config.yaml"
    assert os.path.getsize(shipped) * 8 < MAX_CONFIG_BYTES
    assert load_config(shipped)["server"]["port"] == 8000
