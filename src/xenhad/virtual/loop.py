"""An asyncio event loop on virtual time, and the Clock bound to it.

`loop.time()` is a number this loop owns. When no callback is ready, the loop does not
wait: its clock jumps to the next scheduled timer, so an hour of heartbeats and ticks runs
in as long as its callbacks take. It has no selector, no self-pipe and no executor: a
callback can never be woken by real I/O or by a thread, which is what makes a run a pure
function of its seed. Whatever needs real I/O or a thread is refused at once with
`VirtualTimeError`, naming the call, rather than hanging or silently running on real time.

Nothing here draws randomness: the one `random.Random` of a run is made by its caller
(world.py) and handed to whatever needs it.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import heapq
from asyncio import base_events
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")

DEFAULT_WALL = 1.8e9
"""Wall-clock seconds at virtual time 0 (late 2027): far from 0, as a real clock is."""


class VirtualTimeError(RuntimeError):
    """Something asked the virtual loop for real time, real I/O or a thread."""


class _NoSelector:
    """Stands where a selector would: `select(timeout)` moves the clock instead of waiting."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            # Nothing ready and no timer: in a real loop this waits for I/O or a thread,
            # neither of which exists here. Every task waits for something no one will do.
            raise VirtualTimeError(
                f"deadlock at virtual time {self._loop.time():.6f}: no callback is ready and "
                "no timer is scheduled, yet the loop was asked to go on"
            )
        if timeout > 0:
            self._loop._jump(timeout)
        return []

    def close(self) -> None:
        return None


class Timer(asyncio.TimerHandle):
    """asyncio's TimerHandle with less ceremony: a run makes one for every sleep and every
    timeout, and the heap compares them a dozen times each (bench/RESULTS.md, 2026-12-08).
    The same fields, the same order: by due time alone, as TimerHandle.__lt__, so that the
    heap holds and pops them exactly as it would asyncio's."""

    __slots__ = ()
    # Handle's fields, set by _handle_fields (typeshed does not declare them).
    _context: contextvars.Context
    _loop: asyncio.AbstractEventLoop
    _callback: Callable[..., Any]
    _args: Any

    def __init__(self, when: float, callback: Callable[..., Any], args: Any,
                 loop: asyncio.AbstractEventLoop, context: contextvars.Context | None) -> None:
        # Handle.__init__ and TimerHandle.__init__, outside debug mode (see call_at).
        _handle_fields(self, callback, args, loop, context)
        self._when = when
        self._scheduled = False

    def __lt__(self, other: object) -> bool:
        return self._when < other._when  # type: ignore[attr-defined,no-any-return]


class Soon(asyncio.Handle):
    """asyncio's Handle, made as Timer is (outside debug mode)."""

    __slots__ = ()

    def __init__(self, callback: Callable[..., Any], args: Any,
                 loop: asyncio.AbstractEventLoop, context: contextvars.Context | None) -> None:
        _handle_fields(self, callback, args, loop, context)


def _handle_fields(handle: asyncio.Handle, callback: Callable[..., Any], args: Any,
                   loop: asyncio.AbstractEventLoop,
                   context: contextvars.Context | None) -> None:
    """What asyncio's Handle.__init__ sets, outside debug mode (CPython 3.11 events.py)."""
    h: Any = handle
    h._context = contextvars.copy_context() if context is None else context
    h._loop = loop
    h._callback = callback
    h._args = args
    h._cancelled = False
    h._repr = None
    h._source_traceback = None


