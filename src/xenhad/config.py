"""The configuration: TOML validated into one frozen, typed `Config`.

Schema checking lives here, apart from the code that uses the config (as Patroni keeps
`validator.py`): every other module receives a `Config` that is already known to be
consistent, and never re-checks a value.

Every problem is a `ConfigError` whose message is one line naming the file, the dotted key,
the bad value and what is expected, e.g.

    xenhad.toml: detector.confirm_misses = 0 is invalid: expected an integer >= 1

Each section has a parser function (`_parse_host`, `_parse_xapi`, ...) that reads its
`xenhad.schema.Table` and returns the section's frozen dataclass; `_parse_document` calls
them in turn. [fencing] is parsed by xenhad.fencing.config through the same `Table`, so its
messages read the same. A new section is a new function.

The config holds no secret: passwords are named by file or systemd credential only, so the
file may be world-readable and pasted into bug reports.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import shlex
import stat
import sys
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, cast
from urllib.parse import SplitResult, urlsplit

from xenhad import credentials
from xenhad.errors import ConfigError, CredentialError
from xenhad.fencing.config import (
    FencingConfig,
    IpmiSettings,
    RedfishSettings,
    Secret,
    parse_fencing,
)
from xenhad.fencing.config import FencingMode as FencingMode  # re-exported for callers
from xenhad.schema import Table as Table  # re-exported: section parsers elsewhere take one
from xenhad.schema import render_value, shown_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the 3.9/3.10 dom0s only
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/xenhad/xenhad.toml")

LogFormat = Literal["kv", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_FORMATS: tuple[LogFormat, ...] = ("kv", "json")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class HostConfig:
    uuid: str = ""
    """This host's uuid; "" means INSTALLATION_UUID from `inventory` (see resolve_host_uuid)."""
    inventory: Path = Path("/etc/xensource-inventory")


@dataclass(frozen=True)
class XapiConfig:
    url: str = ""
    """"" for the local socket, else https://..., http://... (simulator) or unix:///path."""
    socket: Path = Path("/var/lib/xcp/xapi")
    username: str = "root"
    password_file: Path | None = None
    password_credential: str = ""
    verify_tls: bool = True
    ca_file: Path | None = None
    allow_insecure_http: bool = False
    timeout: float = 10.0
    source_address: str = ""

    @property
    def scheme(self) -> Literal["unix", "https", "http"]:
        """How the daemon reaches XAPI: "unix" (a local socket) or TCP over https/http."""
        if not self.url:
            return "unix"
        return cast(Literal["unix", "https", "http"], urlsplit(self.url).scheme.lower())

    @property
    def socket_path(self) -> Path:
        """The local socket to use when `scheme` is "unix"."""
        if self.url:
            return Path(urlsplit(self.url).path)
        return self.socket

    @property
    def needs_password(self) -> bool:
        # The local socket is pre-authenticated as root: xapi ignores the password there.
        return self.scheme != "unix"


@dataclass(frozen=True)
class DetectorConfig:
    interval: float = 2.0
    confirm_misses: int = 3
    confirm_seconds: float = 10.0
    recover_hold_seconds: float = 30.0
    probe_timeout: float = 1.5
    probe_url: str = "https://{address}/"
    """Where each host's own xapi is asked whether it answers; {address} is host.address."""
    slave_interval: float = 120.0
    """How often a slave's daemon reads the pool (through its master's xapi) while
    heartbeats say all is well; 0: every tick. Its master is watched every tick anyway."""
    hung_xapi_fence_after: float = 0.0
    """Seconds a host whose daemon beats may have a silent xapi before it is treated as
    down (fenced, its VMs restarted); 0: never, it is left alone and said loudly."""


@dataclass(frozen=True)
class RecoveryConfig:
    protection_key: str = "xenhad"
    concurrency: int = 4
    best_effort_attempts: int = 3
    retry_backoff: float = 5.0
    retry_backoff_max: float = 60.0
    start_timeout: float = 300.0
    """How long one VM.start_on may take: a boot, not a database call (xapi.timeout)."""
    tolerate: int = 1
    """Host failures the pool must be able to absorb (admission.py); 0: not checked."""
    admission_interval: float = 180.0
    """Seconds between the master's checks that the pool can absorb `tolerate` failures."""


@dataclass(frozen=True)
class PeersConfig:
    secret_file: Path | None = None
    """The pool secret that authenticates heartbeats (same on every host). None: off."""
    secret_credential: str = ""
    port: int = 7410
    """UDP port heartbeats are sent to, on each host's XAPI address."""
    listen_port: int = 0
    """UDP port this daemon listens on; 0 means `port` (the simulator relays, so it differs)."""
    interval: float = 1.0
    window: float = 4.0
    """A peer not heard from for this long is out of contact."""

    @property
    def enabled(self) -> bool:
        return self.secret_file is not None or bool(self.secret_credential)


