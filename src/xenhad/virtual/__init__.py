"""The whole pool in one process on virtual time (issue 21, items 2 and 3).

loop.py      an asyncio event loop whose clock jumps to the next timer, and its Clock
world.py     a SimPool driven by that loop: its timers, its held calls, its seed
xapi.py      the Xapi facade and the probe, answered by the simulator's own api.py
net.py       heartbeat datagrams between hosts, under the simulator's reach rules
fencing.py   each host's watchdog and Redfish BMC, in process
disk.py      a host's disk in memory, for its journal, failing on demand
env.py       one host's Environment (environment.py) in process
daemons.py   every host's daemon core, living and dying with its host, and the run's trace

docs/virtual-time.md says how the daemon core is wired onto these, and what they found.
"""
