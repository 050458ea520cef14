"""Talking to systemd (Type=notify): READY, STATUS, WATCHDOG, RELOADING, STOPPING."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import sdnotify


class Notifier:
    """sdnotify underneath; silent when not started by systemd (no NOTIFY_SOCKET)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env
        self._sd = sdnotify.SystemdNotifier()
        self._status = ""

    @property
    def enabled(self) -> bool:
        return bool(self._env.get("NOTIFY_SOCKET"))

    def watchdog_seconds(self) -> float | None:
        """The WatchdogSec systemd armed for us, or None (WATCHDOG_PID names another process)."""
        usec = self._env.get("WATCHDOG_USEC")
        pid = self._env.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 1_000_000
        except ValueError:
            return None

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")
        self._status = status

    def status(self, line: str) -> None:
        if line != self._status:
            self._send(f"STATUS={line}")
            self._status = line

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        # systemd >= 253 wants MONOTONIC_USEC beside RELOADING=1 to match the reload up.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str) -> None:
        self._send(f"STOPPING=1\nSTATUS={status}")

    def _send(self, message: str) -> None:
        if self.enabled:
            self._sd.notify(message)
