"""The [fencing] table of xenhad.toml, validated into frozen settings for each backend.

`parse_fencing` is called by xenhad.config with the raw [fencing] table. Every problem is a
ConfigError of one line naming the file, the dotted key (`fencing.hosts[2].redfish.url`),
the bad value and the fix. Passwords are never in the config: each backend names a
`password_file` or a systemd `password_credential`, read when the backend needs it.

    [fencing]
    mode = "required"                 # or "trust-liveness" (UNSAFE)
    self_fence = { watchdog = "/dev/watchdog", timeout = 60, margin = 15 }

    [[fencing.hosts]]
    host = "host2"                    # name_label or uuid
    chain = ["redfish", "agent"]      # tried in this order until one confirms OFF
    redfish = { url = "https://10.0.0.12", username = "admin",
                password_file = "/etc/xenhad/bmc-host2" }
    agent = { command = "fence_ipmilan", password_file = "/etc/xenhad/bmc-host2",
              options = { ip = "10.0.0.12", username = "admin", lanplus = "1" } }

This module imports nothing from xenhad.config (which imports it), so it carries its own
small typed getters.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union
from urllib.parse import urlsplit

from xenhad import credentials
from xenhad.errors import ConfigError


class FencingMode(enum.Enum):
    REQUIRED = "required"
    """A dead host's VMs restart only once a backend proved it off (or its self-fence
    deadline passed)."""
    TRUST_LIVENESS = "trust-liveness"
    """UNSAFE: restart on XAPI's word alone; a cut-off host still running its VMs gets them
    started twice."""


class WatchdogMode(enum.Enum):
    REQUIRED = "required"
    """Refuse to run unless a watchdog with a safe timeout is armed."""
    AUTOMATIC = "automatic"
    """Use the watchdog if it can be armed safely; otherwise log why and run without."""
    OFF = "off"


@dataclass(frozen=True)
class Secret:
    """Where a password lives: a file, or a systemd credential name. Never the password."""

    file: Path | None = None
    credential: str | None = None

    def read(self) -> str:
        """The password; raises xenhad.errors.CredentialError with a one-line message."""
        return credentials.read_secret(file=self.file, credential=self.credential)

    def __str__(self) -> str:
        return f"file {self.file}" if self.file is not None else f"credential {self.credential}"


@dataclass(frozen=True)
class RedfishSettings:
    url: str
    """Base URL of the BMC, scheme and authority only: https://10.0.0.12[:port]."""
    username: str
    password: Secret
    verify_tls: bool = True
    ca_file: Path | None = None
    system: str = ""
    """The ComputerSystem's id or path; "" finds the only one listed in /redfish/v1/Systems."""
    request_timeout: float = 10.0
    off_timeout: float = 60.0
    poll_interval: float = 2.0


@dataclass(frozen=True)
class IpmiSettings:
    address: str
    username: str
    password: Secret
    port: int = 623
    request_timeout: float = 10.0
    off_timeout: float = 60.0
    poll_interval: float = 2.0


@dataclass(frozen=True)
class AgentSettings:
    command: str
    """The agent's name (looked up in /usr/sbin, /sbin, then $PATH) or absolute path."""
    options: Mapping[str, str] = field(default_factory=dict)
    """key=value lines given to the agent on stdin; never the password or the action."""
    password: Secret | None = None
    timeout: float = 60.0
    """Bound on each agent run (off, then status)."""
    off_timeout: float = 30.0
    """How long status reads may go on saying ON after a successful off."""
    poll_interval: float = 2.0


BackendSettings = Union[RedfishSettings, IpmiSettings, AgentSettings]
BACKEND_KINDS = ("redfish", "ipmi", "agent")


@dataclass(frozen=True)
class HostFencing:
    host: str
    """name_label or uuid of the host, as the operator wrote it."""
    chain: tuple[BackendSettings, ...]


@dataclass(frozen=True)
class SelfFenceSettings:
    watchdog: str
    """"/dev/watchdog" (or another device path), "sim" (the XAPI simulator's watchdog), or
    "none" (the null device: for tests, or with mode "off")."""
    timeout: int = 60
    margin: float = 15.0
    """Extra seconds peers wait past a silent host's watchdog deadline before restarting."""
    mode: WatchdogMode = WatchdogMode.REQUIRED
    sim_control_url: str = ""


