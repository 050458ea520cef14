"""Errors an operator can cause or fix. Each carries one line that names the problem and the fix;
the CLI prints it and exits non-zero, the daemon logs it, nobody prints a traceback."""

from __future__ import annotations


class XenhadError(Exception):
    """Base of every operator-facing error: str(e) is the whole message, one line."""


class ConfigError(XenhadError):
    """The configuration is wrong: the message names the key, the bad value and the fix."""


class CredentialError(XenhadError):
    """A secret is missing, unreadable, or readable by others."""