@dataclass(frozen=True)
class FailoverConfig:
    enabled: bool = True
    """Replace a dead master (needs peer heartbeats: the survivors vote through them)."""
    priority: int = 0
    """This host's preference as the next master: higher first, then the lowest uuid."""
    sync_interval: float = 60.0
    """Seconds between two pool.sync_database calls by the master (0: xapi's own 300 s)."""
    recover_retry: float = 5.0
    lock_ttl: float = 30.0
    promote_timeout: float = 90.0
    witness: Path | None = None
    """A directory on storage every host mounts: its lease file breaks ties (2-host pools)."""


@dataclass(frozen=True)
class AlertsConfig:
    webhooks: tuple[str, ...] = ()
    """http(s) URLs each incident transition is POSTed to as JSON."""
    webhook_token_file: Path | None = None
    """A root-only file whose content is sent as `Authorization: Bearer ...`."""
    exec: Path | None = None
    """An executable run per transition: argv [exec, event], the payload as JSON on stdin."""
    timeout: float = 10.0
    retries: int = 3
    """Webhook attempts after the first, on connection errors, timeouts and 5xx answers."""
    verify_tls: bool = True
    ca_file: Path | None = None
    xapi_messages: bool = True
    """XAPI messages (message.create) for the administrator's tools (messages.py)."""
    message_repeat: float = 900.0
    """Seconds before a message about a condition that lasts (no fence yet) is repeated."""

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks) or self.exec is not None


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = Path("/var/lib/xenhad")
    log_format: LogFormat = "kv"
    log_level: LogLevel = "info"
    metrics_port: int = 0
    """Prometheus metrics on <metrics_address>:<port>; 0 (default) serves none."""
    metrics_address: str = "127.0.0.1"


