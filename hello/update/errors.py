"""What a step of the update may raise, and how update_protocol.py tells them apart (its exit code and outcome).

UpdateError        a step failed (str(): the reason, one line); Report.step prints it as the step's FAILED line
Refused            ... before anything changed (outcome "refused")
Locked             another live update holds the lock (exit 75)
RollbackFailed     the rollback itself failed: the deployment needs a human
"""

from __future__ import annotations

from hello.base.git import GitError
from hello.update.child_scripts import ScriptFailed
from hello.update.deploy import DeployError


class UpdateError(Exception):
    """A step failed; str() is the reason, one line."""


class Refused(UpdateError):
    """The update was refused before anything changed."""


class Locked(UpdateError):
    """Another live update holds the lock."""


class RollbackFailed(UpdateError):
    """The rollback itself failed: the deployment needs a human."""


# What a step may raise: its own UpdateError, or the one-line error of the module it called.
FAILURES = (UpdateError, GitError, DeployError, ScriptFailed)