@dataclass(frozen=True)
class FencingConfig:
    mode: FencingMode = FencingMode.REQUIRED
    self_fence: SelfFenceSettings | None = None
    hosts: tuple[HostFencing, ...] = ()

    def chain_for(self, *names: str) -> HostFencing | None:
        """The host entry whose `host` is any of `names` (pass a host's name and uuid)."""
        for entry in self.hosts:
            if entry.host in names:
                return entry
        return None


def parse_fencing(table: Mapping[str, object], *, source: str) -> FencingConfig:
    """Validate the [fencing] table. `source` names the file in messages."""
    t = _Table(source, "fencing", table, ("mode", "self_fence", "hosts"))
    mode = FencingMode(t.choice("mode", FencingMode.REQUIRED.value, [m.value for m in FencingMode]))
    self_fence = None
    if t.has("self_fence"):
        self_fence = _parse_self_fence(t.sub("self_fence", _SELF_FENCE_KEYS))
    hosts: list[HostFencing] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(t.array("hosts")):
        key = f"hosts[{index}]"
        if not isinstance(raw, Mapping):
            raise t.error(key, raw, "expected a table: write it as [[fencing.hosts]]")
        entry = _parse_host(_Table(source, t.dotted(key), raw, _HOST_KEYS))
        if entry.host in seen:
            raise t.error(
                f"{key}.host",
                entry.host,
                f"host is already fenced by fencing.hosts[{seen[entry.host]}]: "
                "merge the two entries",
            )
        seen[entry.host] = index
        hosts.append(entry)
    return FencingConfig(mode=mode, self_fence=self_fence, hosts=tuple(hosts))


_SELF_FENCE_KEYS = ("watchdog", "timeout", "margin", "mode", "sim_control_url")
_HOST_KEYS = ("host", "chain", *BACKEND_KINDS)
_TIMING_KEYS = ("request_timeout", "off_timeout", "poll_interval")
_REDFISH_KEYS = (
    "url",
    "username",
    "password_file",
    "password_credential",
    "verify_tls",
    "ca_file",
    "system",
    *_TIMING_KEYS,
)
_IPMI_KEYS = ("address", "port", "username", "password_file", "password_credential", *_TIMING_KEYS)
_AGENT_KEYS = (
    "command",
    "options",
    "password_file",
    "password_credential",
    "timeout",
    "off_timeout",
    "poll_interval",
)
# Options xenhad sets itself, or that would put the password where `ps` shows it.
_AGENT_RESERVED = frozenset(
    {"action", "option", "password", "passwd", "password_script", "passwd_script"}
)
_AGENT_OPTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _parse_self_fence(t: _Table) -> SelfFenceSettings:
    watchdog = t.string("watchdog", "")
    if watchdog not in ("sim", "none") and not watchdog.startswith("/"):
        raise t.error(
            "watchdog", watchdog, 'expected a device path such as "/dev/watchdog", "sim" or "none"'
        )
    mode = WatchdogMode(
        t.choice("mode", WatchdogMode.REQUIRED.value, [m.value for m in WatchdogMode])
    )
    timeout = t.integer("timeout", 60, minimum=1, maximum=65535)
    margin = t.seconds("margin", 15.0, allow_zero=True)
    url = t.string("sim_control_url", "")
    if watchdog == "sim":
        _check_url(t, "sim_control_url", url, ("http",))
    elif url:
        raise t.error("sim_control_url", url, 'only used with watchdog = "sim": remove it')
    return SelfFenceSettings(
        watchdog=watchdog, timeout=timeout, margin=margin, mode=mode, sim_control_url=url
    )