@dataclass(frozen=True)
class Config:
    host: HostConfig = field(default_factory=HostConfig)
    xapi: XapiConfig = field(default_factory=XapiConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    fencing: FencingConfig = field(default_factory=FencingConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)


SECTIONS: dict[str, type] = {
    "host": HostConfig,
    "xapi": XapiConfig,
    "detector": DetectorConfig,
    "recovery": RecoveryConfig,
    "fencing": FencingConfig,
    "daemon": DaemonConfig,
    "peers": PeersConfig,
    "failover": FailoverConfig,
    "alerts": AlertsConfig,
}
"""Section name -> its dataclass; a section's known keys are its dataclass's fields."""


def known_keys(section: str) -> tuple[str, ...]:
    return tuple(f.name for f in fields(SECTIONS[section]))


# --------------------------------------------------------------------------- public API


def defaults() -> Config:
    """The configuration an empty file gives: fit for a dom0 talking to its local xapi."""
    return Config()


def load(path: Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at `path`; ConfigError (one line) on any problem.

    The file itself must be writable by its owner only, and owned by root or by the user
    running xenhad (compared with os.geteuid(), so tests running as any user can make files
    it accepts, and root can chown one away to see it refused): whoever can write it
    chooses alerts.exec, the fence agent, xapi.url. It may be at most MAX_CONFIG_BYTES.
    Files the config names (password_file, secret_file, ca_file) must exist and, for
    secrets, be private. `env` (default os.environ) supplies $CREDENTIALS_DIRECTORY.
    """
    source = str(path)
    try:
        # O_NONBLOCK: a FIFO named by mistake must not hang check-config, nor a SIGHUP.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ConfigError(
            f"{source}: cannot read the config file ({e.strerror}): pass the path of an "
            f"existing file (an example with every option is etc/xenhad.toml)"
        ) from None
    try:
        problem = config_file_problem(os.fstat(fd), source)
        if problem:
            raise ConfigError(f"{source}: {problem}")
        data = _read_bounded(fd, source)
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{source}: line {line}: not UTF-8 text: TOML files must be UTF-8"
        ) from None
    return parse(text, source=source, env=env)


MAX_CONFIG_BYTES = 1024 * 1024
"""etc/xenhad.toml with every option explained is 20 KiB; a 64-host [fencing] about as much
again. A file over 1 MiB is the wrong file (a log, a disk image), refused before parsing."""

MAX_NESTING = 16
"""Tables and arrays nested deeper than this are no xenhad config (its deepest key,
fencing.hosts[i].agent.options.x, is 5 levels): refused before anything recurses into them."""


def config_file_problem(st: os.stat_result, source: str) -> str:
    """Why the config file with this stat must not be trusted (the tail of a one-line
    message: what is wrong, then the fix), or "" when it is fine. Group and others may read
    it (it holds no secret), never write it."""
    if st.st_mode & 0o022:
        mode = stat.S_IMODE(st.st_mode)
        return (f"the config file is writable by group or others (mode {mode:04o}), who could "
                f"then choose the commands xenhad runs as root: run chmod go-w {source}")
    if st.st_uid not in (0, os.geteuid()):
        return (f"the config file is owned by uid {st.st_uid}, not by root or by uid "
                f"{os.geteuid()} running xenhad, who could then choose the commands xenhad "
                f"runs: run chown root {source}")
    return ""


def _read_bounded(fd: int, source: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            raise ConfigError(
                f"{source}: the config file is a pipe with nothing to read yet: pass the path "
                "of a file"
            ) from None
        except OSError as e:
            raise ConfigError(
                f"{source}: cannot read the config file ({e.strerror}): check the file"
            ) from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{source}: the config file is larger than {MAX_CONFIG_BYTES >> 20} MiB: "
                "this is not a xenhad config (an example with every option is "
                "etc/xenhad.toml)"
            )
        chunks.append(chunk)


def parse(
    text: str,
    *,
    source: str = "<string>",
    env: Mapping[str, str] | None = None,
    check_files: bool = True,
) -> Config:
    """Validate TOML `text`; `source` names it in messages. With `check_files` false, files
    the config names are not looked at (for validating a config away from its host)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{source}: the config is larger than {MAX_CONFIG_BYTES >> 20} MiB: this is not "
            "a xenhad config (an example with every option is etc/xenhad.toml)"
        )
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(_syntax_error(source, e, text)) from None
    except RecursionError:
        # tomllib recurses once per level of nested arrays or inline tables.
        raise ConfigError(_too_deep(source)) from None
    if _depth(document) > MAX_NESTING:
        raise ConfigError(_too_deep(source))
    config = _parse_document(document, source)
    _check_cross_sections(config, source)
    if check_files:
        _check_files(config, source, os.environ if env is None else env)
    return config


def check_config(
    path: Path, *, env: Mapping[str, str] | None = None, resolve_host: bool = True
) -> tuple[int, str]:
    """What `xenhad check-config FILE` prints and exits with: (0, "FILE: ok") or (1, error).

    With `resolve_host` (the default) an empty host.uuid must be resolvable from the
    inventory, as the daemon will need it at start; pass False to check a config away
    from the dom0 it is meant for.
    """
    try:
        config = load(path, env=env)
    except (ConfigError, CredentialError) as e:
        return 1, str(e)
    if resolve_host:
        try:
            resolve_host_uuid(config)
        except ConfigError as e:
            return 1, f"{path}: {e}"
    from xenhad.unit import restart_delay

    delay = restart_delay(env)
    try:
        warning = check_restart_fits(config, delay.seconds, str(delay.source)) if delay else None
    except ConfigError as e:
        return 1, f"{path}: {e}"
    warnings = ([warning] if warning else []) + config_warnings(config)
    return 0, f"{path}: ok" + "".join(f"; WARNING: {w}" for w in warnings)


def config_warnings(config: Config) -> list[str]:
    """What a valid config may still do that its operator would not want."""
    found = []
    fencing = config.fencing
    if (fencing.self_fence is not None and config.failover.witness is None
            and len(fencing.hosts) == 2):
        # The daemon knows the pool's size only once it reads it; two fencing entries are
        # the sign of a 2-host pool here.
        found.append(
            "a 2-host pool without failover.witness: self-fencing would reset both hosts on "
            "any partition, so the daemon will not arm the watchdog; set failover.witness to "
            "a directory on storage both hosts mount"
        )
    return found


STARTUP_FLOOR_SECONDS = 2.0
"""From exec to the daemon's first tick, at least: the interpreter, imports, the journal's
replay (0.1 s to daemon.starting and 0.2 s more to daemon.ready on the test machine; a
dom0's CPU is slower and busier)."""


def check_restart_fits(config: Config, restart_sec: float, unit: str) -> str | None:
    """Whether a daemon restarted by systemd feeds its watchdog again in time.

    A daemon that dies holding its armed watchdog (a crash, a kill, systemd's own watchdog)
    leaves it counting: the restarted one must be back, have read the pool and heard a
    majority, and feed it, within fencing.self_fence.timeout, or the host resets under it.
    ConfigError when even the restart delay and the floor of a start cannot fit; a warning,
    with the numbers, when the worst start (one xapi.timeout to read the pool, a peers.window
    to hear a majority, one tick) does not; None when it fits or there is no watchdog."""
    self_fence = config.fencing.self_fence
    if self_fence is None:
        return None
    timeout = float(self_fence.timeout)
    floor = restart_sec + STARTUP_FLOOR_SECONDS
    worst = floor + config.xapi.timeout + config.peers.window + config.detector.interval
    if floor >= timeout:
        raise ConfigError(
            f"fencing.self_fence.timeout = {self_fence.timeout} is invalid: a daemon restarted "
            f"by systemd (RestartSec={restart_sec:g}s in {unit}) starts no sooner than "
            f"{floor:g}s, after its watchdog reset the host: raise the timeout above "
            f"{worst:g}s or lower RestartSec"
        )
    if worst >= timeout:
        return (
            f"fencing.self_fence.timeout = {self_fence.timeout} may reset this host when the "
            f"daemon restarts: RestartSec={restart_sec:g}s ({unit}) + {STARTUP_FLOOR_SECONDS:g}s "
            f"to start + xapi.timeout {config.xapi.timeout:g}s + peers.window "
            f"{config.peers.window:g}s + detector.interval {config.detector.interval:g}s = "
            f"{worst:g}s before its first feed; raise the timeout above {worst:g}s or lower "
            "RestartSec"
        )
    return None


def resolve_host_uuid(config: Config) -> str:
    """This host's uuid: host.uuid, or INSTALLATION_UUID from the xensource inventory."""
    if config.host.uuid:
        return config.host.uuid
    inventory = config.host.inventory
    fix = 'set host.uuid = "..." in the config, or host.inventory to the inventory file'
    try:
        values = read_inventory(inventory)
    except OSError as e:
        raise ConfigError(
            f"host.uuid is empty and the inventory {inventory} cannot be read "
            f"({e.strerror}): {fix}"
        ) from None
    except ValueError as e:
        raise ConfigError(f"inventory {inventory}: {e}: {fix}") from None
    found = values.get("INSTALLATION_UUID", "")
    if not found:
        raise ConfigError(
            f"host.uuid is empty and the inventory {inventory} has no INSTALLATION_UUID: {fix}"
        )
    try:
        return str(uuidlib.UUID(found))
    except ValueError:
        raise ConfigError(
            f"inventory {inventory}: INSTALLATION_UUID = {found!r} is not a uuid: {fix}"
        ) from None


def read_inventory(path: Path) -> dict[str, str]:
    """KEY='value' lines of /etc/xensource-inventory (shell-quoted, as xcp-inventory writes
    them and as /etc/init.d scripts source them). OSError if unreadable, ValueError (naming
    the line) if a line is not KEY=value."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, rest = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"line {number} is not KEY='value'")
        try:
            words = shlex.split(rest, comments=True)
        except ValueError:
            raise ValueError(f"line {number} has unbalanced quotes") from None
        values[key] = " ".join(words)
    return values


# --------------------------------------------------------------------------- syntax


def _too_deep(source: str) -> str:
    return (f"{source}: arrays or tables nested more than {MAX_NESTING} deep: this is not a "
            "xenhad config (an example with every option is etc/xenhad.toml)")


def _depth(document: Mapping[str, object]) -> int:
    """How deep tables and arrays nest in `document`, found without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            break
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, (Mapping, list)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, (Mapping, list)))
    return deepest


