"""The XAPI methods the simulator answers, with xapi's checks and error codes.

`call(pool, host, channel, source, method, params)` runs one request that reached `host`
over `channel` ("tcp" or "unix") from `source` (a host, or None for the outside). It returns
the value or raises XapiFailure; `Blackhole` means the request must never be answered
(a slave forwarding to an unreachable master, a hung or cut-off host on the way).

A call that takes sim time (VM.start boots, event.from waits for news) answers `Pending`:
steps that yield `Wait` or `WaitChange`. `call` performs them on the request's thread;
xenhad.virtual performs the same steps on its virtual loop (`dispatch`), so the XML-RPC
servers and the in-process pool run one and the same code.
"""

from __future__ import annotations

import threading
import xmlrpc.client
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Union

from xenhad.sim.model import (
    CLASSES,
    I32,
    NULL_REF,
    Db,
    Record,
    XapiFailure,
    boot_record,
    build_pool,
    host_free_memory,
    render,
    task_record,
    vm_memory,
    vm_memory_overhead,
)
from xenhad.sim.pool import HostState, Route, SimPool
from xenhad.sim.spec import PoolSpec


class Blackhole(Exception):
    """The request is held and never answered."""


@dataclass(frozen=True)
class Wait:
    """Hold the request `seconds` of sim time, the pool's lock released meanwhile."""

    seconds: float


@dataclass(frozen=True)
class WaitChange:
    """Hold the request until the pool changes, or until sim time `deadline`."""

    deadline: float


Steps = Generator[Union[Wait, WaitChange], None, Any]


class Pending:
    """A call that takes sim time before it answers: run `steps` to its return value."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps


def finish(pool: SimPool, value: Any) -> Any:
    """`value`, or a Pending call performed on this thread (pool lock held, as for any
    call: its waits release it)."""
    if not isinstance(value, Pending):
        return value
    steps = value.steps
    try:
        step = next(steps)
        while True:
            if isinstance(step, Wait):
                pool.wait_sim(step.seconds)
            else:
                pool.wait_change(step.deadline)
            step = next(steps)
    except StopIteration as done:
        return done.value


@dataclass(frozen=True)
class Admission:
    """How a request that reached a powered host's xapi is met before it is performed."""

    hold: bool
    """Never answered: a cut between the client and this host, or a hung xapi."""
    delay: float
    """Injected latency (seconds) before it is performed."""
    epoch: int
    """The host's epoch as it arrived: a xapi restart since closes the held connection."""


def admit(pool: SimPool, host: HostState, channel: str, source: HostState | None,
          name: str) -> Admission:
    """Pool lock held. The UNIX socket is local: no network cut lies on its way."""
    hold = pool.route(source, host) != Route.OK and channel == "tcp"
    if host.xapi == "hung":
        hold = True
    delay = host.latency.get(name, host.latency.get("*", 0.0))
    return Admission(hold, delay, host.epoch)


def injected_failure(host: HostState, name: str) -> list[str] | None:
    """Pool lock held. The next injected error of `name` on this host, used up."""
    for err in host.errors:
        if err.method == name and err.count != 0:
            err.count -= 1
            host.errors[:] = [e for e in host.errors if e.count != 0]
            return [err.code, *err.params]
    return None


@dataclass
class Ctx:
    pool: SimPool
    host: HostState
    """The host whose xapi received the request."""
    served: HostState
    """The host whose database answers: the receiving host or the master it forwards to."""
    channel: str
    source: HostState | None
    method: str
    session: str = ""

    @property
    def db(self) -> Db:
        return self.served.db


Handler = Callable[..., Any]
_METHODS: dict[str, tuple[Handler, int, int, str]] = {}
"""wire name -> (handler, min params, max params (excluding the session), kind)."""

LOCAL = "local"      # handled by the receiving host itself (emergency calls, datamodel.ml)
MASTER = "master"    # handled on the master's database (forwarded by a slave)
LOGIN = "login"


def method(name: str, nparams: int, kind: str = MASTER, max_params: int | None = None,
           ) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _METHODS[name] = (fn, nparams, nparams if max_params is None else max_params, kind)
        return fn

    return register


def known_methods() -> list[str]:
    return sorted(_METHODS)


# ---- dispatch -------------------------------------------------------------------------


def call(pool: SimPool, host: HostState, channel: str, source: HostState | None,
         name: str, params: list[Any]) -> Any:
    return finish(pool, dispatch(pool, host, channel, source, name, params))


def dispatch(pool: SimPool, host: HostState, channel: str, source: HostState | None,
             name: str, params: list[Any]) -> Any:
    """The call's value, or `Pending` steps to perform (pool lock held throughout)."""
    if name.startswith("Async."):
        return _call_async(pool, host, channel, source, name, params)
    entry = _METHODS.get(name)
    if entry is None:
        raise XapiFailure("MESSAGE_METHOD_UNKNOWN", [name])
    fn, low, high, kind = entry
    with_session = kind != LOGIN
    given = len(params) - (1 if with_session else 0)
    if not low <= given <= high:
        # server_helpers.ml: MESSAGE_PARAMETER_COUNT_MISMATCH [method; expected; received],
        # as gen_server.ml counts them: expected is the parameters without a default value,
        # received the parameters given, the session not counted in either.
        raise XapiFailure("MESSAGE_PARAMETER_COUNT_MISMATCH", [name, str(low), str(given)])
    ctx = Ctx(pool, host, host, channel, source, name)
    if kind in (LOGIN, LOCAL) or host.is_master:
        pool.count_call(host, name)
    if host.emergency and kind != LOCAL:
        # api_server.ml: a slave in emergency mode refuses all but the emergency calls.
        raise XapiFailure("HOST_STILL_BOOTING", [])
    if kind == LOGIN:
        return fn(ctx, *params)
    ctx.session = str(params[0])
    if kind == LOCAL:
        _check_local_session(ctx)
        return fn(ctx, *params[1:])
    if not host.is_master:
        ctx.served = _forward_target(pool, host)
        pool.count_call(ctx.served, name)  # what the master's xapi pays for its slaves
    _check_session(ctx)
    return fn(ctx, *params[1:])


