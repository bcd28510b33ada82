"""The real API server on a private event loop in a daemon thread, shared by the ``server`` and
``reliability`` tests: blocking clients (the ``openai`` SDK, schemathesis, raw sockets) and the
test's own event loop can then both talk to it while the test drives it.

Subclasses build the balancer and the server in :meth:`ApiServerThread._start`; the thread, the
loop, the bounded waits and the shutdown order live here once. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

from blueprint.balancer import Balancer
from blueprint.server import RunningServer

T = TypeVar("T")


class ApiServerThread:
    """Balancer + API server on a private loop in a daemon thread (see the module docstring)."""

    def __init__(self, thread_name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=thread_name)
        self.balancer: Balancer | None = None
        self.server: RunningServer | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the server's loop and wait for its result (at most ``timeout`` s)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Self:
        self._thread.start()
        self.run(self._start(), timeout=60.0)
        return self

    async def _start(self) -> None:
        """Set ``self.balancer`` and ``self.server`` (started); runs on the server's loop."""
        raise NotImplementedError

    async def _stop(self) -> None:
        """Close the server, then the balancer; a subclass closes what it added after these."""
        if self.server is not None:
            await self.server.close()
        if self.balancer is not None:
            await self.balancer.close()

    def stop(self) -> None:
        try:
            self.run(self._stop(), timeout=30.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port
