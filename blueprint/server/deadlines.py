"""Coarse deadlines for long bounds, checked by one periodic timer.

``server.request_timeout_s`` (600 s by default) bounds every non-streamed request. With
``asyncio.timeout`` each request made and cancelled a timer handle and ran an async context
manager: about 3 % of the gateway's CPU per request, for a bound that needs no millisecond
precision. Here a request costs a dict insert and delete; one timer sweeps the watched tasks
every ``tick`` (an eighth of the bound, at most a second) and cancels those past their
deadline, which :meth:`Deadlines.bound` turns into ``TimeoutError`` exactly as
``asyncio.timeout`` does (a cancellation from elsewhere, a client gone, stays a cancellation).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Deadlines:
    """Tasks bounded by ``seconds`` each, give or take one ``tick`` (later, never earlier)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.tick = min(1.0, max(0.005, seconds / 8))
        self._watched: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def bound(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` in the current task; ``TimeoutError`` past the deadline."""
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        self._watched[task] = time.monotonic() + self.seconds
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.tick, self._sweep)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._forget(task) and task.uncancel() == 0:  # ours alone: a timeout
                raise TimeoutError from None
            raise
        finally:
            if self._forget(task):  # expired as it finished: withdraw our cancellation
                task.uncancel()

    def _forget(self, task: asyncio.Task[object]) -> bool:
        """Stop watching ``task``; whether it was cancelled for its deadline."""
        self._watched.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _sweep(self) -> None:
        now = time.monotonic()
        late = [task for task, deadline in self._watched.items() if deadline <= now]
        for task in late:
            del self._watched[task]
            self._expired.add(task)
            task.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.tick, self._sweep) if self._watched else None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
