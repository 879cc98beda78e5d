"""Shared modules of Python Hello Printer, one concept each.

The top-level scripts (hello_world.py, backup_script.py, update_protocol.py, validation_test.py, scripts/*) are thin
commands over these modules: a command imports from `hello`, never from another command.
"""
