"""Hostile config files (issue 9): what tests/test_config_limits.py refuses and scripts/bench_config.py times."""

from __future__ import annotations


def alias_bomb() -> str:
    """496 bytes: ten levels of nine aliases under system.server.port (9**10 strings once expanded)."""
    lines = ["system:", "  server:", "    port:", '    - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghij"
    lines += [f"    - &{cur} [{','.join(['*' + prev] * 9)}]" for prev, cur in zip(names, names[1:], strict=False)]
    text = "\n".join(lines) + "\n"
    return "# " + "x" * (496 - len(text) - 3) + "\n" + text
