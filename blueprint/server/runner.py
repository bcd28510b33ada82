"""Running the API: bind, serve until told to stop, shut down gracefully.

``handler_cancellation=True`` makes aiohttp cancel a request's handler when its client goes away,
which is how a disconnected client cancels its generation and frees its balancer slot.
Shutdown stops accepting first, then gives in-flight requests ``shutdown_timeout_s`` to finish.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiohttp import web

from blueprint import tracing
from blueprint.server.app import API_KEY, Api, create_app
from blueprint.server.connections import GuardedServer
from blueprint.server.connections import guard as guard_connections
from blueprint.server.front import Front
from blueprint.server.responses import UnsafeBindError
from blueprint.server.settings import ServerSettings

if TYPE_CHECKING:
    from blueprint.balancer import Balancer

log = structlog.get_logger(__name__)
T = TypeVar("T")


def check_exposure(settings: ServerSettings) -> None:
    """Refuse a public bind without any API key unless the operator opted out explicitly."""
    if settings.is_loopback() or settings.api_keys or settings.allow_public_without_auth:
        return
    raise UnsafeBindError(
        f"Refusing to serve on {settings.host!r} without an API key: set server.api_keys "
        "(or API_KEYS), bind to 127.0.0.1, or set server.allow_public_without_auth = true.")


class FrontSite(web.TCPSite):
    """aiohttp's TCP site listening with the front's protocol factory
    (:mod:`blueprint.server.front`), which hands aiohttp the connections it does not serve."""

    def __init__(self, runner: web.AppRunner, front: Front, host: str, port: int, **options: Any) -> None:
        super().__init__(runner, host, port, **options)
        self.front = front

    async def start(self) -> None:
        self._runner._reg_site(self)
        self._server = await asyncio.get_running_loop().create_server(
            self.front, self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


class RunningServer:
    """A started API server; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, runner: web.AppRunner, site: web.TCPSite, port: int, front: Front | None = None,
                 shutdown_timeout_s: float = 30.0) -> None:
        self.runner, self.site, self.port = runner, site, port
        self.front = front
        self._shutdown_timeout_s = shutdown_timeout_s

    @property
    def url(self) -> str:
        host = self.site._host or "127.0.0.1"
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), release the socket."""
        if self.front is None:
            await self.runner.cleanup()
            return
        await self.site.stop()  # no new connection; then both kinds of connection wind down
        await asyncio.gather(self.front.shutdown(self._shutdown_timeout_s), self.runner.cleanup())


def front_serves(settings: ServerSettings) -> bool:
    """Whether the front takes the hot routes: on unless turned off, or unless a feature only
    the aiohttp path has is on (the access log, tracing's server spans)."""
    return settings.fast_front and not settings.access_log and not tracing.active()


async def start_server(balancer: Balancer, settings: ServerSettings,
                       app: web.Application | None = None) -> RunningServer:
    """Bind and start serving in the running loop; returns at once."""
    check_exposure(settings)
    app = app if app is not None else create_app(balancer, settings)
    extra: dict[str, Any] = {} if settings.access_log else {"access_log": None}
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=settings.shutdown_timeout_s,
                           keepalive_timeout=settings.idle_timeout_s, **extra)
    await runner.setup()
    guard_connections(runner, max_connections=settings.max_connections)
    listen: dict[str, Any] = {"backlog": 1024, "reuse_address": True,
                              "reuse_port": settings.workers > 1 or None}  # workers share the port
    front = None
    site: web.TCPSite
    if front_serves(settings):
        api: Api = app[API_KEY]  # type: ignore[assignment]
        server = runner.server
        assert isinstance(server, GuardedServer)
        front = Front(api.serve_front, server, idle_timeout_s=settings.idle_timeout_s,
                      max_connections=settings.max_connections, max_body_bytes=settings.max_body_bytes)
        site = FrontSite(runner, front, settings.host, settings.port, **listen)
    else:
        site = web.TCPSite(runner, settings.host, settings.port, **listen)
    await site.start()
    port = settings.port
    listening = site._server
    if listening is not None and getattr(listening, "sockets", None):
        port = listening.sockets[0].getsockname()[1]
    log.info("http api listening", host=settings.host, port=port, auth=bool(settings.api_keys),
             front=front is not None)
    return RunningServer(runner, site, port, front, settings.shutdown_timeout_s)


#: Allocations of container objects between two young-generation collections (CPython's 700
#: made one collection every request or so: ~3 % of the gateway's CPU per request).
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Collect once, freeze what start-up built (imports, settings, clients: never garbage) so
    that later full collections do not walk it, and collect the young generation less often.
    Requests free almost everything by reference counting; the rare cycle waits a little longer."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def serve(balancer: Balancer, settings: ServerSettings, *, stop: asyncio.Event | None = None,
                on_ready: Callable[[RunningServer], None] | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when no event is given), then shut down."""
    own_signals = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    running = await start_server(balancer, settings)
    tune_gc()
    try:
        if on_ready is not None:
            on_ready(running)
        await stop.wait()
        log.info("http api stopping", grace_s=settings.shutdown_timeout_s)
    finally:
        await running.close()
        if own_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def run_with_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop where it is installed (the fast loop), else on asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (tests and benchmarks)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