def _call_async(pool: SimPool, host: HostState, channel: str, source: HostState | None,
                name: str, params: list[Any]) -> str:
    """server_helpers.ml: `Async.<call>` answers a task ref at once and runs the call in its
    own thread; the task's status, result (an XML-RPC <value>, "" for void) and error_info
    say how it ended (event.from reports every change of it)."""
    inner = name[len("Async."):]
    entry = _METHODS.get(inner)
    if entry is None or entry[3] != MASTER:
        raise XapiFailure("MESSAGE_METHOD_UNKNOWN", [name])
    fn, low, high, _ = entry
    given = len(params) - 1
    if not low <= given <= high:
        raise XapiFailure("MESSAGE_PARAMETER_COUNT_MISMATCH", [name, str(low), str(given)])
    ctx = Ctx(pool, host, host, channel, source, inner, session=str(params[0]))
    if host.emergency:
        raise XapiFailure("HOST_STILL_BOOTING", [])
    if not host.is_master:
        ctx.served = _forward_target(pool, host)
    _check_session(ctx)
    pool.count_call(ctx.served, name)
    db = ctx.db
    task = _new_ref(pool)
    db.add("task", task, task_record(_new_ref(pool)[len("OpaqueRef:"):], name, "",
                                     ctx.served.ref, pool.clock.wall()))

    def run() -> None:
        with pool.lock:
            try:
                value = finish(pool, fn(ctx, *params[1:]))
            except XapiFailure as e:
                outcome = {"status": "failure", "error_info": e.description()}
            except Blackhole:
                return  # the call hangs, and so does its task
            else:
                outcome = {"status": "success", "result": _xmlrpc_value(value)}
            if task in db.tables["task"]:
                for field, v in {**outcome, "progress": 1.0,
                                 "finished": _now(pool)}.items():
                    db.set(task, field, v)
            pool.changed.notify_all()

    threading.Thread(target=run, name=f"sim-{name}", daemon=True).start()
    return task


def _xmlrpc_value(value: Any) -> str:
    if value == "" or value is None:
        return ""
    text = xmlrpc.client.dumps((value,), allow_none=True)
    return text[text.index("<value>"):text.rindex("</value>") + len("</value>")]


def _now(pool: SimPool) -> Any:
    import time

    return xmlrpc.client.DateTime(time.strftime("%Y%m%dT%H:%M:%SZ",
                                                time.gmtime(pool.clock.wall())))


def _forward_target(pool: SimPool, host: HostState) -> HostState:
    """A slave's database calls go to the master it believes in; when that master cannot be
    reached master_connection.ml retries for ever: the request hangs."""
    m = pool.master_of(host)
    if m is None or not m.is_master or pool.route(host, m) != Route.OK or m.xapi != "up":
        raise Blackhole()
    return m


def _check_session(ctx: Ctx) -> None:
    if ctx.session in ctx.db.sessions:
        return
    if ctx.served is ctx.host and ctx.session in ctx.host.local_sessions:
        return
    raise XapiFailure("SESSION_INVALID", [ctx.session])


def _check_local_session(ctx: Ctx) -> None:
    if ctx.session in ctx.host.local_sessions or ctx.session in ctx.host.db.sessions:
        return
    m = ctx.pool.master_of(ctx.host)
    if m is not None and m.powered and ctx.session in m.db.sessions:
        return
    raise XapiFailure("SESSION_INVALID", [ctx.session])


def _new_ref(pool: SimPool) -> str:
    return pool.new_ref()


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise XapiFailure("FIELD_TYPE_ERROR", [what])
    return value


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise XapiFailure("FIELD_TYPE_ERROR", [what])


# ---- session --------------------------------------------------------------------------


def _password_ok(ctx: Ctx, uname: str, pwd: str) -> None:
    # xapi_session.ml do_local_auth: only the local superuser, checked against its password.
    if uname != "root" or pwd != ctx.pool.spec.root_password:
        raise XapiFailure("SESSION_AUTHENTICATION_FAILED",
                          [uname, "Authentication failure"])


def _refused_late(failure: XapiFailure, seconds: float) -> Steps:
    # xapi_session.ml login_with_password, thread_delay_and_raise_error: a master sleeps
    # (5 s) before it answers a failed login (PoolSpec.failed_login_seconds).
    yield Wait(seconds)
    raise failure


