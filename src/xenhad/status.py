"""`xenhad status`: the running daemon's view, over a root-only UNIX socket.

The daemon answers each connection with one JSON document and closes it; the socket lives
in its state directory (0700, root) and is itself 0600, so only root reads the pool's
state this way. `render` turns the document into the table an operator reads at 3 a.m.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from xenhad.errors import XenhadError

SOCKET_NAME = "status.sock"


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


async def serve(path: Path, produce: Callable[[], Mapping[str, Any]]) -> asyncio.AbstractServer:
    """Listen on `path`; every client gets produce() as JSON. The caller closes the server."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(produce(), default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away: nothing to tell it
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    # A socket left by a daemon that was killed: ours now (the state directory's lock
    # says no other daemon runs).
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old_umask = os.umask(0o077)
    try:
        server = await asyncio.start_unix_server(answer, path=str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server


def query(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's status document; XenhadError with the fix when it cannot be read."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except FileNotFoundError:
            raise XenhadError(f"no status socket at {path}: is xenhad running "
                              "(systemctl status xenhad), with this config's state_dir?") from None
        except PermissionError:
            raise XenhadError(f"cannot open {path}: permission denied; run as root") from None
        except ConnectionRefusedError:
            raise XenhadError(f"nothing answers on {path}: xenhad is not running "
                              "(systemctl status xenhad)") from None
        except socket.timeout:
            raise XenhadError(f"xenhad did not answer on {path} within {timeout:g}s: its "
                              "loop may be wedged (journalctl -u xenhad)") from None
    try:
        doc = json.loads(b"".join(chunks))
    except ValueError:
        raise XenhadError(f"the answer on {path} is not a status document") from None
    if not isinstance(doc, dict):
        raise XenhadError(f"the answer on {path} is not a status document")
    return doc


def render(doc: Mapping[str, Any]) -> str:
    lines = [
        f"host {doc.get('host')} ({doc.get('role')}), pool master {doc.get('master')}",
        f"quorum: {'yes' if doc.get('quorate') else 'NO'} "
        f"(in contact with {doc.get('sees')} of {doc.get('members')})",
    ]
    for key, label in (("journal_error", "CANNOT ACT"), ("passive", "PASSIVE"),
                       ("xapi_error", "XAPI"), ("fencing_unsafe", "UNSAFE")):
        if doc.get(key):
            lines.append(f"{label}: {doc[key]}")
    absorb = doc.get("absorb")
    if isinstance(absorb, dict):
        lines.append(f"capacity: {'ok' if absorb.get('ok') else 'OVERCOMMITTED'}, "
                     f"{absorb.get('line')}")
    failover = doc.get("failover") or {}
    if failover.get("role"):
        lines.append(f"failover: {failover['role']}: {failover.get('reason')}")
    if failover.get("vote"):
        lines.append(f"failover: voting for {failover['vote']}")
    if failover.get("promoting"):
        lines.append("failover: promoting this host")
    hosts = doc.get("hosts") or []
    if hosts:
        rows: list[tuple[str, ...]] = [("HOST", "XAPI", "ENABLED", "DETECTOR", "PEER", "UUID")]
        rows += [(h.get("name", ""), "live" if h.get("live") else "not live",
                  "yes" if h.get("enabled") else "no", h.get("state", ""),
                  h.get("peer", ""), h.get("uuid", "")) for h in hosts]
        lines.append("")
        lines.extend(_table(rows))
    stranded = doc.get("cannot_restart_elsewhere") or []
    if stranded:
        lines.append("")
        lines.append(f"protected VMs no other host can run ({len(stranded)}): not restarted "
                     "if their host dies")
        for vm in stranded:
            lines.append(f"  {vm.get('name')} on {vm.get('host')}: {vm.get('why')}")
    incidents = doc.get("incidents") or []
    lines.append("")
    if not incidents:
        lines.append("no incident in progress")
    for inc in incidents:
        lines.append(f"incident {inc.get('id')}: host {inc.get('host')}, phase "
                     f"{inc.get('phase')}, {inc.get('note') or ''}".rstrip(", ")
                     + (" (WAITING: the journal cannot be written)"
                        if inc.get("waiting_for_journal") else ""))
        if inc.get("evidence"):
            lines.append(f"  why down: {inc['evidence']}")
        if inc.get("fenced_by"):
            lines.append(f"  fenced by: {inc['fenced_by']}")
        for vm in inc.get("vms") or []:
            lines.append(f"  {vm.get('name')}: {vm.get('status')}"
                         + (f" on {vm['target']}" if vm.get("target") else "")
                         + (f" ({vm['error']})" if vm.get("error") else ""))
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def run_status(config_path: Path, *, as_json: bool) -> int:
    from xenhad.config import load

    config = load(config_path)
    doc = query(socket_path(Path(config.daemon.state_dir)))
    print(json.dumps(doc, indent=2, sort_keys=True) if as_json else render(doc))
    return 0