def _syntax_error(source: str, error: Exception, text: str) -> str:
    # tomllib/tomli end their message with "(at line L, column C)" or "(at end of
    # document)"; we lead with the line, as compilers do, and keep the column.
    message = str(error)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", message)
    if match:
        reason = message[: match.start()]
        where = f"line {match.group(1)}, column {match.group(2)}"
    else:
        reason = re.sub(r"\s*\(at end of document\)\s*$", "", message)
        where = f"line {len(text.splitlines()) or 1} (end of file)"
    reason = " ".join(reason.split()) or "invalid TOML"
    return f"{source}: {where}: TOML syntax error: {reason}"


# --------------------------------------------------------------------------- sections


def _parse_document(document: Mapping[str, object], source: str) -> Config:
    for key, value in document.items():
        if key in SECTIONS and isinstance(value, Mapping):
            continue
        if key in SECTIONS:
            raise ConfigError(
                f"{source}: {key} = {render_value(value)} is invalid: expected a table [{key}]"
            )
        raise ConfigError(_unknown_top_level(source, key, value))

    neighbours = {section: known_keys(section) for section in SECTIONS}

    def table(name: str) -> Table:
        data = document.get(name, {})
        return Table(
            source, name, cast(Mapping[str, object], data), known_keys(name), neighbours=neighbours
        )

    return Config(
        host=_parse_host(table("host")),
        xapi=_parse_xapi(table("xapi")),
        detector=_parse_detector(table("detector")),
        recovery=_parse_recovery(table("recovery")),
        fencing=_parse_fencing(table("fencing")),
        daemon=_parse_daemon(table("daemon")),
        peers=_parse_peers(table("peers")),
        failover=_parse_failover(table("failover")),
        alerts=_parse_alerts(table("alerts")),
    )


def _unknown_top_level(source: str, key: str, value: object) -> str:
    # Neither the value (a top-level `password = "..."` is one) nor a key of any length is
    # echoed whole: these lines go to terminals, journals and bug reports.
    shown = shown_key(key)
    if isinstance(value, Mapping):
        close = difflib.get_close_matches(key, list(SECTIONS), n=1, cutoff=0.6)
        hint = f"did you mean [{close[0]}]?" if close else "known sections: " + ", ".join(
            f"[{s}]" for s in SECTIONS
        )
        return f"{source}: [{shown}] is not a known section: {hint}"
    owners = [s for s in SECTIONS if key in known_keys(s)]
    hint = (
        f"keys belong in a section: did you mean {owners[0]}.{key}?"
        if owners
        else "keys belong in a section: " + ", ".join(f"[{s}]" for s in SECTIONS)
    )
    return f"{source}: {shown} is not a known key: {hint}"


def _parse_host(t: Table) -> HostConfig:
    d = HostConfig()
    uuid = t.string("uuid", d.uuid)
    if uuid:
        try:
            # xapi hands out lowercase canonical uuids; normalise so comparisons hold.
            uuid = str(uuidlib.UUID(uuid))
        except ValueError:
            raise t.error(
                "uuid", uuid, 'expected a host uuid (xe host-list params=uuid) or "" for the '
                "inventory's INSTALLATION_UUID"
            ) from None
    return HostConfig(uuid=uuid, inventory=t.path("inventory", d.inventory))


