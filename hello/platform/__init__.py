"""How the kit runs on a host: the systemd units, the scheduled jobs (cron, timers) and the Kubernetes manifests."""