@method("session.login_with_password", 2, LOGIN, max_params=4)
def login_with_password(ctx: Ctx, uname: Any, pwd: Any, *_: Any) -> str | Pending:
    uname, pwd = _str(uname, "uname"), _str(pwd, "pwd")
    if ctx.host.emergency:
        raise XapiFailure("HOST_STILL_BOOTING", [])
    if ctx.channel == "unix":
        # Pre-authenticated as root (xapi_session.ml, Context.preauth); the session lives in
        # the pool database, so on a slave creating it needs the master: it hangs when the
        # master cannot be reached (master_connection.ml retries for ever).
        served = ctx.host if ctx.host.is_master else _forward_target(ctx.pool, ctx.host)
    else:
        if not ctx.host.is_master:
            # xapi_session.ml login_with_password: raised before any authentication.
            raise XapiFailure("HOST_IS_SLAVE", [ctx.host.running_master])
        try:
            _password_ok(ctx, uname, pwd)
        except XapiFailure as failure:
            if ctx.pool.spec.failed_login_seconds > 0:
                return Pending(_refused_late(failure, ctx.pool.spec.failed_login_seconds))
            raise
        served = ctx.host
    ref = _new_ref(ctx.pool)
    served.db.sessions[ref] = {"this_host": served.ref, "this_user": uname,
                               "last_active": ctx.pool.now()}
    return ref


@method("session.slave_local_login_with_password", 2, LOGIN)
def slave_local_login_with_password(ctx: Ctx, uname: Any, pwd: Any) -> str:
    uname, pwd = _str(uname, "uname"), _str(pwd, "pwd")
    if ctx.channel != "unix":
        _password_ok(ctx, uname, pwd)
    # xapi_local_session.ml: kept in this host's memory only, gone when xapi restarts.
    ref = _new_ref(ctx.pool)
    ctx.host.local_sessions.add(ref)
    return ref


@method("session.local_logout", 0, LOCAL)
def local_logout(ctx: Ctx) -> str:
    ctx.host.local_sessions.discard(ctx.session)
    return ""


@method("session.logout", 0)
def logout(ctx: Ctx) -> str:
    ctx.db.sessions.pop(ctx.session, None)
    ctx.host.local_sessions.discard(ctx.session)
    return ""


@method("session.get_this_host", 1)
def session_get_this_host(ctx: Ctx, sess: Any) -> str:
    s = ctx.db.sessions.get(str(sess))
    if s is None:
        raise XapiFailure("SESSION_INVALID", [str(sess)])
    return str(s["this_host"])


# ---- generic class methods ------------------------------------------------------------


def _visible(cls: str, db: Db) -> list[str]:
    return list(db.tables[cls])


def _register_class(cls: str, fields: list[str]) -> None:
    def get_all(ctx: Ctx) -> list[str]:
        return _visible(cls, ctx.db)

    def get_all_records(ctx: Ctx) -> dict[str, Record]:
        return {ref: render(ctx.db, cls, ref) for ref in _visible(cls, ctx.db)}

    def get_record(ctx: Ctx, ref: Any) -> Record:
        return render(ctx.db, cls, str(ref))

    def get_by_uuid(ctx: Ctx, uuid: Any) -> str:
        return ctx.db.by_uuid(cls, str(uuid))

    method(f"{cls}.get_all", 0)(get_all)
    method(f"{cls}.get_all_records", 0)(get_all_records)
    method(f"{cls}.get_record", 1)(get_record)
    method(f"{cls}.get_by_uuid", 1)(get_by_uuid)
    if "name_label" in fields:
        def get_by_name_label(ctx: Ctx, label: Any) -> list[str]:
            return [r for r, rec in ctx.db.tables[cls].items() if rec["name_label"] == label]

        method(f"{cls}.get_by_name_label", 1)(get_by_name_label)
    for f in fields:
        def getter(ctx: Ctx, ref: Any, _f: str = f) -> Any:
            return render(ctx.db, cls, str(ref))[_f]

        method(f"{cls}.get_{f}", 1)(getter)
    if "other_config" in fields:
        def add_to(ctx: Ctx, ref: Any, key: Any, value: Any) -> str:
            rec = ctx.db.get(cls, str(ref))
            key, value = _str(key, "key"), _str(value, "value")
            if key in rec["other_config"]:
                # db_actions: MAP_DUPLICATE_KEY [table; field; ref; key], an atomic test
                # on the master's database (what xenhad's pool lock relies on).
                raise XapiFailure("MAP_DUPLICATE_KEY", [cls, "other_config", str(ref), key])
            new = dict(rec["other_config"])
            new[key] = value
            ctx.db.set(str(ref), "other_config", new)
            return ""

        def remove_from(ctx: Ctx, ref: Any, key: Any) -> str:
            rec = ctx.db.get(cls, str(ref))
            new = dict(rec["other_config"])
            if new.pop(_str(key, "key"), None) is not None:
                ctx.db.set(str(ref), "other_config", new)
            return ""

        method(f"{cls}.add_to_other_config", 3)(add_to)
        method(f"{cls}.remove_from_other_config", 2)(remove_from)


def register_classes(sample: Db) -> None:
    if "VM.get_all" in _METHODS:
        return
    # A pool with one of everything, whatever `sample` holds: every class gets its getters.
    full, _ = build_pool(PoolSpec(hosts=2, vms=1, groups=1, local_vms=1), 0.0)
    full.add("task", "OpaqueRef:sample", task_record("", "", "", NULL_REF, 0.0))
    for cls in CLASSES:
        some = next(iter(full.tables[cls]))
        fields = list(render(full, cls, some))
        _register_class(cls, fields)


# ---- pool -----------------------------------------------------------------------------


@method("pool.sync_database", 0)
def pool_sync_database(ctx: Ctx) -> str:
    ctx.pool.sync_database_from(ctx.served)
    return ""


