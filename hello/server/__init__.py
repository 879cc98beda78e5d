"""The hello server: its supervisor and worker processes, what they serve, their HTTP layer, metrics files, state and
logs."""