def _parse_host(t: _Table) -> HostFencing:
    host = t.string("host", "")
    if not host.strip():
        raise t.error("host", host, 'expected the host\'s name_label or uuid, e.g. host = "host2"')
    chain_raw = t.data.get("chain")
    if not isinstance(chain_raw, list) or not chain_raw:
        raise t.error(
            "chain", chain_raw, 'expected a non-empty list of backends, e.g. ["redfish", "agent"]'
        )
    chain: list[BackendSettings] = []
    for name in chain_raw:
        if name not in BACKEND_KINDS:
            raise t.error(
                "chain",
                chain_raw,
                f"{render(name)} is not a backend: use {', '.join(BACKEND_KINDS)}",
            )
        if chain_raw.count(name) > 1:
            raise t.error("chain", chain_raw, f"{render(name)} is listed twice: list it once")
        if not t.has(name):
            raise t.error(
                name,
                None,
                f"chain names {name} but the host has no {name} table: add "
                f"{name} = {{ ... }} to this host",
            )
        if name == "redfish":
            chain.append(_parse_redfish(t.sub(name, _REDFISH_KEYS)))
        elif name == "ipmi":
            chain.append(_parse_ipmi(t.sub(name, _IPMI_KEYS)))
        else:
            chain.append(_parse_agent(t.sub(name, _AGENT_KEYS)))
    for name in BACKEND_KINDS:
        if t.has(name) and name not in chain_raw:
            raise t.error(
                name,
                t.data[name],
                f"{name} is configured but not in chain: add it to chain or remove the table",
            )
    return HostFencing(host=host, chain=tuple(chain))


def _parse_redfish(t: _Table) -> RedfishSettings:
    url = t.string("url", "")
    _check_url(t, "url", url, ("https", "http"))
    verify = t.boolean("verify_tls", True)
    ca_file = t.optional_path("ca_file")
    if ca_file is not None and not verify:
        raise t.error("ca_file", str(ca_file), "verify_tls = false ignores it: remove one of them")
    system = t.string("system", "")
    if any(c.isspace() for c in system):
        raise t.error("system", system, "expected a system id or path without spaces")
    request_timeout, off_timeout, poll = _timings(t)
    return RedfishSettings(
        url=url.rstrip("/"),
        username=_username(t),
        password=_secret(t, required=True),  # type: ignore[arg-type]
        verify_tls=verify,
        ca_file=ca_file,
        system=system,
        request_timeout=request_timeout,
        off_timeout=off_timeout,
        poll_interval=poll,
    )


def _parse_ipmi(t: _Table) -> IpmiSettings:
    address = t.string("address", "")
    if not address or any(c.isspace() or c in "/@" for c in address):
        raise t.error("address", address, "expected the BMC's IP address or host name")
    port = t.integer("port", 623, minimum=1, maximum=65535)
    request_timeout, off_timeout, poll = _timings(t)
    return IpmiSettings(
        address=address,
        port=port,
        username=_username(t),
        password=_secret(t, required=True),  # type: ignore[arg-type]
        request_timeout=request_timeout,
        off_timeout=off_timeout,
        poll_interval=poll,
    )


def _parse_agent(t: _Table) -> AgentSettings:
    command = t.string("command", "")
    if not re.fullmatch(r"(/[^\s]+)|(fence_[A-Za-z0-9_]+)", command):
        raise t.error(
            "command",
            command,
            'expected a fence agent name such as "fence_ipmilan" or an '
            "absolute path (no arguments: put them in options)",
        )
    raw = t.data.get("options", {})
    if not isinstance(raw, Mapping):
        raise t.error("options", raw, 'expected a table, e.g. options = { ip = "10.0.0.12" }')
    options: dict[str, str] = {}
    for key, value in raw.items():
        dotted = f"options.{key}"
        if key in _AGENT_RESERVED:
            fix = (
                "remove it: xenhad sets the action itself"
                if key in ("action", "option")
                else "remove it and name the file with password_file (the agent gets the "
                "password on stdin, never in the config or on its command line)"
            )
            raise t.error(dotted, "***" if "pass" in key else value, fix)
        if not _AGENT_OPTION_NAME.match(key):
            raise t.error(dotted, value, "expected an option name of letters, digits, _ and -")
        if isinstance(value, bool):
            value = "1" if value else "0"
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise t.error(dotted, value, "expected a one-line string, number or boolean")
        options[key] = value
    timeout = t.seconds("timeout", 60.0)
    off_timeout = t.seconds("off_timeout", 30.0)
    poll = t.seconds("poll_interval", 2.0)
    return AgentSettings(
        command=command,
        options=options,
        password=_secret(t, required=False),
        timeout=timeout,
        off_timeout=off_timeout,
        poll_interval=poll,
    )


