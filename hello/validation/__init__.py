"""Validation: the checks of `make validate` (validation_test.py) on the live system named by config.yaml, by group.

The deliberate seam: validation proves that every other concept works on this host, so it is the one concept
package that imports the others (base, server, backup, update, monitoring, platform), to read their facts (file
names, metric names, the dashboard's queries, the update log) rather than restate them. The arrow points one way:
nothing imports hello.validation but the command validation_test.py and the tests.

    core            the groups, PASS/FAIL/SKIP, Result, CheckFailed/CheckSkipped, the fixes a FAIL line names
    components      an Endpoint per HTTP component, Prometheus's API, metrics text, the run's Context
    registry        @check and the runner
    last_runs       what the last backup and update left: the newest archive, a job's gauges, the update log
    report          the table for people, the JSON list, the run as metrics
    service, monitoring, alert_delivery, backup, scheduler, update, restarts    the checks, one module per group
                    (monitoring and backup in two): validation_steps.md says what each proves and what to do

A group's module registers its checks when it is imported, so the imports below set the order the checks run and
print in; group modules never import each other (what two groups share is in last_runs).
"""

# The order of these imports is the order of the checks.
# isort: off
from hello.validation import service, monitoring, alert_delivery, backup, scheduler, update, restarts  # noqa: F401
# isort: on
