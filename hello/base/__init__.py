"""The base every concept package builds on: config, processes, git, files, locks and job records.

It imports no concept package (server, backup, update, monitoring, platform, validation).
"""