@method("pool.emergency_transition_to_master", 0, LOCAL)
def emergency_transition_to_master(ctx: Ctx) -> str:
    h = ctx.host
    # xapi_pool.ml emergency_transition_to_master: refused while HA is armed; otherwise
    # pool.conf says master and xapi restarts after the fuse (Xapi_fuse), on this host's
    # local copy of the database. There is no "already master" check.
    if h.db.pool()["ha_enabled"]:
        raise XapiFailure("HA_IS_ENABLED", [])
    epoch = h.epoch

    def fuse() -> None:
        if h.epoch == epoch and h.powered:
            ctx.pool.become_master(h)

    h.conf_master = h.address
    ctx.pool.after(ctx.pool.spec.fuse_seconds, fuse)
    return ""


@method("pool.emergency_reset_master", 1, LOCAL)
def emergency_reset_master(ctx: Ctx, master_address: Any) -> str:
    # xapi_pool.ml emergency_reset_master: rewrite pool.conf, restart xapi as a slave.
    address = _str(master_address, "master_address")
    if ctx.host.db.pool()["ha_enabled"]:
        raise XapiFailure("HA_IS_ENABLED", [])
    ctx.pool.reset_master(ctx.host, address, ctx.pool.spec.xapi_restart_seconds)
    return ""


@method("pool.recover_slaves", 0)
def recover_slaves(ctx: Ctx) -> list[str]:
    # xapi_pool.ml recover_slaves: emergency_reset_master on every other host; those that
    # fail are silently left out of the result.
    m = ctx.served
    if m.db.pool()["ha_enabled"]:
        raise XapiFailure("HA_IS_ENABLED", [])
    done = []
    for ref in list(m.db.tables["host"]):
        if ref == m.ref:
            continue
        h = ctx.pool.host_by_ref(ref)
        if h is None or ctx.pool.route(m, h) != Route.OK or h.xapi != "up":
            continue
        ctx.pool.reset_master(h, m.address, ctx.pool.spec.xapi_restart_seconds)
        done.append(ref)
    return done


@method("pool.designate_new_master", 1)
def designate_new_master(ctx: Ctx, host: Any) -> str:
    m = ctx.served
    target_ref = str(host)
    ctx.db.get("host", target_ref)
    if target_ref == m.ref:
        return ""
    # xapi_pool.ml designate_new_master: a two-phase commit with every host; any host that
    # cannot be contacted aborts it.
    hosts = []
    for ref in ctx.db.tables["host"]:
        h = ctx.pool.host_by_ref(ref)
        if h is None:
            continue
        if h is not m and (ctx.pool.route(m, h) != Route.OK or h.xapi != "up"):
            raise XapiFailure("CANNOT_CONTACT_HOST", [ref])
        hosts.append(h)
    target = ctx.pool.host_by_ref(target_ref)
    assert target is not None
    target.db = m.db.copy()
    target.conf_master = target.address
    ctx.pool._start_xapi(target)
    for h in hosts:
        if h is not target:
            h.conf_master = target.address
            ctx.pool._start_xapi(h)
    return ""


# ---- host -----------------------------------------------------------------------------


def _do_op_on(ctx: Ctx, ref: str) -> None:
    """message_forwarding.ml do_op_on: a call about another host runs on that host. check_live
    first (HOST_OFFLINE when the database says it is not live), then the forwarded call: a
    refused connection is CANNOT_CONTACT_HOST, a black hole hangs."""
    if ref == ctx.served.ref:
        return
    if not _is_live(ctx.db, ref):
        raise XapiFailure("HOST_OFFLINE", [ref])
    h = ctx.pool.host_by_ref(ref)
    if h is None:
        raise XapiFailure("CANNOT_CONTACT_HOST", [ref])
    r = ctx.pool.route(ctx.served, h)
    if r == Route.BLACKHOLE:
        raise Blackhole()
    if r == Route.REFUSED:
        raise XapiFailure("CANNOT_CONTACT_HOST", [ref])


@method("host.disable", 1, max_params=2)
def host_disable(ctx: Ctx, host: Any, auto_enable: Any = True) -> str:
    ref = str(host)
    ctx.db.get("host", ref)
    _do_op_on(ctx, ref)
    # xapi_host.ml disable: auto_enable=false keeps it disabled across reboots.
    h = ctx.pool.host_by_ref(ref)
    if h is not None and not _bool(auto_enable, "auto_enable"):
        h.auto_enable = False
    ctx.db.set(ref, "enabled", False)
    return ""


@method("host.enable", 1)
def host_enable(ctx: Ctx, host: Any) -> str:
    ref = str(host)
    ctx.db.get("host", ref)
    _do_op_on(ctx, ref)
    h = ctx.pool.host_by_ref(ref)
    if h is not None:
        h.auto_enable = True
    ctx.db.set(ref, "enabled", True)
    return ""


@method("host.compute_free_memory", 1)
def host_compute_free_memory(ctx: Ctx, host: Any) -> int:
    ctx.db.get("host", str(host))
    return host_free_memory(ctx.db, str(host))


def _ask_host(ctx: Ctx, ref: str) -> bool:
    """xapi_host.ml is_host_alive: a host marked live is asked (Pool.is_slave); any error
    means dead, but a black-holed request simply hangs (there is no timeout)."""
    h = ctx.pool.host_by_ref(ref)
    if h is None:
        return False
    metrics = ctx.db.tables["host"][ref]["metrics"]
    if not ctx.db.tables["host_metrics"][metrics]["live"]:
        return False
    r = ctx.pool.route(ctx.served, h)
    if r == Route.BLACKHOLE:
        raise Blackhole()
    return r == Route.OK


