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

Tables are read through xenhad.schema.Table, as xenhad.config reads its sections, so the
messages read the same; this module must not import xenhad.config (which imports it).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union
from urllib.parse import urlsplit

from xenhad import credentials
from xenhad.schema import Table, masked


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
    t = Table(source, "fencing", table, ("mode", "self_fence", "hosts"))
    mode = FencingMode(t.choice("mode", FencingMode.REQUIRED.value, [m.value for m in FencingMode]))
    self_fence = None
    if t.has("self_fence"):
        self_fence = _parse_self_fence(t.subtable("self_fence", _SELF_FENCE_KEYS))
    hosts: list[HostFencing] = []
    seen: dict[str, str] = {}
    for entry_table in t.array_of_tables("hosts", _HOST_KEYS):
        entry = _parse_host(entry_table)
        if entry.host in seen:
            raise entry_table.error(
                "host",
                entry.host,
                f"{seen[entry.host]} fences this host already: merge the two entries",
            )
        seen[entry.host] = entry_table.prefix
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


def _parse_self_fence(t: Table) -> SelfFenceSettings:
    watchdog = t.string("watchdog", "")
    if watchdog not in ("sim", "none") and not watchdog.startswith("/"):
        raise t.error(
            "watchdog", watchdog, 'expected a device path such as "/dev/watchdog", "sim" or "none"'
        )
    mode = WatchdogMode(
        t.choice("mode", WatchdogMode.REQUIRED.value, [m.value for m in WatchdogMode])
    )
    timeout = t.integer("timeout", 60, minimum=1, maximum=3600)
    margin = t.seconds("margin", 15.0, allow_zero=True, maximum=3600)
    url = t.string("sim_control_url", "")
    if watchdog == "sim":
        if not url:
            raise t.missing(
                "sim_control_url",
                'expected the simulator\'s control URL ("http://...") for watchdog = "sim"',
            )
        _check_url(t, "sim_control_url", url, ("http",))
    elif url:
        raise t.error(
            "sim_control_url",
            url,
            f'{t.dotted("sim_control_url")} is only used with {t.dotted("watchdog")} = "sim": '
            "remove it",
        )
    return SelfFenceSettings(
        watchdog=watchdog, timeout=timeout, margin=margin, mode=mode, sim_control_url=url
    )


def _parse_host(t: Table) -> HostFencing:
    host = t.string("host", "")
    if not host.strip():
        raise t.error("host", host, 'expected the host\'s name_label or uuid, e.g. host = "host2"')
    if not t.has("chain"):
        raise t.missing(
            "chain", 'expected the backends to try in order, e.g. chain = ["redfish", "agent"]'
        )
    chain_names = t.array(
        "chain",
        str,
        min_items=1,
        choices=BACKEND_KINDS,
        unique=True,
        expected='expected a non-empty array of backends, e.g. ["redfish", "agent"]',
    )
    chain: list[BackendSettings] = []
    for name in chain_names:
        if not t.has(name):
            raise t.missing(
                name, f"{t.dotted('chain')} names {name}: add {name} = {{ ... }} to this host"
            )
        if name == "redfish":
            chain.append(_parse_redfish(t.subtable(name, _REDFISH_KEYS)))
        elif name == "ipmi":
            chain.append(_parse_ipmi(t.subtable(name, _IPMI_KEYS)))
        else:
            chain.append(_parse_agent(t.subtable(name, _AGENT_KEYS)))
    for name in BACKEND_KINDS:
        if t.has(name) and name not in chain_names:
            raise t.error(
                name,
                t.data[name],
                f"{name} is not in {t.dotted('chain')}: add it to the chain or remove the table",
            )
    return HostFencing(host=host, chain=tuple(chain))


def _parse_redfish(t: Table) -> RedfishSettings:
    url = t.string("url", "")
    _check_url(t, "url", url, ("https", "http"))
    verify = t.boolean("verify_tls", True)
    ca_file = t.optional_path("ca_file")
    if ca_file is not None and not verify:
        raise t.error(
            "ca_file",
            str(ca_file),
            f"{t.dotted('ca_file')} is only used with {t.dotted('verify_tls')} = true: "
            "remove one of them",
        )
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


def _parse_ipmi(t: Table) -> IpmiSettings:
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


def _parse_agent(t: Table) -> AgentSettings:
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
                else f"remove it and name the file with {t.dotted('password_file')} (the agent "
                "gets the password on stdin, never in the config or on its command line)"
            )
            raise t.error(dotted, masked(key, value), fix)
        if not _AGENT_OPTION_NAME.match(key):
            raise t.error(dotted, value, "expected an option name of letters, digits, _ and -")
        if isinstance(value, bool):
            value = "1" if value else "0"
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise t.error(dotted, value, "expected a one-line string, number or boolean")
        options[key] = value
    timeout = t.seconds("timeout", 60.0, maximum=3600)
    off_timeout = t.seconds("off_timeout", 30.0, maximum=3600)
    poll = t.seconds("poll_interval", 2.0, maximum=600)
    return AgentSettings(
        command=command,
        options=options,
        password=_secret(t, required=False),
        timeout=timeout,
        off_timeout=off_timeout,
        poll_interval=poll,
    )


def _timings(t: Table) -> tuple[float, float, float]:
    request_timeout = t.seconds("request_timeout", 10.0, maximum=600)
    off_timeout = t.seconds("off_timeout", 60.0, maximum=3600)
    poll = t.seconds("poll_interval", 2.0, maximum=600)
    if poll > off_timeout:
        t.blame_pair("poll_interval", poll, "<=", "off_timeout", off_timeout)
    return request_timeout, off_timeout, poll


def _username(t: Table) -> str:
    username = t.string("username", "")
    if not username or "\n" in username:
        raise t.error("username", username, 'expected the BMC user name, e.g. "admin"')
    return username


def _secret(t: Table, *, required: bool) -> Secret | None:
    file = t.optional_path("password_file")
    credential = t.string("password_credential", "")
    if file is not None and credential:
        raise t.error(
            "password_credential",
            credential,
            f"expected only one of {t.dotted('password_file')} and "
            f"{t.dotted('password_credential')}: remove one",
        )
    if credential:
        if not credentials.valid_credential_name(credential):
            raise t.error(
                "password_credential",
                credential,
                "expected a systemd credential name (letters, digits, _ . : @ + -)",
            )
        return Secret(credential=credential)
    if file is not None:
        return Secret(file=file)
    if required:
        raise t.missing(
            "password_file",
            "expected the path of a file holding the BMC password (chmod 600), or set "
            f"{t.dotted('password_credential')}",
        )
    return None


def _check_url(t: Table, key: str, url: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # Checked first: any later message would print the url, and with it the password.
        host = parts.netloc.rsplit("@", 1)[1]
        raise t.error(
            key,
            parts._replace(netloc=f"***@{host}").geturl(),
            f"expected no user or password in the url: set {t.dotted('username')} and "
            f"{t.dotted('password_file')} instead",
        )
    if parts.scheme not in schemes or not parts.hostname:
        raise t.error(key, url, f'expected a URL such as "{schemes[0]}://10.0.0.12"')
    if (parts.path.strip("/") or parts.query or parts.fragment) and key == "url":
        raise t.error(
            key,
            url,
            f"expected only {parts.scheme}://{parts.netloc}: the Redfish paths "
            f"are found from /redfish/v1 (set {t.dotted('system')} for a specific "
            "ComputerSystem)",
        )
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise t.error(key, url, "expected a port number from 0 to 65535 after the host") from None
