"""`xenhad maintenance on|off HOST`: take a host out of xenhad's hands, and give it back.

On: host.other_config:xenhad_maintenance is set, then host.disable (no VM starts there).
The mark is what the daemons obey: xapi re-enables a host by itself once it has booted
(consider_enabling_host), and a host under maintenance is often rebooted. Off: the mark is
removed and the host enabled again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from xenhad.config import Config, load
from xenhad.errors import XenhadError
from xenhad.monitor import MAINTENANCE_KEY
from xenhad.xapi.connect import open_xapi
from xenhad.xapi.errors import XapiError


async def set_maintenance(config: Config, host: str, on: bool) -> str:
    """Apply it through the master; returns the line to print."""
    xapi = await open_xapi(config)
    try:
        records = await xapi.get_all_records("host")
        matches = [ref for ref, rec in records.items()
                   if host in (rec.get("name_label"), rec.get("uuid"))]
        if len(matches) != 1:
            known = ", ".join(sorted(str(r.get("name_label")) for r in records.values()))
            what = "no host" if not matches else "more than one host"
            raise XenhadError(f"{what} is called {host!r} in this pool; known hosts: {known}")
        ref = matches[0]
        name = records[ref].get("name_label", host)
        marked = MAINTENANCE_KEY in (records[ref].get("other_config") or {})
        try:
            if on:
                if not marked:
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    await xapi.call("host.add_to_other_config", ref, MAINTENANCE_KEY, stamp)
                await xapi.host_disable(ref)
                return (f"{name}: under maintenance (disabled; xenhad recovers nothing for it "
                        f"until `xenhad maintenance off {name}`)")
            if marked:
                await xapi.call("host.remove_from_other_config", ref, MAINTENANCE_KEY)
            await xapi.host_enable(ref)
            return f"{name}: back in service (enabled; xenhad watches it again)"
        except XapiError as exc:
            raise XenhadError(f"{name}: {exc}") from None
    finally:
        await xapi.close()


def run_maintenance(config_path: Path, host: str, *, on: bool) -> int:
    print(asyncio.run(set_maintenance(load(config_path), host, on)))
    return 0
