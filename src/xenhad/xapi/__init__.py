"""The only package that imports XenAPI: transports with timeouts, the async facade, the
probe of a host's own xapi, and the errors they raise."""

from __future__ import annotations

from xenhad.xapi.client import LOCAL_SOCKET, Safety, Xapi, may_retry, safety_of
from xenhad.xapi.errors import (
    XapiAuthError,
    XapiError,
    XapiException,
    XapiReplyError,
    XapiUnreachable,
)
from xenhad.xapi.probe import OneShotConnections, ProbeConnections, ProbeResult, probe

__all__ = [
    "LOCAL_SOCKET",
    "OneShotConnections",
    "ProbeConnections",
    "ProbeResult",
    "Safety",
    "Xapi",
    "XapiAuthError",
    "XapiError",
    "XapiException",
    "XapiReplyError",
    "XapiUnreachable",
    "may_retry",
    "probe",
    "safety_of",
]
