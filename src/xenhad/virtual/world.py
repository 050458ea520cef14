"""One run's world: a SimPool on the virtual loop, and the wire its xapis answer on.

The pool is the simulator's own (sim/pool.py, sim/api.py): the same model, the same
semantics and error codes as the XML-RPC servers, but nothing listens and no thread runs.
Its timers (heartbeat rounds, fuses, boots, watchdog deadlines) are ticked by the loop at
their due time; a call that takes sim time (VM.start, event.from) is performed step by
step (api.Pending) on the loop; a request the simulator would hold unanswered is held
until its client's timeout, on the virtual clock.

`request` is the wire: what a client on `source` gets back from `target`'s xapi, as the
reply the XML-RPC server would have written (rpc.xmlrpc_reply), or `NoAnswer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import random
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from xenhad.sim import api, rpc
from xenhad.sim import messages as _messages  # noqa: F401  (registers the message class)
from xenhad.sim.model import XapiFailure
from xenhad.sim.pool import HostState, SimError, SimPool
from xenhad.sim.spec import PoolSpec
from xenhad.virtual import marshal
from xenhad.virtual.loop import VirtualClock, VirtualLoop
from xenhad.xapi.transport import parse_reply


class NoAnswer(Exception):
    """The request got no answer: `reason` as a socket would say it, `sent` whether it
    may have reached the xapi (see xapi/errors.py XapiUnreachable)."""

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


TIMED_OUT = "timed out"
REFUSED = "Connection refused"
CLOSED = "Remote end closed connection without response"
"""http.client's words when a held request's xapi restarted (Xapi_fuse: the process exits
and the kernel closes its connections, rpc.py _hold)."""


_RESOLUTION = 1e-6
"""Seconds below which a wait is over: the loop runs a timer due within its clock's
resolution at once, without moving its clock to it."""


class _SimTime:
    """The simulator's clock (sim/clock.py SimTime) read from the virtual loop."""

    time_scale = 1.0

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self.floor = 0.0
        """The latest timer ticked: the loop runs a timer due within its clock's resolution
        a hair early, and the pool must see it due (else it is never run)."""

    def now(self) -> float:
        return max(self._clock.monotonic(), self.floor)

    def wall(self) -> float:
        return self._clock.wall()

    def advance(self, seconds: float) -> None:
        raise SimError("advance: a pool run in process moves with its virtual loop")

    def real_seconds(self, sim_seconds: float) -> float:
        return max(0.0, sim_seconds)


@dataclass
class _Connection:
    epoch: int
    holding: bool = False


class _Closed(Exception):
    pass


def _as_handled(name: str, params: list[Any], wire: bool) -> list[Any]:
    """What the server's handler is given: the params after their XML-RPC round trip."""
    try:
        if not wire:
            return marshal.sent(params)
    except marshal.Unusual:
        pass
    body = xmlrpc.client.dumps(tuple(params), name, allow_none=True)
    parsed, _ = xmlrpc.client.loads(body, use_builtin_types=False)
    return [rpc._from_wire(p) for p in parsed]


@dataclass(frozen=True)
class Reply:
    """xapi's answer to one call, as its XML-RPC server would write it (`body`), or as the
    client's parser reads it (`read`: the same value, without writing the XML when its
    round trip is a plain copy, virtual/marshal.py)."""

    name: str
    kind: str
    value: Any
    wire: bool = False
    """Read from the bytes always (World.wire)."""

    def body(self) -> bytes:
        return rpc.xmlrpc_reply(self.name, self.kind, self.value)

    def read(self, endpoint: str, unread: frozenset[str]) -> Any:
        try:
            if not self.wire:
                return marshal.read(self.name, self.kind, self.value, unread)
        except marshal.Unusual:
            pass
        return parse_reply(self.body(), endpoint, unread)[0]


