"""What a XAPI call can end in, besides a result.

Four outcomes, four types, so a caller never parses a message to decide what to do:

- `XapiError(code, params)`: xapi answered with a failure (`XenAPI.Failure`), e.g.
  `HOST_IS_LIVE [host]` or `VM_BAD_POWER_STATE [vm, expected, actual]`. The call was refused;
  codes are those of xapi-consts/api_errors.ml.
- `XapiAuthError`: the credentials were refused. Retrying cannot help; the operator must fix
  the password, so it is also a `CredentialError` and carries a one-line fix.
- `XapiUnreachable(reason, sent=...)`: no answer (refused, reset, timed out). `sent` says
  whether the request may have reached xapi: a timeout after the request left us is
  ambiguous (the call may have been performed), a refused connection is not.
- `XapiReplyError`: xapi answered something we cannot use (a malformed reply or record).

All of them are `XapiException`, a `XenhadError`: str(e) is one line, and none of them ever
holds a password.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable

from xenhad.errors import CredentialError, XenhadError

SESSION_AUTHENTICATION_FAILED = "SESSION_AUTHENTICATION_FAILED"
SESSION_INVALID = "SESSION_INVALID"
HOST_IS_SLAVE = "HOST_IS_SLAVE"
HOST_STILL_BOOTING = "HOST_STILL_BOOTING"


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = 60
_SHOWN.maxother = 60
_SHOWN.maxlevel = 3
for _name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset"):
    setattr(_SHOWN, _name, 4)
_SHOWN.maxlong = 40


def shown(value: object) -> str:
    """`value` as a message may quote it: a repr cut to a few dozen characters and three
    levels. A reply is the other side's to fill: a 60 MB string or a structure nested a
    million deep must not become a log line, nor a RecursionError while writing one."""
    try:
        text = _SHOWN.repr(value)
    except Exception:  # a repr that fails is no reason to lose the error being reported
        return f"<{type(value).__name__}>"
    # reprlib bounds each part, not the whole: four entries of four of four add up.
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX - 3] + "..."


SHOWN_MAX = 100
"""Characters of a quoted value at most: two of them and their sentence make one line."""


class XapiException(XenhadError):
    """Base of every error the XAPI facade raises."""


class XapiError(XapiException):
    """xapi refused the call: `code` and `params` as in its ErrorDescription."""

    def __init__(self, code: str, params: Iterable[str] = ()) -> None:
        self.code = code
        self.params: tuple[str, ...] = tuple(str(p) for p in params)
        super().__init__(self._message())

    def _message(self) -> str:
        code = self.code if len(self.code) <= 80 else shown(self.code)
        if not self.params:
            return f"xapi error {code}"
        # Bounded: the params are xapi's to choose (a hostile or broken one's).
        params = [p if len(p) <= 200 else p[:197] + "..." for p in self.params[:8]]
        more = f" (+{len(self.params) - 8} more)" if len(self.params) > 8 else ""
        return f"xapi error {code} {params}{more}"

    @classmethod
    def from_details(cls, details: object, endpoint: str = "") -> XapiError:
        """Build from `XenAPI.Failure.details`: [code, param, ...] (strings on the wire)."""
        if isinstance(details, (list, tuple)) and details:
            code, *params = (d if isinstance(d, str) else shown(d) for d in details)
            if code == SESSION_AUTHENTICATION_FAILED:
                return XapiAuthError(params, endpoint=endpoint)
            return cls(code, params)
        return cls("UNKNOWN_FAILURE", (shown(details),))


class XapiAuthError(XapiError, CredentialError):
    """xapi refused our username or password (SESSION_AUTHENTICATION_FAILED)."""

    def __init__(self, params: Iterable[str] = (), endpoint: str = "") -> None:
        self.endpoint = endpoint
        super().__init__(SESSION_AUTHENTICATION_FAILED, params)

    def _message(self) -> str:
        # params are [uname, reason] (xapi_session.ml); never the password.
        user = self.params[0] if self.params else "?"
        where = f" at {self.endpoint}" if self.endpoint else ""
        return (
            f"xapi refused the login of user {user!r}{where} "
            "(SESSION_AUTHENTICATION_FAILED): fix the username or the password file "
            "named in the xapi section of the configuration"
        )


class XapiUnreachable(XapiException):
    """No answer from xapi: connection refused or reset, timeout, TLS failure.

    `sent` is False only when the request surely did not reach xapi (the connection, or its
    TLS handshake, never completed). When True the call may have been performed: a caller
    must not repeat a call that is not safe to repeat.
    """

    def __init__(self, reason: str, *, sent: bool, endpoint: str = "") -> None:
        self.reason = reason
        self.sent = sent
        self.endpoint = endpoint
        where = f" at {endpoint}" if endpoint else ""
        when = "after sending the request" if sent else "before sending the request"
        super().__init__(f"xapi{where} unreachable {when}: {reason}")


class XapiReplyError(XapiException):
    """xapi answered, but not with something we can use: names the object and the field."""
