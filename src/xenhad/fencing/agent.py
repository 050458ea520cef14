"""Fencing through any agent of the fence-agents project (fence_redfish, fence_ipmilan, ...).

How agents are called, from fence-agents' doc/FenceAgentAPI.md and lib/fencing.py
(/usr/share/fence/fencing.py in Debian's fence-agents 4.12):
- With no command-line arguments an agent reads its options from stdin, one `name=value`
  line each (fencing.py `process_input` -> `_parse_input_stdin`). We always do that: the
  argument list is only the agent's path, no shell is involved, and the password travels on
  a pipe, so `ps` never shows it.
- `action=off` exits 0 once the agent has itself seen the plug off, 1 on any failure
  (including "Timed out waiting to power OFF", fencing.py EC_WAITING_OFF -> fail(), which
  always exits EC_GENERIC_ERROR = 1).
- `action=status` exits 0 when the device answers and the plug is ON, 2 when it is OFF, and
  1 when the device could not be contacted (FenceAgentAPI.md, "status").
An agent's own success is not our proof: we end with our own `action=status` read, as for
every backend, and only its exit code 2 means OFF.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from xenhad.clock import Clock
from xenhad.errors import CredentialError
from xenhad.fencing.base import (
    FenceBackend,
    FenceFailure,
    FenceOutcome,
    PowerStatus,
    confirm_off,
)
from xenhad.fencing.config import AgentSettings

STATUS_ON = 0
STATUS_ERROR = 1
STATUS_OFF = 2
"""`action=status` exit codes (FenceAgentAPI.md)."""

# Where distributions install fence agents; searched before $PATH, which a daemon started by
# systemd may not have set to include sbin.
_AGENT_DIRS = (Path("/usr/sbin"), Path("/sbin"))

# Words of the agents' failure messages (fencing.py `fail` / `fail_usage`, fence_redfish,
# fence_ipmilan via ipmitool) and what they mean for us. First match wins.
_CLASSIFY: tuple[tuple[tuple[str, ...], FenceOutcome], ...] = (
    (("timed out waiting to power off",), FenceOutcome.NOT_CONFIRMED),
    (
        (
            "401",
            "403",
            "unauthorized",
            "authentication",
            "invalid user",
            "password",
            "rakp 2 hmac is invalid",
            "unauthorized name",
            "login denied",
        ),
        FenceOutcome.AUTH_FAILED,
    ),
    (
        (
            "connection refused",
            "failed to connect",
            "couldn't connect",
            "no route to host",
            "connection timed out",
            "timed out",
            "timeout",
            "unable to connect",
            "unable to establish",
            "connection lost",
            "name or service not known",
        ),
        FenceOutcome.UNREACHABLE,
    ),
)


@dataclass(frozen=True)
class AgentRun:
    returncode: int | None
    """None when the agent was killed at its timeout."""
    output: str
    """The agent's stderr and stdout, whitespace collapsed, for messages."""


