"""The periodic task behind the console's sampler and the chain metrics' refresh."""

from __future__ import annotations

import asyncio

from blueprint.periodic import Periodic


async def test_a_failing_or_hung_step_is_reported_and_the_loop_goes_on() -> None:
    calls: list[int] = []
    errors: list[Exception] = []
    fourth = asyncio.Event()

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) == 4:
            fourth.set()
        if len(calls) == 1:
            raise RuntimeError("broken collector")
        if len(calls) == 2:
            await asyncio.sleep(10)  # hangs past its bound

    periodic = Periodic("test-periodic", step, 0.001, on_error=errors.append, timeout_s=0.05)
    periodic.start()
    periodic.start()  # a second start is a no-op: one task
    async with asyncio.timeout(5):
        await fourth.wait()
    await periodic.stop()
    await periodic.stop()  # idempotent
    assert [type(e) for e in errors[:2]] == [RuntimeError, TimeoutError]
    assert len(errors) == 2
    stopped_at = len(calls)
    await asyncio.sleep(0.02)
    assert len(calls) == stopped_at  # stopped for good
