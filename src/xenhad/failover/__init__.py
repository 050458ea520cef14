"""Master failover: agreeing on one new master, promoting it, and one actor pool-wide.

election.py and lock.py decide (pure); coordinator.py applies their decisions each tick
through the XAPI calls in actions.py.
"""