class World:
    """The loop, its clock, the run's one Random and the pool. Make it inside the loop
    (`VirtualLoop.run_until_complete` or `virtual.loop.run`)."""

    def __init__(self, loop: VirtualLoop, spec: PoolSpec, rng: random.Random, *,
                 wire: bool = False) -> None:
        """`wire`: every request and reply goes through its XML, as the server and the
        client write and parse it (else only those whose round trip is not a plain copy,
        virtual/marshal.py)."""
        self.loop = loop
        self.wire = wire
        self.clock = VirtualClock(loop)
        self.rng = rng
        # Nothing listens: the socket paths are names only, no directory is made.
        spec = replace(spec, base_dir=spec.base_dir or "/virtual")
        self.context = contextvars.Context()
        """The world's own context: its timers and the calls it performs run in it, never
        in a caller's (xenhad.virtual.daemons ends a dead daemon's callbacks)."""
        self._ticks_at: set[float] = set()
        self._change: asyncio.Future[None] | None = None
        self._sim_time = _SimTime(self.clock)
        self.pool = SimPool(spec, clock=self._sim_time, rng=self.fork(), on_timer=self._due)
        self.pool.changed.listeners.append(self._changed)
        self.observers: list[Callable[[], None]] = []
        """Called after each of the pool's ticks and each step of a call it performs, once
        the step is whole: where a run checks its invariants after every event."""
        self.pool.start_in_process()

    def fork(self) -> random.Random:
        """A Random of its own for one component, drawn from the run's: components built in
        the same order get the same streams, whatever each draws later."""
        return random.Random(self.rng.getrandbits(64))

    def close(self) -> None:
        self.pool.stop()

    # -- the pool's timers and changes ----------------------------------------------------

    def _due(self, at: float) -> None:
        if at in self._ticks_at:
            return
        self._ticks_at.add(at)
        # The pool's own time, whoever made the timer (a daemon's call may): it ticks
        # whatever becomes of the caller.
        self.loop.call_at(at, self._tick, at, context=self.context)

    def _tick(self, at: float) -> None:
        self._ticks_at.discard(at)
        self._sim_time.floor = max(self._sim_time.floor, at)
        self.pool.tick()
        self.observe()

    def observe(self) -> None:
        for observer in self.observers:
            observer()

    def _changed(self) -> None:
        change, self._change = self._change, None
        if change is not None and not change.done():
            change.set_result(None)

    async def next_change(self, deadline: float | None = None) -> None:
        """Until the pool next changes (a tick, a call performed), or `deadline`."""
        if self._change is None:
            self._change = self.loop.create_future()
        change = self._change
        if deadline is None:
            await asyncio.shield(change)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(change), max(0.0, deadline - self.loop.time()))

    # -- the wire -------------------------------------------------------------------------

    def host_at(self, address: str) -> HostState | None:
        return self.pool.host_by_address(address)

    def host_of_socket(self, path: str) -> HostState | None:
        return next((h for h in self.pool.hosts if h.socket_path == path), None)

    async def request(self, target: HostState | None, channel: str, source: HostState | None,
                      name: str, params: list[Any], timeout: float) -> Reply:
        """One request, as the XML-RPC server would answer it: the reply, or NoAnswer once
        `timeout` passed (or at once, refused). Params travel as XML-RPC does."""
        params = _as_handled(name, params, self.wire)
        pool = self.pool
        with pool.lock:
            silent = target is None or not target.powered
            if not silent and target is not None and target.xapi == "down":
                # Booting, restarting, or its xapi stopped: nothing listens on the port.
                raise NoAnswer(REFUSED, sent=False)
        if silent or target is None:
            # No power, no such address: nothing answers, not even a reset (a real LAN; the
            # loopback simulator's closed listener refuses at once, which is kinder).
            await asyncio.sleep(timeout)
            raise NoAnswer(TIMED_OUT, sent=False)
        with pool.lock:
            admission = api.admit(pool, target, channel, source, name)
        conn = _Connection(admission.epoch)
        # The server's work is the xapi's, not the caller's: a task in a context of its own,
        # which a caller's death (xenhad.virtual.daemons) does not end.
        served = self.loop.create_task(
            self._serve(target, channel, source, name, params, admission, conn),
            context=self.context.copy())
        served.add_done_callback(_retrieve)
        deadline = self.loop.time() + timeout
        try:
            while not served.done():
                if target.epoch != conn.epoch and not conn.holding:
                    # Its xapi exited mid-call (a restart, a power loss): the call dies with
                    # it. A restart closes the connection at once; a host without power
                    # says nothing until the caller gives up.
                    served.cancel()
                    if target.powered:
                        raise NoAnswer(CLOSED, sent=True)
                    await asyncio.sleep(max(0.0, deadline - self.loop.time()))
                    raise NoAnswer(TIMED_OUT, sent=True)
                left = deadline - self.loop.time()
                if left <= _RESOLUTION:
                    # A timer this close is due at once, and the clock does not move to it.
                    raise NoAnswer(TIMED_OUT, sent=True)
                change = asyncio.ensure_future(self.next_change())
                try:
                    await asyncio.wait((served, change), timeout=left,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    change.cancel()
            try:
                kind, value = served.result()
            except _Closed:
                raise NoAnswer(CLOSED, sent=True) from None
        finally:
            if conn.holding and not served.done():
                # The client gone (timed out, cancelled), the held request goes with it
                # (rpc.py _hold); a call being performed runs on, as a server thread would.
                served.cancel()
        return Reply(name, kind, value, self.wire)

    async def _serve(self, host: HostState, channel: str, source: HostState | None, name: str,
                     params: list[Any], admission: api.Admission, conn: _Connection
                     ) -> tuple[str, Any]:
        # rpc.py _Handler._dispatch, step for step, with its waits on the virtual loop.
        pool = self.pool
        if admission.hold:
            await self._hold(host, conn)
        if admission.delay:
            await asyncio.sleep(admission.delay)
        with pool.lock:
            injected = api.injected_failure(host, name)
            if injected is not None:
                return ("fail", injected)
            outcome = self._step(lambda: api.dispatch(pool, host, channel, source, name, params))
        while isinstance(outcome, api.Pending):
            steps = outcome.steps
            with pool.lock:
                outcome = self._step(functools.partial(_next_step, steps))
            if isinstance(outcome, api.Wait):
                await asyncio.sleep(outcome.seconds)
                outcome = api.Pending(steps)
            elif isinstance(outcome, api.WaitChange):
                await self.next_change(outcome.deadline)
                outcome = api.Pending(steps)
        if isinstance(outcome, _Hold):
            await self._hold(host, conn)
        assert isinstance(outcome, tuple)
        return outcome

    def _step(self, work: Any) -> Any:
        value: Any = None
        try:
            value = work()
        except XapiFailure as e:
            return ("fail", e.description())
        except api.Blackhole:
            return _Hold()
        except Exception as e:  # the simulator never crashes on input (rpc.py)
            return ("fail", ["INTERNAL_ERROR", f"{type(e).__name__}: {e}"])
        finally:
            if not isinstance(value, api.WaitChange):
                # A step that found nothing to report changed nothing either (event.from
                # reads): were it news, two event.from calls would wake each other for ever
                # at one instant.
                self._changed()
                self.observe()
        if isinstance(value, (api.Pending, api.Wait, api.WaitChange)):
            return value
        if isinstance(value, _Done):
            return ("ok", value.value)
        return ("ok", value)

    async def _hold(self, host: HostState, conn: _Connection) -> None:
        """Never answer; end only when the xapi holding it restarts on a powered host."""
        conn.holding = True
        while not (host.epoch != conn.epoch and host.powered):
            await self.next_change()
        raise _Closed()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A call whose caller left (timed out, closed) ends unread: its ending is no news."""
    if not task.cancelled():
        task.exception()


class _Hold:
    """A call the simulator never answers (api.Blackhole)."""


@dataclass(frozen=True)
class _Done:
    value: Any


def _next_step(steps: api.Steps) -> Any:
    try:
        return next(steps)
    except StopIteration as done:
        return _Done(done.value)
