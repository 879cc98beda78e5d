"""Monitoring: the local Prometheus stack, its rules (alerts, SLOs), the dashboard and the alert webhook sink."""