def _parse_xapi(t: Table) -> XapiConfig:
    d = XapiConfig()
    url = t.string("url", d.url)
    socket = t.path("socket", d.socket)
    username = t.string("username", d.username)
    if not username:
        raise t.error("username", username, "expected a XAPI user name, e.g. \"root\"")
    password_file = t.optional_path("password_file", d.password_file)
    password_credential = t.string(
        "password_credential",
        d.password_credential,
        pattern=r"[A-Za-z0-9_.:@+-]{1,255}",
        expected="expected a systemd credential name (letters, digits, _ . : @ + -)",
    )
    if password_credential in (".", ".."):
        raise t.error("password_credential", password_credential, "expected a credential name")
    verify_tls = t.boolean("verify_tls", d.verify_tls)
    ca_file = t.optional_path("ca_file", d.ca_file)
    allow_insecure_http = t.boolean("allow_insecure_http", d.allow_insecure_http)
    timeout = t.seconds("timeout", d.timeout, maximum=600)
    source_address = t.string("source_address", d.source_address)

    if url:
        _check_url(t, url, allow_insecure_http, socket_set=t.has("socket"))
    scheme = urlsplit(url).scheme.lower() if url else "unix"
    if password_file is not None and password_credential:
        raise t.error(
            "password_credential",
            password_credential,
            "expected only one of xapi.password_file and xapi.password_credential: remove one",
        )
    if scheme in ("https", "http") and password_file is None and not password_credential:
        raise t.error(
            "url",
            url,
            "a XAPI url needs a password: set xapi.password_file or xapi.password_credential "
            '(or url = "" for the local socket, which needs none)',
        )
    if ca_file is not None and not verify_tls:
        raise t.error(
            "ca_file",
            str(ca_file),
            "xapi.ca_file is only used with xapi.verify_tls = true: remove one of them",
        )
    if source_address:
        try:
            source_address = str(ipaddress.ip_address(source_address))
        except ValueError:
            raise t.error(
                "source_address",
                source_address,
                'expected an IP address of this host, e.g. "127.0.0.2", or "" for the default',
            ) from None
    return XapiConfig(
        url=url,
        socket=socket,
        username=username,
        password_file=password_file,
        password_credential=password_credential,
        verify_tls=verify_tls,
        ca_file=ca_file,
        allow_insecure_http=allow_insecure_http,
        timeout=timeout,
        source_address=source_address,
    )


def _check_url(t: Table, url: str, allow_insecure_http: bool, *, socket_set: bool) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise t.error("url", url, 'expected a URL such as "https://pool-master"') from None
    shown = _hide_userinfo(url, parts)
    scheme = parts.scheme.lower()
    if parts.username is not None or parts.password is not None:
        # Printing the url back would print the password: `shown` masks it.
        raise t.error(
            "url",
            shown,
            "expected no user or password in the url: set xapi.username and "
            "xapi.password_file instead",
        )
    if scheme == "unix":
        if not parts.path.startswith("/") or parts.netloc:
            raise t.error(
                "url", shown, 'expected "unix:///absolute/path/of/the/socket"'
            )
        if socket_set:
            raise t.error(
                "url",
                shown,
                "expected only one of a unix: url and xapi.socket: remove one",
            )
        return
    if scheme not in ("https", "http"):
        raise t.error(
            "url",
            shown,
            'expected an https:// URL, "" for the local socket, or unix:///path/of/socket',
        )
    if not parts.hostname:
        raise t.error("url", shown, 'expected a host name, e.g. "https://pool-master"')
    if scheme == "http" and not allow_insecure_http:
        raise t.error(
            "url",
            shown,
            "plain http sends the XAPI password in clear: use https://, or set "
            "xapi.allow_insecure_http = true (meant for the simulator only)",
        )


def _hide_userinfo(url: str, parts: SplitResult) -> str:
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"***@{host}").geturl()


def _parse_detector(t: Table) -> DetectorConfig:
    d = DetectorConfig()
    interval = t.seconds("interval", d.interval, maximum=300)
    confirm_misses = t.integer(
        "confirm_misses", d.confirm_misses, minimum=1, maximum=1000
    )
    confirm_seconds = t.seconds("confirm_seconds", d.confirm_seconds, maximum=3600)
    recover_hold_seconds = t.seconds(
        "recover_hold_seconds", d.recover_hold_seconds, allow_zero=True, maximum=86400
    )
    probe_timeout = t.seconds("probe_timeout", d.probe_timeout, maximum=300)
    probe_url = t.string("probe_url", d.probe_url)
    slave_interval = t.seconds(
        "slave_interval", d.slave_interval, allow_zero=True, maximum=86400
    )
    hung_xapi_fence_after = t.seconds("hung_xapi_fence_after", d.hung_xapi_fence_after,
                                      allow_zero=True, maximum=86400)
    parts = urlsplit(probe_url.replace("{address}", "127.0.0.1"))
    if "{address}" not in probe_url or parts.scheme not in ("http", "https") or not parts.hostname:
        raise t.error(
            "probe_url",
            probe_url,
            'expected an http(s) URL containing {address}, e.g. "https://{address}/"',
        )

    if confirm_seconds < interval:
        # A confirmation that spans less than one tick is a single observation: one lost
        # packet would fence a host.
        t.blame_pair("confirm_seconds", confirm_seconds, ">=", "interval", interval)
    if probe_timeout >= interval:
        # Probes of one tick must have finished before the next tick starts, or slow
        # probes pile up and a tick's misses describe an older moment.
        t.blame_pair("probe_timeout", probe_timeout, "<", "interval", interval)
    return DetectorConfig(
        interval=interval,
        confirm_misses=confirm_misses,
        confirm_seconds=confirm_seconds,
        recover_hold_seconds=recover_hold_seconds,
        probe_timeout=probe_timeout,
        probe_url=probe_url,
        slave_interval=slave_interval,
        hung_xapi_fence_after=hung_xapi_fence_after,
    )


