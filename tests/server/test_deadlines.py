"""The coarse request deadline that replaced ``asyncio.timeout`` on the non-streamed path: it
must time out like it (never early, at most a tick late), leave a cancellation from elsewhere (a
client gone) a cancellation, and leave nothing behind (no timer while nothing is watched)."""

from __future__ import annotations

import asyncio
import time

import pytest

from blueprint.server.deadlines import Deadlines


async def test_a_late_call_times_out_within_a_tick_never_early() -> None:
    deadlines = Deadlines(0.2)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await deadlines.bound(asyncio.sleep(5))
    took = time.monotonic() - began
    assert 0.2 <= took < 0.2 + deadlines.tick + 0.2
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(deadlines.tick * 2)
    assert deadlines._timer is None and not deadlines._watched


async def test_a_call_in_time_returns_and_stops_the_timer() -> None:
    deadlines = Deadlines(5)
    assert await deadlines.bound(asyncio.sleep(0.01, result="ok")) == "ok"
    assert not deadlines._watched
    await asyncio.sleep(deadlines.tick + 0.05)
    assert deadlines._timer is None


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(5)
    task = asyncio.create_task(deadlines.bound(asyncio.sleep(5)))
    await asyncio.sleep(0.01)
    task.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._watched


async def test_many_tasks_each_get_their_own_bound() -> None:
    deadlines = Deadlines(0.1)
    quick = [asyncio.create_task(deadlines.bound(asyncio.sleep(0.01, result=i))) for i in range(20)]
    slow = [asyncio.create_task(deadlines.bound(asyncio.sleep(5))) for _ in range(20)]
    assert await asyncio.gather(*quick) == list(range(20))
    results = await asyncio.gather(*slow, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    deadlines.close()
