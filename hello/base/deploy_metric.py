"""The update metric of the last deploy or rollback, named once: recorded by hello/update (deploy_records), shown
and checked by hello/monitoring (the dashboard's "Deploys" annotation and panel, lint), read by validation."""

DEPLOY_METRIC = "hello_world_update_last_deploy_timestamp_seconds"
DEPLOY_LABELS = ("outcome", "commit", "from_commit", "to_commit")
