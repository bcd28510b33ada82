"""A throwaway aiohttp server on loopback standing in for an upstream (a vLLM, an OpenAI-like API)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve_upstream(*, post: dict[str, Handler] | None = None,
                         get: dict[str, Handler] | None = None) -> tuple[web.AppRunner, str]:
    """Serve ``post``/``get`` handlers by path on a free loopback port: the runner (clean it up)
    and the base URL, ``http://127.0.0.1:PORT/v1``."""
    app = web.Application()
    for path, handler in (post or {}).items():
        app.router.add_post(path, handler)
    for path, handler in (get or {}).items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request from a raw upstream's socket (for tests that write their answers'
    framing byte by byte): its head, and its body by ``Content-Length``."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


async def pour(request: web.Request, opening: bytes, piece: bytes, outcomes: list[str],
               total: int = 64 << 20) -> web.StreamResponse:
    """Answer with ``opening`` and then ``piece`` again and again (``total`` bytes, chunked): an
    answer without a useful end from a broken or hostile peer. ``outcomes`` gets ``"cut"`` when
    the reader closed the connection first, ``"finished"`` when it read it all."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await response.write(opening)
        for _ in range(total // len(piece)):
            await response.write(piece)
    except ConnectionError:
        outcomes.append("cut")
        return response
    outcomes.append("finished")
    return response