@method("host.declare_dead", 1)
def host_declare_dead(ctx: Ctx, host: Any) -> str:
    ref = str(host)
    ctx.db.get("host", ref)
    # xapi_host.ml declare_dead: precheck_destroy_declare_dead refuses a host that answers
    # (is_host_alive: one marked not live is taken as dead without asking, which is why
    # declaring a host dead is only safe once it is off) and the master itself; resets
    # its VMs without touching any domain, disables it, leaves live alone.
    if _ask_host(ctx, ref) or ref == ctx.served.ref:
        raise XapiFailure("HOST_IS_LIVE", [ref])
    for vref, rec in ctx.db.tables["VM"].items():
        if rec["resident_on"] == ref and not rec["is_control_domain"]:
            _force_halted(ctx.db, vref)
    ctx.db.set(ref, "enabled", False)
    return ""


# ---- VM -------------------------------------------------------------------------------


def _force_halted(db: Db, vref: str) -> None:
    # xapi_vm_lifecycle.ml force_state_reset
    db.set(vref, "power_state", "Halted")
    db.set(vref, "resident_on", NULL_REF)
    db.set(vref, "scheduled_to_be_resident_on", NULL_REF)
    db.set(vref, "domid", -1)
    db.set(vref, "current_operations", {})
    db.set(vref, "memory_target", 0)


@method("VM.power_state_reset", 1)
def vm_power_state_reset(ctx: Ctx, vm: Any) -> str:
    vref = str(vm)
    rec = ctx.db.get("VM", vref)
    # xapi_vm.ml power_state_reset: never a control domain; a running VM on a host that
    # answers is refused; it changes the database only, never the real domain.
    if rec["is_control_domain"]:
        raise XapiFailure("CANNOT_RESET_CONTROL_DOMAIN", [vref])
    if rec["power_state"] in ("Running", "Paused"):
        resident = rec["resident_on"]
        if resident == ctx.served.ref:
            if ctx.pool.has_domain(rec["uuid"], ctx.served):
                raise XapiFailure("DOMAIN_EXISTS", [vref])
        elif resident != NULL_REF and _ask_host(ctx, resident):
            raise XapiFailure("HOST_IS_LIVE", [resident])
    _force_halted(ctx.db, vref)
    return ""


def _operation_checks(ctx: Ctx, vref: str, rec: Record, op: str, allowed: list[str]) -> None:
    # xapi_vm_lifecycle.ml check_operation_error: power state first, then concurrent ops,
    # then templates.
    if rec["power_state"] not in allowed:
        raise XapiFailure("VM_BAD_POWER_STATE", [vref, ", ".join(a.lower() for a in allowed),
                                                 rec["power_state"].lower()])
    ops = rec["current_operations"]
    if ops:
        task, cur = next(iter(ops.items()))
        raise XapiFailure("OTHER_OPERATION_IN_PROGRESS", ["VM", vref, cur, task])
    if rec["is_a_template"]:
        raise XapiFailure("VM_IS_TEMPLATE", [vref, op])
    if rec["is_a_snapshot"]:
        raise XapiFailure("VM_IS_SNAPSHOT", [vref, op])
    if rec["is_control_domain"]:
        raise XapiFailure("OPERATION_NOT_ALLOWED", [f"{op} is not allowed on a control domain"])


def _is_live(db: Db, host_ref: str) -> bool:
    # xapi_vm_helpers.ml is_host_live: host_metrics.live, false if it cannot be read.
    metrics = db.tables["host"][host_ref]["metrics"]
    rec = db.tables["host_metrics"].get(metrics)
    return bool(rec and rec["live"])


def _srs_missing(db: Db, rec: Record, host_ref: str) -> list[str]:
    """xapi_vm_helpers.ml assert_can_see_SRs: the SRs of the VM's non-empty VBDs' VDIs (and
    of its suspend VDI when suspended) that have no currently_attached PBD on the host."""
    vdis = [db.tables["VBD"][vbd]["VDI"] for vbd in rec["VBDs"]
            if vbd in db.tables["VBD"] and not db.tables["VBD"][vbd]["empty"]]
    if rec["power_state"] == "Suspended" and rec.get("suspend_VDI", NULL_REF) != NULL_REF:
        vdis.append(rec["suspend_VDI"])
    needed = [db.tables["VDI"][v]["SR"] for v in vdis if v in db.tables["VDI"]]
    seen = {db.tables["PBD"][p]["SR"] for p in db.tables["host"][host_ref]["PBDs"]
            if p in db.tables["PBD"] and db.tables["PBD"][p]["currently_attached"]}
    return [sr for sr in needed if sr not in seen]


def _networks_missing(db: Db, rec: Record, host_ref: str) -> list[str]:
    """xapi_network_attach_helpers.ml assert_can_see_named_networks: a network with PIFs is
    there only on a host with one of them (plugged or not); a managed network without PIFs
    (internal) only where the running VMs on it already are, or anywhere if none runs."""
    missing = []
    for vif in rec["VIFs"]:
        net_ref = db.tables["VIF"][vif]["network"] if vif in db.tables["VIF"] else NULL_REF
        net = db.tables["network"].get(net_ref)
        if net is None:
            continue
        if net["PIFs"]:
            ok = any(db.tables["PIF"][p]["host"] == host_ref for p in net["PIFs"]
                     if p in db.tables["PIF"])
        elif net["other_config"].get("assume_network_is_shared") == "true" \
                or not net["managed"]:
            ok = True
        else:
            running = {db.tables["VM"][db.tables["VIF"][v]["VM"]]["resident_on"]
                       for v in net["VIFs"] if v in db.tables["VIF"]
                       and db.tables["VM"][db.tables["VIF"][v]["VM"]]["power_state"]
                       == "Running"}
            ok = not running or host_ref in running
        if not ok and net_ref not in missing:
            missing.append(net_ref)
    return missing


