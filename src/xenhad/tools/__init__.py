"""Operator commands that look and never act: `xenhad history` and `xenhad plan`.

Both run beside a live daemon, so neither takes its state-dir lock, writes its journal, or
makes a XAPI call that changes anything.
"""
