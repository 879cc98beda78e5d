"""The operator scripts, run as modules from the checkout root: `.venv/bin/python -m scripts.service start`.

Run by path (`python scripts/service.py start`, as cron lines and systemd units written before they ran as modules
say), each script starts again as the module through scripts/_as_module.py.
"""