def _timings(t: _Table) -> tuple[float, float, float]:
    request_timeout = t.seconds("request_timeout", 10.0)
    off_timeout = t.seconds("off_timeout", 60.0)
    poll = t.seconds("poll_interval", 2.0)
    if poll > off_timeout:
        raise t.error(
            "poll_interval", poll, f"expected at most off_timeout ({off_timeout:g}s): lower it"
        )
    return request_timeout, off_timeout, poll


def _username(t: _Table) -> str:
    username = t.string("username", "")
    if not username or "\n" in username:
        raise t.error("username", username, 'expected the BMC user name, e.g. "admin"')
    return username


def _secret(t: _Table, *, required: bool) -> Secret | None:
    file = t.optional_path("password_file")
    credential = t.string("password_credential", "")
    if file is not None and credential:
        raise t.error(
            "password_credential", credential, "password_file is set too: keep only one of them"
        )
    if credential:
        if not credentials.valid_credential_name(credential):
            raise t.error(
                "password_credential",
                credential,
                "expected a systemd credential name (letters, digits and _ . : @ + -)",
            )
        return Secret(credential=credential)
    if file is not None:
        return Secret(file=file)
    if required:
        raise t.error(
            "password_file",
            None,
            "expected the path of a file holding the BMC password (chmod 600), or set "
            "password_credential",
        )
    return None


def _check_url(t: _Table, key: str, url: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise t.error(key, url, f"expected a URL such as {schemes[0]}://10.0.0.12")
    if parts.username or parts.password:
        raise t.error(
            key,
            f"{parts.scheme}://***@{parts.hostname}",
            "remove the credentials from the URL: use username and password_file",
        )
    if (parts.path.strip("/") or parts.query or parts.fragment) and key == "url":
        raise t.error(
            key,
            url,
            f"expected only {parts.scheme}://{parts.netloc}: the Redfish paths "
            "are found from /redfish/v1 (set system for a specific ComputerSystem)",
        )
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise t.error(key, url, "the port is not a number between 0 and 65535") from None


def render(value: object) -> str:
    """A config value as the operator wrote it in TOML (close enough for a message)."""
    if value is None:
        return "(missing)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{...}"
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return repr(value)


class _Table:
    """One TOML table under validation: getters that raise one-line ConfigErrors."""

    def __init__(
        self, source: str, prefix: str, data: Mapping[str, object], known: tuple[str, ...]
    ) -> None:
        self.source = source
        self.prefix = prefix
        self.data = data
        for key, value in data.items():
            if key not in known:
                shown = "***" if "pass" in key.lower() else value
                raise self.error(key, shown, f"not a known key: known keys are {', '.join(known)}")

    def dotted(self, key: str) -> str:
        return f"{self.prefix}.{key}"

    def has(self, key: str) -> bool:
        return key in self.data

    def error(self, key: str, value: object, fix: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.dotted(key)} = {render(value)} is invalid: {fix}")

    def sub(self, key: str, known: tuple[str, ...]) -> _Table:
        value = self.data.get(key)
        if not isinstance(value, Mapping):
            raise self.error(key, value, "expected a table: { key = value, ... }")
        return _Table(self.source, self.dotted(key), value, known)

    def array(self, key: str) -> list[object]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self.error(key, value, "expected an array of tables: write [[fencing.hosts]]")
        return value

    def string(self, key: str, default: str) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, value, "expected a string (in quotes)")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, value, "expected true or false (no quotes)")
        return value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self.data.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (minimum <= value <= maximum)
        ):
            raise self.error(key, value, f"expected an integer from {minimum} to {maximum}")
        return value

    def seconds(self, key: str, default: float, *, allow_zero: bool = False) -> float:
        value = self.data.get(key, default)
        expected = f"expected a number of seconds {'>= 0' if allow_zero else '> 0'}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, value, expected)
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
            raise self.error(key, value, expected)
        return seconds

    def choice(self, key: str, default: str, choices: list[str]) -> str:
        value = self.data.get(key, default)
        if value not in choices:
            raise self.error(
                key, value, "expected one of " + ", ".join(json.dumps(c) for c in choices)
            )
        return str(value)

    def optional_path(self, key: str) -> Path | None:
        value = self.data.get(key, "")
        if not isinstance(value, str):
            raise self.error(key, value, "expected an absolute path as a string")
        if not value:
            return None
        if not value.startswith("/"):
            raise self.error(key, value, "expected an absolute path (starting with /)")
        return Path(value)