def _parse_recovery(t: Table) -> RecoveryConfig:
    d = RecoveryConfig()
    protection_key = t.string(
        "protection_key",
        d.protection_key,
        pattern=r"[A-Za-z0-9_.:/-]+",
        expected="expected a VM other_config key (letters, digits, _ . : / -)",
    )
    if not protection_key:
        raise t.error("protection_key", protection_key, 'expected a key, e.g. "xenhad"')
    concurrency = t.integer("concurrency", d.concurrency, minimum=1, maximum=64)
    best_effort_attempts = t.integer(
        "best_effort_attempts", d.best_effort_attempts, minimum=1, maximum=1000
    )
    retry_backoff = t.seconds("retry_backoff", d.retry_backoff, maximum=3600)
    retry_backoff_max = t.seconds("retry_backoff_max", d.retry_backoff_max, maximum=86400)
    if retry_backoff_max < retry_backoff:
        t.blame_pair(
            "retry_backoff_max", retry_backoff_max, ">=", "retry_backoff", retry_backoff
        )
    return RecoveryConfig(
        protection_key=protection_key,
        concurrency=concurrency,
        best_effort_attempts=best_effort_attempts,
        retry_backoff=retry_backoff,
        retry_backoff_max=retry_backoff_max,
        start_timeout=t.seconds("start_timeout", d.start_timeout, maximum=86400),
        tolerate=t.integer("tolerate", d.tolerate, minimum=0, maximum=3),
        admission_interval=t.seconds("admission_interval", d.admission_interval,
                                     maximum=86400),
    )


def _parse_fencing(t: Table) -> FencingConfig:
    # The fencing package owns its schema (per-host backend chains); it reads it through
    # the same schema.Table, naming keys such as fencing.hosts[1].redfish.url.
    return parse_fencing(t.data, source=t.source)


def _parse_daemon(t: Table) -> DaemonConfig:
    d = DaemonConfig()
    return DaemonConfig(
        state_dir=t.path("state_dir", d.state_dir),
        log_format=cast(LogFormat, t.choice("log_format", d.log_format, LOG_FORMATS)),
        log_level=cast(LogLevel, t.choice("log_level", d.log_level, LOG_LEVELS)),
        metrics_port=t.integer("metrics_port", d.metrics_port, minimum=0, maximum=65535),
        metrics_address=_ip_address(t, "metrics_address", d.metrics_address),
    )


def _ip_address(t: Table, key: str, default: str) -> str:
    value = t.string(key, default)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise t.error(key, value, 'expected an IP address to bind, e.g. "127.0.0.1" or '
                      'the management address (scraped from another host)') from None
    return value


# --------------------------------------------------------------------------- files


def _check_files(config: Config, source: str, env: Mapping[str, str]) -> None:
    """Look at the files the config names, so a bad one fails `check-config`, not a failover."""
    xapi = config.xapi
    if xapi.password_file is not None:
        _check_secret(source, "xapi.password_file", xapi.password_file)
    if xapi.password_credential and env.get("CREDENTIALS_DIRECTORY"):
        # Outside systemd (an operator running check-config) there is no credentials
        # directory to look in; the daemon reports a missing one when it reads the secret.
        _check_secret(source, "xapi.password_credential", xapi.password_credential, env)
    if xapi.ca_file is not None and not xapi.ca_file.is_file():
        raise ConfigError(
            f"{source}: xapi.ca_file = {render_value(xapi.ca_file)} is invalid: expected an "
            f"existing PEM file (the pool's CA or the master's certificate)"
        )
    _check_alert_files(config.alerts, source)
    _check_peer_secret(config, source, env)
    for i, entry in enumerate(config.fencing.hosts):
        for backend in entry.chain:
            if backend.password is not None:
                kind = {RedfishSettings: "redfish", IpmiSettings: "ipmi"}.get(
                    type(backend), "agent")
                _check_password(source, f"fencing.hosts[{i}].{kind}", backend.password, env)