class VirtualLoop(asyncio.BaseEventLoop):
    """A deterministic loop: callbacks run in the order asyncio gives them (ready FIFO, then
    timers by due time and scheduling order); time moves only between callbacks."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self._now = float(start)
        self._selector = _NoSelector(self)
        self.jumps = 0
        """How many times the clock jumped forward (the loop was idle)."""

    # -- time ---------------------------------------------------------------------------

    def time(self) -> float:
        return self._now

    def _jump(self, timeout: float) -> None:
        # Land exactly on the next timer's due time: `now + (when - now)` may round below
        # `when`, and the timer would not be due yet.
        # BaseEventLoop's own heap of timers (not in typeshed); cancelled heads are gone.
        scheduled = cast("list[asyncio.TimerHandle]", self._scheduled)  # type: ignore[attr-defined]
        target = self._now + timeout
        if scheduled:
            target = min(target, scheduled[0].when())  # a heap: its head is the next
        self._now = max(self._now, target)
        self.jumps += 1

    # -- handles ------------------------------------------------------------------------

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any,  # type: ignore[override]
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        # BaseEventLoop.call_at with a Timer; in debug mode, asyncio's own (every handle
        # then carries its traceback; a Timer and a TimerHandle compare alike).
        if self._debug:  # type: ignore[attr-defined]
            return super().call_at(when, callback, *args, context=context)
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        return self._schedule(Timer(when, callback, args, self, context))

    def _schedule(self, timer: asyncio.TimerHandle) -> asyncio.TimerHandle:
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def _call_soon(self, callback: Callable[..., Any], args: Any,
                   context: contextvars.Context | None) -> asyncio.Handle:
        if self._debug:  # type: ignore[attr-defined]
            return cast(asyncio.Handle, super()._call_soon(  # type: ignore[misc]
                callback, args, context))
        handle = Soon(callback, args, self, context)
        self._ready.append(handle)  # type: ignore[attr-defined]
        return handle

    def _run_once(self) -> None:
        """BaseEventLoop._run_once (Python 3.11), step for step, on a loop with no I/O: the
        same handles run in the same order, with fewer calls around them (a run turns
        this a hundred thousand times)."""
        loop: Any = self  # BaseEventLoop's private state, not in typeshed
        if loop._debug:
            super()._run_once()  # type: ignore[misc]
            return
        scheduled: list[Any] = loop._scheduled
        count = len(scheduled)
        if (count > base_events._MIN_SCHEDULED_TIMER_HANDLES  # type: ignore[attr-defined]
                and loop._timer_cancelled_count / count
                > base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION):  # type: ignore[attr-defined]
            # Remove delayed calls that were cancelled if their number is too high.
            kept = []
            for handle in scheduled:
                if handle._cancelled:
                    handle._scheduled = False
                else:
                    kept.append(handle)
            heapq.heapify(kept)
            loop._scheduled = scheduled = kept
            loop._timer_cancelled_count = 0
        else:
            # Remove delayed calls that were cancelled from the head of the queue.
            while scheduled and scheduled[0]._cancelled:
                loop._timer_cancelled_count -= 1
                handle = heapq.heappop(scheduled)
                handle._scheduled = False
        ready: collections.deque[Any] = loop._ready
        if not (ready or loop._stopping):
            # Where a selector would wait: jump to the next timer, or refuse to wait for ever.
            timeout = None if not scheduled else min(
                max(0, scheduled[0]._when - self._now),
                base_events.MAXIMUM_SELECT_TIMEOUT)  # type: ignore[attr-defined]
            self._selector.select(timeout)
        end_time = self._now + loop._clock_resolution
        while scheduled:
            if scheduled[0]._when >= end_time:
                break
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            ready.append(handle)
        # Only what is ready now; what these callbacks schedule runs the next time round.
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()

    # -- what BaseEventLoop asks of a concrete loop ---------------------------------------

    def _process_events(self, event_list: list[Any]) -> None:
        return None

    def _write_to_self(self) -> None:
        # call_soon_threadsafe: only a thread would call it, and no thread runs here.
        raise VirtualTimeError("call_soon_threadsafe on the virtual loop: no thread may wake it")

    # -- refused: real threads and real I/O -------------------------------------------------

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        # asyncio.to_thread hands over functools.partial(context.run, work, ...).
        inner = [a for a in getattr(func, "args", ()) if callable(a)][:1]
        target = inner[0] if inner else func
        name = getattr(target, "__qualname__", repr(target))
        raise VirtualTimeError(
            f"run_in_executor({name}) on the virtual loop: a thread runs on real time and "
            "would make the run depend on the machine. Give the caller an in-process "
            "implementation instead (xenhad.virtual)"
        )

    def set_default_executor(self, executor: Any) -> None:
        raise VirtualTimeError("the virtual loop has no executor")

    def _refuse_io(self, what: str) -> VirtualTimeError:
        return VirtualTimeError(
            f"{what} on the virtual loop: real I/O is not allowed; use the in-process "
            "network, xapi and BMCs of xenhad.virtual")

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse_io("getaddrinfo")

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse_io("create_connection")

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse_io("create_server")

    async def create_datagram_endpoint(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse_io("create_datagram_endpoint")

    async def create_unix_connection(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse_io("create_unix_connection")

    async def create_unix_server(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse_io("create_unix_server")

    def add_reader(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        raise self._refuse_io("add_reader")

    def add_writer(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        raise self._refuse_io("add_writer")

    def add_signal_handler(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        raise self._refuse_io("add_signal_handler")


class VirtualClock:
    """xenhad's Clock on a VirtualLoop: monotonic is the loop's time, wall a fixed offset
    from it (moved by `jump_wall`, as an NTP step or an operator's `date` would)."""

    def __init__(self, loop: VirtualLoop, wall_at_zero: float = DEFAULT_WALL) -> None:
        self.loop = loop
        self._wall_offset = wall_at_zero
        self._wall_at_zero = wall_at_zero

    def monotonic(self) -> float:
        return self.loop.time()

    def wall(self) -> float:
        return self.loop.time() + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def jump_wall(self, seconds: float) -> None:
        """The wall clock steps by `seconds` (either way); monotonic time does not."""
        self._wall_offset += seconds

    def set_right(self) -> None:
        """The wall clock stepped back to the true time (NTP after a jump)."""
        self._wall_offset = self._wall_at_zero


def run(main: Callable[[VirtualLoop], Awaitable[T]] | Coroutine[Any, Any, T], *,
        start: float = 0.0) -> T:
    """Run `main` (a coroutine, or a function of the loop returning one) to completion on a
    fresh VirtualLoop, then cancel what is left and close the loop."""
    loop = VirtualLoop(start)
    try:
        asyncio.set_event_loop(loop)
        coro = main(loop) if callable(main) else main
        return loop.run_until_complete(_as_coroutine(coro))
    finally:
        try:
            _cancel_all(loop)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _as_coroutine(aw: Awaitable[T]) -> T:
    return await aw


def _cancel_all(loop: VirtualLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
