"""The virtual loop: time jumps, threads and real I/O are refused, a seed replays."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from xenhad.virtual.loop import VirtualClock, VirtualLoop, VirtualTimeError, run


def test_an_hour_of_timers_jumps_instead_of_sleeping() -> None:
    fired: list[float] = []

    async def main(loop: VirtualLoop) -> float:
        clock = VirtualClock(loop)

        async def every(interval: float) -> None:
            while clock.monotonic() + interval <= 3600:
                await clock.sleep(interval)
                fired.append(clock.monotonic())

        await asyncio.gather(*(every(0.5 + i / 7) for i in range(25)))
        return clock.monotonic()

    started = time.monotonic()
    end = run(main)
    real = time.monotonic() - started
    assert 3599 < end <= 3600 and len(fired) > 25_000
    assert fired == sorted(fired)
    # Not a speed test (bench/virtual_speed.py measures): a loop that really slept would
    # take the hour.
    assert real < 600


def test_threads_sockets_and_a_deadlock_are_refused_loudly() -> None:
    async def to_thread(loop: VirtualLoop) -> None:
        await asyncio.to_thread(time.sleep, 1)

    with pytest.raises(VirtualTimeError, match=r"run_in_executor.*sleep"):
        run(to_thread)

    async def connect(loop: VirtualLoop) -> None:
        await asyncio.open_connection("127.0.0.1", 1)

    with pytest.raises(VirtualTimeError, match="real I/O"):
        run(connect)

    async def forever(loop: VirtualLoop) -> None:
        await asyncio.Event().wait()

    with pytest.raises(VirtualTimeError, match="deadlock"):
        run(forever)


def test_timeouts_and_wall_jumps_are_virtual() -> None:
    async def main(loop: VirtualLoop) -> tuple[float, float]:
        clock = VirtualClock(loop, wall_at_zero=1e9)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 90)
        clock.jump_wall(-30)
        return clock.monotonic(), clock.wall()

    assert run(main) == (90.0, 1e9 + 60)


def test_same_seed_same_interleaving() -> None:
    def trace(seed: int) -> str:
        async def main(loop: VirtualLoop) -> str:
            rng = random.Random(seed)
            lines: list[str] = []

            async def worker(n: int) -> None:
                for _ in range(50):
                    await asyncio.sleep(rng.uniform(0, 2))
                    lines.append(f"{loop.time():.9f} w{n} {rng.random():.6f}")

            await asyncio.gather(*(worker(n) for n in range(8)))
            return "\n".join(lines)

        return run(main)

    assert trace(5) == trace(5)
    assert trace(5) != trace(6)
