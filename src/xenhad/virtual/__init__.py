"""The whole pool in one process on virtual time (issue 21, items 2 and 3).

loop.py      an asyncio event loop whose clock jumps to the next timer, and its Clock
world.py     a SimPool driven by that loop: its timers, its held calls, its seed
xapi.py      the Xapi facade and the probe, answered by the simulator's own api.py
net.py       heartbeat datagrams between hosts, under the simulator's reach rules
fencing.py   each host's watchdog and Redfish BMC, in process

docs/virtual-time.md lists what the daemon core still builds for itself, the plan for
wiring it onto these.
"""