def _assert_can_boot_here(ctx: Ctx, rec: Record, host_ref: str, vref: str = "",
                          memory: bool = True) -> None:
    # xapi_vm_helpers.ml assert_can_boot_here, in its order: live (before enabled), enabled,
    # SRs, networks, memory (unless asked not to), pCPUs.
    db = ctx.db
    host = db.get("host", host_ref)
    if not _is_live(db, host_ref):
        raise XapiFailure("HOST_NOT_LIVE", [])
    if not host["enabled"]:
        raise XapiFailure("HOST_DISABLED", [host_ref])
    srs = _srs_missing(db, rec, host_ref)
    if srs:
        raise XapiFailure("VM_REQUIRES_SR", [vref, srs[0]])
    nets = _networks_missing(db, rec, host_ref)
    if nets:
        # xapi_network_attach_helpers.ml: VM_REQUIRES_NETWORK [vm; first missing network]
        raise XapiFailure("VM_REQUIRES_NETWORK", [vref, nets[0]])
    if memory:
        need, free = vm_memory(rec), host_free_memory(db, host_ref)
        if free < need:
            raise XapiFailure("HOST_NOT_ENOUGH_FREE_MEMORY", [str(need), str(free)])
    # xapi_vm_helpers.ml assert_enough_pcpus (platform:vcpu-unrestricted lifts it).
    vcpus = int(rec["VCPUs_max"])
    pcpus = int(host["cpu_info"].get("cpu_count", "0"))
    if vcpus > pcpus and rec["platform"].get("vcpu-unrestricted") != "true":
        raise XapiFailure("HOST_NOT_ENOUGH_PCPUS", [str(vcpus), str(pcpus)])


def _anti_affinity_group(db: Db, rec: Record) -> str | None:
    # xapi_vm_helpers.ml vm_has_anti_affinity: the first of its groups whose placement is
    # anti_affinity.
    for g in rec.get("groups", []):
        group = db.tables["VM_group"].get(g)
        if group is not None and group["placement"] == "anti_affinity":
            return str(g)
    return None


def _group_count(db: Db, group: str) -> dict[str, int]:
    """xapi_vm_helpers.ml host_to_vm_count_map: a group's VMs per host, a VM counted where
    it is scheduled to be, else where it runs (a paused VM is not counted)."""
    counts: dict[str, int] = {}
    for vref in db.tables["VM_group"][group]["VMs"]:
        v = db.tables["VM"].get(vref)
        if v is None:
            continue
        host = v["scheduled_to_be_resident_on"]
        if host == NULL_REF:
            host = v["resident_on"] if v["power_state"] == "Running" else NULL_REF
        if host != NULL_REF:
            counts[host] = counts.get(host, 0) + 1
    return counts


def _choose_host(ctx: Ctx, rec: Record) -> str:
    # xapi_vm_helpers.ml choose_host_for_vm_no_wlb: hosts ranked (for an anti-affinity VM:
    # its affinity host first, then by how many of its group's VMs each runs, fewest first,
    # rank_hosts_by_placement); the first rank holding a host that can boot it wins, the
    # roomiest of that rank here.
    db = ctx.db
    group = _anti_affinity_group(db, rec)
    affinity = rec["affinity"]
    ranks: list[list[str]]
    if group is None:
        ranks = [[affinity]] if affinity in db.tables["host"] else []
        ranks.append(list(db.tables["host"]))
    else:
        counts = _group_count(db, group)
        others = [h for h in db.tables["host"] if h != affinity]
        by_count: dict[int, list[str]] = {}
        for h in others:
            by_count.setdefault(counts.get(h, 0), []).append(h)
        ranks = [[affinity]] if affinity in db.tables["host"] else []
        ranks.extend(by_count[c] for c in sorted(by_count))
    for rank in ranks:
        candidates = []
        for href in rank:
            try:
                _assert_can_boot_here(ctx, rec, href)
            except XapiFailure:
                continue
            candidates.append((-host_free_memory(db, href), href))
        if candidates:
            return min(candidates)[1]
    raise XapiFailure("NO_HOSTS_AVAILABLE", [])


@method("VM.assert_can_boot_here", 2)
def vm_assert_can_boot_here(ctx: Ctx, vm: Any, host: Any) -> str:
    vref = str(vm)
    _assert_can_boot_here(ctx, ctx.db.get("VM", vref), str(host), vref)
    return ""


@method("VM.get_possible_hosts", 1)
def vm_get_possible_hosts(ctx: Ctx, vm: Any) -> list[str]:
    # xapi_vm_helpers.ml get_possible_hosts_for_vm: the host it is scheduled to, else every
    # host assert_can_boot_here accepts (memory included).
    vref = str(vm)
    rec = ctx.db.get("VM", vref)
    if rec["scheduled_to_be_resident_on"] != NULL_REF:
        return [str(rec["scheduled_to_be_resident_on"])]
    out = []
    for href in ctx.db.tables["host"]:
        try:
            _assert_can_boot_here(ctx, rec, href, vref)
        except XapiFailure:
            continue
        out.append(href)
    return out


