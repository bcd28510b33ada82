"""Server-sent events: one OpenAI-style stream from a balancer iterator to the client.

The first event decides the response: an error raised at once (a full queue, no healthy node)
within ``stream_header_grace_s`` is answered with its real HTTP status, because OpenRouter acts on
an early 429 and counts an SSE error as a failed stream. Otherwise headers go out at once and SSE
comments keep the connection alive until the first token. Chunks are written as they come: each
``write`` hands the bytes to the socket, nothing is buffered. A failure after the headers is sent
as ``data: {"error": ...}`` and ends the stream. A client that disconnects cancels the handler
task (aiohttp ``handler_cancellation``), which cancels the balancer's iterator and frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel

from blueprint.errors import BackendTimeoutError, BlueprintError
from blueprint.llm.raw import RawChunk
from blueprint.server.metrics import ServerMetrics
from blueprint.server.settings import ServerSettings

log = structlog.get_logger(__name__)

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def sse_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def error_event(exc: BlueprintError) -> bytes:
    return sse_event(json.dumps(exc.to_error_object()).encode())


async def _close(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


class StreamOutcome:
    """What a finished stream reports to the request's metrics (status 200 or the error's)."""

    __slots__ = ("status", "waiting")

    def __init__(self) -> None:
        self.status = 200
        #: True until the first token (or the end) came: counted in ``waiting_first_token``.
        self.waiting = False


async def stream_sse(
    request: web.Request,
    chunks: AsyncIterator[BaseModel],
    *,
    settings: ServerSettings,
    metrics: ServerMetrics,
    route: str,
    model: str,
    include_usage: bool,
    started: float,
    outcome: StreamOutcome,
) -> web.StreamResponse:
    """Relay ``chunks`` as SSE. ``include_usage`` is what the client asked for: the engine is
    always asked for usage (for the metrics), and it is passed on only when asked."""
    iterator = aiter(chunks)
    first: asyncio.Task[BaseModel] = asyncio.ensure_future(anext(iterator))
    response: web.StreamResponse | None = None
    metrics.waiting_first_token.inc()
    outcome.waiting = True
    try:
        if settings.stream_header_grace_s >= 0:
            await asyncio.wait((first,), timeout=settings.stream_header_grace_s)
        if first.done() and first.exception() is not None and not isinstance(
                first.exception(), StopAsyncIteration):
            raise first.exception()  # type: ignore[misc]  # answered with its real status
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        metrics.streams.inc()
        try:
            await _stream_body(response, iterator, first, settings, route, model, include_usage,
                               started, outcome, metrics)
        finally:
            metrics.streams.dec()
        return response
    finally:
        if outcome.waiting:
            outcome.waiting = False
            metrics.waiting_first_token.dec()
        if not first.done():
            first.cancel()
            with contextlib.suppress(BaseException):
                await first
        await _close(iterator)


async def _first_chunk(response: web.StreamResponse, first: asyncio.Task[BaseModel],
                       settings: ServerSettings) -> BaseModel | None:
    """The first chunk, sending keep-alive comments while it is awaited; None at end of stream."""
    deadline = time.monotonic() + settings.first_token_timeout_s
    while not first.done():
        left = deadline - time.monotonic()
        if left <= 0:
            raise BackendTimeoutError(
                f"No token within {settings.first_token_timeout_s:g} s.", code="first_token_timeout")
        await asyncio.wait((first,), timeout=min(settings.stream_keepalive_s, left))
        if not first.done():
            await response.write(KEEPALIVE)
    try:
        return first.result()
    except StopAsyncIteration:
        return None


async def _stream_body(response: web.StreamResponse, iterator: AsyncIterator[BaseModel],
                       first: asyncio.Task[BaseModel], settings: ServerSettings, route: str, model: str,
                       include_usage: bool, started: float, outcome: StreamOutcome,
                       metrics: ServerMetrics) -> None:
    write = response.write
    stage = "before_first_token"
    try:
        chunk = await _first_chunk(response, first, settings)
        outcome.waiting = False
        metrics.waiting_first_token.dec()
        if chunk is None:
            await write(DONE)
            return
        rm = metrics.route(route, model)  # bound only now: the model is known to be served
        rm.first_token(time.perf_counter() - started)
        stage = "mid_stream"
        # request_timeout_s bounds each silence between two chunks, not the whole stream: a
        # stream that keeps producing is never cut. One timer, moved on at most every `step`
        # (a chunk every few ms must not pay a timer each; the bound is exact to within it).
        idle_s = settings.request_timeout_s
        step = min(1.0, idle_s / 4)
        loop = asyncio.get_running_loop()
        moved = loop.time()
        async with asyncio.timeout_at(moved + idle_s) as idle:
            while True:
                usage = chunk.usage
                if usage is None or include_usage:
                    if isinstance(chunk, RawChunk):  # the upstream's bytes, as they came
                        await write(b"data: " + chunk.payload + b"\n\n")
                    else:
                        await write(sse_event(chunk.model_dump_json(exclude_none=True).encode()))
                    if usage is not None:
                        rm.usage(usage)
                else:  # usage the client did not ask for: counted, and left out of the stream
                    rm.usage(usage)
                    if isinstance(chunk, RawChunk):
                        chunk = chunk.parsed()
                    if chunk.choices:
                        chunk.usage = None
                        await write(sse_event(chunk.model_dump_json(exclude_none=True).encode()))
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                now = loop.time()
                if now - moved >= step:
                    idle.reschedule(now + idle_s)
                    moved = now
        await write(DONE)
    except TimeoutError:
        outcome.status = BackendTimeoutError.http_status
        error = BackendTimeoutError(f"The stream was silent for {settings.request_timeout_s:g} s.",
                                    code="request_timeout")
        _count_failure(metrics, route, model, stage, error)
        await _write_error(response, error)
    except BlueprintError as exc:
        outcome.status = exc.http_status
        _count_failure(metrics, route, model, stage, exc)
        await _write_error(response, exc)
    except (ConnectionResetError, asyncio.CancelledError):
        outcome.status = 499
        raise
    except Exception:
        outcome.status = 500
        log.exception("stream failed unexpectedly")
        error = BlueprintError("Internal error while streaming.")
        _count_failure(metrics, route, model, stage, error)
        await _write_error(response, error)


def _count_failure(metrics: ServerMetrics, route: str, model: str, stage: str,
                   exc: BlueprintError) -> None:
    """A stream that fails after its headers: one log line and one count (a mid-stream failure
    is what OpenRouter holds against a provider's uptime)."""
    log.warning("stream_failed", stage=stage, code=exc.code, status=exc.http_status, route=route,
                model=model)
    metrics.stream_failures.labels(route, model, stage, exc.code).inc()


async def _write_error(response: web.StreamResponse, exc: BlueprintError) -> None:
    with contextlib.suppress(ConnectionResetError):
        await response.write(error_event(exc))