def _check_peer_secret(config: Config, source: str, env: Mapping[str, str]) -> None:
    """The pool secret is read, as the daemon will read it at start: a SIGHUP naming a
    missing or public one is refused, and the daemon keeps beating with the old."""
    peers = config.peers
    if peers.secret_file is not None:
        key, value = "peers.secret_file", str(peers.secret_file)
    elif peers.secret_credential and env.get("CREDENTIALS_DIRECTORY"):
        key, value = "peers.secret_credential", peers.secret_credential
    else:
        return
    try:
        read_peer_secret(config, env=env)
    except CredentialError as e:
        raise ConfigError(f"{source}: {key} = {render_value(value)} is unusable: {e}") from None


def _check_password(source: str, prefix: str, secret: Secret, env: Mapping[str, str]) -> None:
    if secret.file is not None:
        _check_secret(source, f"{prefix}.password_file", secret.file)
    elif secret.credential and env.get("CREDENTIALS_DIRECTORY"):
        _check_secret(source, f"{prefix}.password_credential", secret.credential, env)


def _check_alert_files(alerts: AlertsConfig, source: str) -> None:
    if alerts.webhook_token_file is not None:
        _check_secret(source, "alerts.webhook_token_file", alerts.webhook_token_file)
    if alerts.ca_file is not None and not alerts.ca_file.is_file():
        raise ConfigError(
            f"{source}: alerts.ca_file = {render_value(alerts.ca_file)} is invalid: expected "
            "an existing PEM file (the CA of the webhook servers' certificates)"
        )
    if alerts.exec is not None:
        problem = _hook_problem(alerts.exec)
        if problem:
            raise ConfigError(
                f"{source}: alerts.exec = {render_value(alerts.exec)} is invalid: {problem}"
            )


def _check_secret(source: str, key: str, value: Path | str,
                  env: Mapping[str, str] | None = None) -> None:
    """`value`, a secret file's path (or, given `env`, a systemd credential's name), names
    a file only root may read; else a ConfigError naming the key that gave it."""
    try:
        path = Path(value) if env is None else credentials.credential_path(str(value), env)
        credentials.check_secret_file(path)
    except CredentialError as e:
        raise ConfigError(f"{source}: {key} = {render_value(value)} is unusable: {e}") from None


def _hook_problem(path: Path) -> str:
    """Why the alert hook must not be run, or "". It runs as root, so a file someone else
    could rewrite would hand them root."""
    try:
        st = path.stat()
    except OSError as e:
        return f"cannot be used ({e.strerror}): expected an existing executable file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file: expected an executable file"
    if not os.access(path, os.X_OK):
        return f"is not executable: run chmod 755 {path}"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): " \
            f"run chmod go-w {path}"
    if st.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {st.st_uid}, not by root: run chown root {path}"
    return ""


def _parse_peers(t: Table) -> PeersConfig:
    d = PeersConfig()
    secret_file = t.optional_path("secret_file", d.secret_file)
    secret_credential = t.string(
        "secret_credential",
        d.secret_credential,
        pattern=r"[A-Za-z0-9_.:@+-]{1,255}",
        expected="expected a systemd credential name (letters, digits, _ . : @ + -)",
    )
    if secret_file is not None and secret_credential:
        raise t.error("secret_credential", secret_credential,
                      "expected only one of peers.secret_file and peers.secret_credential")
    port = t.integer("port", d.port, minimum=1, maximum=65535)
    listen_port = t.integer("listen_port", d.listen_port, minimum=0, maximum=65535)
    interval = t.seconds("interval", d.interval, maximum=60)
    window = t.seconds("window", d.window, maximum=3600)
    if window < 3 * interval:
        # Contact is proven by a round trip (peers/table.py): the echo of a heartbeat of
        # ours comes back up to 2.5 intervals after we sent it (each side waits up to an
        # interval to send and a quarter of one to read), and one lost datagram must not
        # put a peer out of contact.
        t.blame_pair("window", window, ">=", "interval", 3 * interval)
    return PeersConfig(secret_file, secret_credential, port, listen_port, interval, window)


def _parse_failover(t: Table) -> FailoverConfig:
    d = FailoverConfig()
    return FailoverConfig(
        enabled=t.boolean("enabled", d.enabled),
        priority=t.integer("priority", d.priority, minimum=-1000, maximum=1000),
        sync_interval=t.seconds("sync_interval", d.sync_interval, allow_zero=True,
                                maximum=86400),
        recover_retry=t.seconds("recover_retry", d.recover_retry, maximum=3600),
        lock_ttl=t.seconds("lock_ttl", d.lock_ttl, maximum=3600),
        promote_timeout=t.seconds("promote_timeout", d.promote_timeout, maximum=3600),
        witness=t.optional_path("witness", d.witness),
    )