@method("VM.assert_agile", 1)
def vm_assert_agile(ctx: Ctx, vm: Any) -> str:
    # agility.ml caching_vm_t_assert_agile: no vGPU, no VUSB, every disk's SR shared and
    # plugged on every enabled host, every VIF's network with a PIF on every enabled host.
    vref = str(vm)
    db = ctx.db
    rec = db.get("VM", vref)
    if rec["VGPUs"]:
        raise XapiFailure("VM_HAS_VGPU", [vref])
    if rec["VUSBs"]:
        raise XapiFailure("VM_HAS_VUSBS", [vref])
    enabled = {h for h, r in db.tables["host"].items() if r["enabled"]}
    for vbd in rec["VBDs"]:
        if db.tables["VBD"][vbd]["empty"]:
            continue
        sr = db.tables["VDI"][db.tables["VBD"][vbd]["VDI"]]["SR"]
        plugged = {db.tables["PBD"][p]["host"] for p in db.tables["SR"][sr]["PBDs"]
                   if db.tables["PBD"][p]["currently_attached"]}
        if not db.tables["SR"][sr]["shared"] or not enabled <= plugged:
            raise XapiFailure("HA_CONSTRAINT_VIOLATION_SR_NOT_SHARED", [sr])
    for vif in rec["VIFs"]:
        net = db.tables["VIF"][vif]["network"]
        with_pif = {db.tables["PIF"][p]["host"] for p in db.tables["network"][net]["PIFs"]
                    if db.tables["PIF"][p]["bond_slave_of"] == NULL_REF}
        if not enabled <= with_pif:
            raise XapiFailure("HA_CONSTRAINT_VIOLATION_NETWORK_NOT_SHARED", [net])
    return ""


@method("VM.compute_memory_overhead", 1)
def vm_compute_memory_overhead(ctx: Ctx, vm: Any) -> int:
    return vm_memory_overhead(ctx.db.get("VM", str(vm)))


def _start(ctx: Ctx, vref: str, host_ref: str | None, paused: Any, force: Any) -> Steps:
    start_paused = _bool(paused, "start_paused")
    _bool(force, "force")
    db = ctx.db
    rec = db.get("VM", vref)
    _operation_checks(ctx, vref, rec, "start", ["Halted"])
    if host_ref is None:
        host_ref = _choose_host(ctx, rec)
    else:
        _assert_can_boot_here(ctx, rec, host_ref, vref)
    pool = ctx.pool
    target = pool.host_by_ref(host_ref)
    if target is None:
        raise XapiFailure("HANDLE_INVALID", ["host", host_ref])
    if target is not ctx.served:
        # message_forwarding.ml do_op_on: refused connection -> CANNOT_CONTACT_HOST;
        # a black hole leaves the call hanging.
        r = pool.route(ctx.served, target)
        if r == Route.BLACKHOLE:
            raise Blackhole()
        if r == Route.REFUSED:
            raise XapiFailure("CANNOT_CONTACT_HOST", [host_ref])
    task = _new_ref(pool)
    if rec.get("ha_restart_priority") == "restart":
        # xapi_vm.ml start: a "restart" VM started is one HA must keep running.
        db.set(vref, "ha_always_run", True)
    db.set(vref, "current_operations", {task: "start"})
    db.set(vref, "scheduled_to_be_resident_on", host_ref)
    epoch = target.epoch
    yield Wait(pool.spec.vm_start_seconds)
    if not target.powered or target.epoch != epoch:
        db.set(vref, "current_operations", {})
        db.set(vref, "scheduled_to_be_resident_on", NULL_REF)
        raise XapiFailure("CANNOT_CONTACT_HOST", [host_ref])
    pool.add_domain(rec["uuid"], rec["name_label"], target)
    db.set(vref, "power_state", "Paused" if start_paused else "Running")
    db.set(vref, "resident_on", host_ref)
    db.set(vref, "scheduled_to_be_resident_on", NULL_REF)
    db.set(vref, "memory_target", int(rec["memory_dynamic_max"]))
    db.set(vref, "domid", 100 + sum(1 for _ in pool.domains))
    db.set(vref, "last_booted_record", boot_record(db.get("VM", vref)))
    # xapi_vm.ml start / message_forwarding.ml start_on: Xapi_vm_helpers.start_delay sleeps
    # start_delay seconds after the domain is up, still inside the start operation.
    delay = int(rec.get("start_delay", 0) or 0)
    if delay > 0:
        yield Wait(delay)
    db.set(vref, "current_operations", {})
    return ""


@method("VM.start", 3)
def vm_start(ctx: Ctx, vm: Any, start_paused: Any, force: Any) -> Pending:
    return Pending(_start(ctx, str(vm), None, start_paused, force))


@method("VM.start_on", 4)
def vm_start_on(ctx: Ctx, vm: Any, host: Any, start_paused: Any, force: Any) -> Pending:
    return Pending(_start(ctx, str(vm), str(host), start_paused, force))


