"""The programs the tests run: this interpreter (PYTHON) and the tools a test needs (require_tool).

A missing tool skips its test loudly, except in CI (IN_CI), which must install every one.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

PYTHON = sys.executable
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str, package: str | None = None) -> str:
    """The path of a program the test needs: skip loudly without it, but fail in CI, which must install it.
    The sbin folders too: cron's bare PATH (/usr/bin:/bin) leaves out where runuser and debootstrap live."""
    path = shutil.which(name, path=f"{os.environ.get('PATH', os.defpath)}:/usr/sbin:/sbin")
    if path:
        return path
    reason = f"{name} is not installed (Debian package {package or name}); .ci/run installs it"
    if IN_CI:
        pytest.fail(f"CI must have {reason}")
    pytest.skip(reason)
