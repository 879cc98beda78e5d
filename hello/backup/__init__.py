"""Backups: writing and reading archives, retention, restore and drills, and the off-host copies (rclone)."""
