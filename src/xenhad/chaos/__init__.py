"""Randomised fault schedules against real daemons, with invariants checked throughout.

schedule.py draws a seeded schedule (pure, so a seed replays it exactly); checks.py reads
what happened (physical truth, daemon logs) and says which invariant broke; run.py drives
a testbed through schedules and prints the table.
"""