def _shutdown(ctx: Ctx, vm: Any) -> str:
    vref = str(vm)
    db = ctx.db
    rec = db.get("VM", vref)
    _operation_checks(ctx, vref, rec, "hard_shutdown", ["Running", "Paused", "Suspended"])
    resident = rec["resident_on"]
    h = ctx.pool.host_by_ref(resident)
    if h is not None and h is not ctx.served:
        # message_forwarding.ml check_live, then the call to the host itself.
        metrics = db.tables["host"][resident]["metrics"]
        if not db.tables["host_metrics"][metrics]["live"]:
            raise XapiFailure("HOST_OFFLINE", [resident])
        r = ctx.pool.route(ctx.served, h)
        if r == Route.BLACKHOLE:
            raise Blackhole()
        if r == Route.REFUSED:
            raise XapiFailure("CANNOT_CONTACT_HOST", [resident])
    if h is not None:
        ctx.pool.remove_domain(rec["uuid"], h)
    # xapi_vm.ml hard_shutdown / clean_shutdown_with_timeout: shut down on purpose, so HA
    # leaves it halted (a shutdown from inside the guest keeps the flag, and HA restarts it).
    db.set(vref, "ha_always_run", False)
    _force_halted(db, vref)
    return ""


@method("VM.hard_shutdown", 1)
def vm_hard_shutdown(ctx: Ctx, vm: Any) -> str:
    return _shutdown(ctx, vm)


@method("VM.clean_shutdown", 1)
def vm_clean_shutdown(ctx: Ctx, vm: Any) -> str:
    return _shutdown(ctx, vm)


# ---- event ----------------------------------------------------------------------------


def _parse_token(token: str) -> int:
    # xapi_event.ml Token.of_string: "" or "<generation>,<message generation>".
    if token == "":
        return 0
    parts = token.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return int(parts[0])
    except ValueError:
        raise XapiFailure("EVENT_FROM_TOKEN_PARSE_FAILURE", [token]) from None


def _matches(classes: list[str], cls: str, ref: str) -> bool:
    lower = cls.lower()
    for c in classes:
        if c == "*" or c.lower() == lower:
            return True
        if "/" in c:
            k, r = c.split("/", 1)
            if k.lower() == lower and r == ref:
                return True
    return False


@method("system.listMethods", 0, LOGIN)
def system_list_methods(ctx: Ctx) -> list[str]:
    # api_server.ml answers it without a session (and, over XML-RPC, without the
    # Status/Value envelope: rpc.py).
    return known_methods()


@method("event.inject", 2)
def event_inject(ctx: Ctx, cls: Any, ref: Any) -> str:
    # xapi_event.ml inject: a "mod" of the object now, and the token just before it, so an
    # event.from from that token sees at least that one event.
    db = ctx.db
    table = next((t for t in db.tables if t.lower() == _str(cls, "class").lower()), None)
    if table is None or str(ref) not in db.tables[table]:
        raise XapiFailure("HANDLE_INVALID", [str(cls), str(ref)])
    token = f"{db.generation:020d},{0:020d}"
    db.touch(str(ref))
    ctx.pool.changed.notify_all()
    return token


@method("task.create", 2)
def task_create(ctx: Ctx, label: Any, description: Any) -> str:
    ref = _new_ref(ctx.pool)
    ctx.db.add("task", ref, task_record(ref[len("OpaqueRef:"):], _str(label, "label"),
                                        _str(description, "description"), ctx.served.ref,
                                        ctx.pool.clock.wall()))
    return ref


@method("task.destroy", 1)
def task_destroy(ctx: Ctx, task: Any) -> str:
    ctx.db.get("task", str(task))
    ctx.db.remove("task", str(task))
    return ""


@method("task.cancel", 1)
def task_cancel(ctx: Ctx, task: Any) -> str:
    # xapi_task.ml cancel: only a cancellable operation stops; VM.start in the simulator
    # is not one, so the task runs to its end.
    ctx.db.get("task", str(task))
    return ""


@method("event.from", 3)
def event_from(ctx: Ctx, classes: Any, token: Any, timeout: Any) -> Pending:
    return Pending(_event_from(ctx, classes, token, timeout))


def _event_from(ctx: Ctx, classes: Any, token: Any, timeout: Any) -> Steps:
    if not isinstance(classes, list):
        raise XapiFailure("FIELD_TYPE_ERROR", ["classes"])
    subs = [str(c) for c in classes]
    since = _parse_token(_str(token, "token"))
    try:
        wait = float(timeout)
    except (TypeError, ValueError):
        raise XapiFailure("FIELD_TYPE_ERROR", ["timeout"]) from None
    pool = ctx.pool
    deadline = pool.clock.now() + max(0.0, wait)
    db = ctx.db
    while True:
        events = _collect(db, subs, since)
        if events or pool.clock.now() >= deadline or not pool.running:
            break
        yield WaitChange(deadline)
    return {
        "events": events,
        "valid_ref_counts": {cls.lower(): I32(len(t)) for cls, t in db.tables.items()},
        # xapi_event.ml Token.to_string: zero-padded so tokens compare as strings.
        "token": f"{db.generation:020d},{0:020d}",
    }


def _collect(db: Db, subs: list[str], since: int) -> list[Record]:
    out: list[tuple[int, Record]] = []
    for ref, gen in db.modified.items():
        if gen <= since:
            continue
        cls = db.class_of[ref]
        if not _matches(subs, cls, ref) or ref not in db.tables[cls]:
            continue
        op = "add" if db.created[ref] > since else "mod"
        out.append((gen, {"id": str(gen), "timestamp": "0.0", "class": cls.lower(),
                          "operation": op, "ref": ref, "snapshot": render(db, cls, ref)}))
    for gen, cls, ref in db.deleted:
        if gen > since and _matches(subs, cls, ref):
            out.append((gen, {"id": str(gen), "timestamp": "0.0", "class": cls.lower(),
                              "operation": "del", "ref": ref}))
    out.sort(key=lambda e: e[0])
    return [e for _, e in out]
