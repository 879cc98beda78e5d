"""Helpers the tests (and the benchmarks, which are test-side tools) share: `from tests.support.x import y`.

scratch.py     ScratchDeployment (a remote, a serving clone, a clone to push from) and Load, no pytest needed
deployment.py  a ScratchDeployment serving for a test module, and reset to a consistent state for each test
backups.py     a source tree with every case that matters, snapshots of trees, backup_script.py runs, archives
load.py        LoadClient threads on / and the server's /metrics samples
"""