def _parse_alerts(t: Table) -> AlertsConfig:
    d = AlertsConfig()
    urls = t.array("webhooks", str, d.webhooks, unique=True,
                   expected='expected an array of URLs, e.g. ["https://alerts.example.com/xenhad"]')
    token_file = t.optional_path("webhook_token_file", d.webhook_token_file)
    for url in urls:
        _check_webhook(t, urls, url, token=token_file is not None)
    if token_file is not None and not urls:
        raise t.error("webhook_token_file", str(token_file),
                      "alerts.webhook_token_file is only used with alerts.webhooks: add a "
                      "webhook or remove it")
    verify_tls = t.boolean("verify_tls", d.verify_tls)
    ca_file = t.optional_path("ca_file", d.ca_file)
    if ca_file is not None and not verify_tls:
        raise t.error("ca_file", str(ca_file),
                      "alerts.ca_file is only used with alerts.verify_tls = true: remove one "
                      "of them")
    return AlertsConfig(
        webhooks=tuple(urls),
        webhook_token_file=token_file,
        exec=t.optional_path("exec", d.exec),
        timeout=t.seconds("timeout", d.timeout, maximum=600),
        retries=t.integer("retries", d.retries, minimum=0, maximum=10),
        verify_tls=verify_tls,
        ca_file=ca_file,
        xapi_messages=t.boolean("xapi_messages", d.xapi_messages),
        message_repeat=t.seconds("message_repeat", d.message_repeat, maximum=86400),
    )


def _check_webhook(t: Table, urls: list[str], url: str, *, token: bool) -> None:
    def bad(why: str) -> ConfigError:
        # The whole array is the value; a url with a password in it is masked, not echoed.
        return t.error("webhooks", [_shown_url(u) for u in urls], why)

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise bad(f'{json.dumps(url)} is not a URL: expected e.g. "https://alerts.example.com/"'
                  ) from None
    shown = json.dumps(_shown_url(url))
    if parts.scheme.lower() not in ("http", "https"):
        raise bad(f"{shown} is not an http:// or https:// URL")
    if not parts.hostname:
        raise bad(f'{shown} has no host name: expected e.g. "https://alerts.example.com/"')
    if parts.username is not None or parts.password is not None:
        raise bad(f"{shown} carries a user or password: keep credentials out of the config, "
                  "put a token in alerts.webhook_token_file")
    if token and parts.scheme.lower() == "http" and not _is_loopback(parts.hostname):
        raise bad(f"{shown} would send the webhook token in clear: use https://, or remove "
                  "alerts.webhook_token_file")


def _shown_url(url: str) -> str:
    try:
        return _hide_userinfo(url, urlsplit(url))
    except ValueError:
        return url


def _is_loopback(hostname: str) -> bool:
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _check_cross_sections(config: Config, source: str) -> None:
    if config.failover.witness is not None and not config.peers.enabled:
        raise ConfigError(
            f"{source}: failover.witness needs peer heartbeats: set peers.secret_file (the "
            "same pool secret on every host), or remove failover.witness"
        )
    self_fence = config.fencing.self_fence
    if self_fence is not None and not config.peers.enabled:
        raise ConfigError(
            f"{source}: fencing.self_fence needs peer heartbeats: set peers.secret_file (the "
            "same pool secret on every host), or remove fencing.self_fence"
        )
    if self_fence is None:
        return
    # The heartbeat loop feeds every peers.interval (daemon._feed_watchdog): a watchdog that
    # fires within a few of them resets a healthy host whose loop was late once.
    least = 3 * config.peers.interval
    if self_fence.timeout < least:
        raise ConfigError(
            f"{source}: fencing.self_fence.timeout = {self_fence.timeout} is invalid: expected "
            f">= 3 x peers.interval ({least:g}), or one late feed resets a healthy host"
        )
    # The deadline's proof (peers/table.py, latest_feed) holds whatever a tick or a network
    # delay costs; what is left for the margin is the watchdog's own whole-second resolution,
    # the reset's time to stop the VMs, and the two hosts' clocks running at slightly
    # different rates over the timeout.
    least_margin = max(1.0, self_fence.timeout / 100)
    if self_fence.margin < least_margin:
        raise ConfigError(
            f"{source}: fencing.self_fence.margin = {self_fence.margin:g} is invalid: expected "
            f">= {least_margin:g} s (1 s, and 1% of the timeout): it covers the watchdog's "
            "whole-second resolution, the reset itself and clock drift"
        )


def read_peer_secret(config: Config, *, env: Mapping[str, str] | None = None) -> str:
    """The pool secret for heartbeats; CredentialError (one line) when unreadable or short."""
    peers = config.peers
    if peers.secret_file is not None:
        secret = credentials.read_secret(file=peers.secret_file)
    else:
        secret = credentials.read_secret(credential=peers.secret_credential, env=env)
    if len(secret.strip()) < 16:
        raise CredentialError(
            "the pool secret for peer heartbeats is shorter than 16 characters: write a long "
            "random one (e.g. `openssl rand -hex 32`) to the same file on every host"
        )
    return secret.strip()


def read_xapi_password(config: Config, *, env: Mapping[str, str] | None = None) -> str:
    """The XAPI password the config points at; "" for the local socket, which ignores it.

    CredentialError (one line, never containing the secret) when it cannot be read.
    """
    xapi = config.xapi
    if xapi.password_file is not None:
        return credentials.read_secret(file=xapi.password_file)
    if xapi.password_credential:
        return credentials.read_secret(credential=xapi.password_credential, env=env)
    return ""
