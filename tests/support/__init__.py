"""Helpers the tests (and the benchmarks, which are test-side tools) share: `from tests.support.x import y`.

scratch.py     ScratchDeployment (a remote, a serving clone, a clone to push from) and Load, no pytest needed
deployment.py  a ScratchDeployment serving for a test module, and reset to a consistent state for each test
backups.py     a source tree with every case that matters, snapshots of trees, backup_script.py runs, archives
load.py        LoadClient threads on / and the server's /metrics samples
tools.py       PYTHON, IN_CI, require_tool: the programs a test runs, and a missing one skipped (failed in CI)
processes.py   ProcessRegistry (the `processes` fixture), kill_group, start_ready: real processes, stopped by PID
configs.py     write_config: the checkout's config.yaml with a test's own run dir and overrides
servers.py     HelloServer (the `hello_server` fixture): a real hello_world.py on a free port
monitoring.py  Prometheus, the Pushgateway, node_exporter and Alertmanager, real and on free ports
restart.py     a server SIGKILLed under load and started again by cron's line (test_restart, bench_restart)
hostile_configs.py  config files built to exhaust memory (test_config_limits, bench_config)
"""
