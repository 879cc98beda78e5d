"""The hello server: its HTTP protocol, the supervisor's state and logs, and the worker's metrics files."""