class AgentBackend(FenceBackend):
    name = "agent"

    def __init__(self, settings: AgentSettings, *, host: str, clock: Clock) -> None:
        bmc = settings.options.get("ip") or settings.options.get("ipaddr") or "?"
        port = settings.options.get("ipport")
        budget = 2 * settings.timeout + settings.off_timeout + 1.0
        super().__init__(
            host=host,
            bmc=f"{settings.command} {bmc}{':' + port if port else ''}",
            clock=clock,
            operation_timeout=budget,
        )
        self.settings = settings

    async def _power_off(self) -> str:
        run = await self._run("off")
        if run.returncode is None:
            raise FenceFailure(
                FenceOutcome.NOT_CONFIRMED,
                f"action=off did not finish within {self.settings.timeout:g}s: "
                f"{_short(run.output)}",
            )
        if run.returncode != 0:
            raise FenceFailure(
                _classify(run.output), f"action=off exited {run.returncode}: {_short(run.output)}"
            )
        reads = await confirm_off(
            self._read_status,
            clock=self.clock,
            deadline=self.settings.off_timeout,
            interval=self.settings.poll_interval,
        )
        return f"action=off succeeded, action=status said OFF after {reads} read(s)"

    async def _read_status(self) -> PowerStatus:
        run = await self._run("status")
        if run.returncode == STATUS_OFF:
            return PowerStatus.OFF
        if run.returncode == STATUS_ON:
            return PowerStatus.ON
        if run.returncode is None:
            raise FenceFailure(
                FenceOutcome.UNREACHABLE,
                f"action=status did not finish within {self.settings.timeout:g}s",
            )
        raise FenceFailure(
            _classify(run.output), f"action=status exited {run.returncode}: {_short(run.output)}"
        )

    def _stdin(self, action: str) -> bytes:
        lines = [f"{key}={value}" for key, value in self.settings.options.items()]
        if self.settings.password is not None:
            try:
                password = self.settings.password.read()
            except CredentialError as exc:
                raise FenceFailure(FenceOutcome.AUTH_FAILED, str(exc)) from None
            if "\n" in password or "\r" in password or password != password.strip():
                # fencing.py strips each stdin line and reads up to its end: such a password
                # would reach the BMC altered.
                raise FenceFailure(
                    FenceOutcome.ERROR,
                    "the password has a line break or leading/trailing spaces, which fence "
                    "agents cannot read from stdin: change it",
                )
            lines.append(f"password={password}")
        lines.append(f"action={action}")
        return ("\n".join(lines) + "\n").encode()

    async def _run(self, action: str) -> AgentRun:
        path = find_agent(self.settings.command)
        if path is None:
            raise FenceFailure(
                FenceOutcome.ERROR,
                f"fence agent {self.settings.command} not found in /usr/sbin, /sbin or $PATH: "
                "install fence-agents",
            )
        stdin = self._stdin(action)
        env = dict(os.environ, LANG="C", LC_ALL="C")
        try:
            process = await asyncio.create_subprocess_exec(
                str(path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                # Its own process group, so a timeout kills the ipmitool/curl it started too.
                start_new_session=True,
            )
        except OSError as exc:
            raise FenceFailure(
                FenceOutcome.ERROR, f"cannot run {path}: {exc.strerror or exc}"
            ) from None
        try:
            stdout, stderr = await asyncio.wait_for(
                process.communicate(stdin), self.settings.timeout
            )
        except asyncio.TimeoutError:
            _kill_group(process.pid)
            stdout, stderr = await process.communicate()
            return AgentRun(None, _summary(stdout, stderr))
        except asyncio.CancelledError:
            _kill_group(process.pid)
            raise
        return AgentRun(process.returncode, _summary(stdout, stderr))


def find_agent(command: str) -> Path | None:
    if command.startswith("/"):
        path = Path(command)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    for directory in _AGENT_DIRS:
        candidate = directory / command
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(command)
    return Path(found) if found else None


def _classify(output: str) -> FenceOutcome:
    lowered = output.lower()
    for words, outcome in _CLASSIFY:
        if any(word in lowered for word in words):
            return outcome
    return FenceOutcome.ERROR


# fencing.py's log prefix, the usage hint it prints after most failures, and Python's
# warnings about the agent's own imports: none of it tells the operator anything.
_NOISE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ |ERROR: Please use '-h' for usage"
    r"|\S+:\d+: DeprecationWarning: .*?(?= ERROR:|$)"
)


def _summary(stdout: bytes, stderr: bytes) -> str:
    text = " ".join(
        (stderr.decode(errors="replace") + " " + stdout.decode(errors="replace")).split()
    )
    return " ".join(_NOISE.sub(" ", text).split()) or "no output"


def _short(text: str, limit: int = 300) -> str:
    return (text[: limit - 3] + "...") if len(text) > limit else text


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
