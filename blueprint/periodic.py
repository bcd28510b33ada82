"""One background task that runs a step now and then every period, until stopped.

The console's sampler and the chain metrics' refresh both need this: a step that may fail
without ending the loop (a broken collector or a hung RPC must not stop the charts or the
figures for good), an optional bound on each step, and a stop that waits for the task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Periodic:
    """Runs ``step`` at once and then every ``period_s`` seconds; ``on_error`` hears a step's
    failure (``timeout_s``, when given, bounds each step: a hang counts as a failure)."""

    def __init__(self, name: str, step: Callable[[], Awaitable[None]], period_s: float, *,
                 on_error: Callable[[Exception], None], timeout_s: float | None = None) -> None:
        self.name = name
        self.step = step
        self.period_s = period_s
        self.on_error = on_error
        self.timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        """Idempotent; returns once the task is gone."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.on_error(exc)
            await asyncio.sleep(self.period_s)
