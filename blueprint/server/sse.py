"""Server-sent events: one OpenAI-style stream from a balancer iterator to the client.

The first event decides the response: an error raised at once (a full queue, no healthy node)
within ``stream_header_grace_s`` is answered with its real HTTP status, because OpenRouter acts on
an early 429 and counts an SSE error as a failed stream. The handler awaits the first event itself
(no helper task: the whole stream runs in the request's task); a timer of the grace sends the
headers and SSE keep-alive comments from a small task only when the first event is late. Headers
leave with the first bytes, in one send. Chunks are written as they come: each ``write`` hands
the bytes to the socket, nothing is held back; ``[DONE]`` leaves with the body's end. A relayed
stream (see ``blueprint.llm.raw``) writes what one upstream read brought in one write, from the
read callback, and its end with its last chunk: the client has the whole answer before the
engine and the balancer finish their bookkeeping. A failure
after the headers is sent as ``data: {"error": ...}`` and ends the stream. A client that
disconnects cancels the handler task (aiohttp ``handler_cancellation``), which cancels the
balancer's iterator and frees its slot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import structlog
from aiohttp import HttpVersion11, web
from pydantic import BaseModel

from blueprint.errors import BackendTimeoutError, BlueprintError
from blueprint.llm.raw import RawChunk
from blueprint.server.metrics import RouteMetrics, ServerMetrics
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


class SseResponse(web.StreamResponse):
    """A stream whose headers leave with its first bytes (one send, not two): aiohttp buffers
    them until the first write when this class flag is off, as its own ``web.Response`` does."""

    _send_headers_immediately = False
    #: The body's end was written by the relay, straight to the transport (``_ClientSink.end``).
    ended_by_relay = False

    def end_written(self) -> None:
        """The relay wrote the body's end itself: aiohttp must write nothing more (its
        ``write_eof``, from the handler or from its own ``finish_response``, then returns)."""
        self.ended_by_relay = True
        self._eof_sent = True


class StreamAnswer(Protocol):
    """What a stream is written through: aiohttp's :class:`SseResponse`, or the front's
    ``FrontStream`` (:mod:`blueprint.server.front`), which writes to the socket itself."""

    prepared: bool
    chunked: bool
    ended_by_relay: bool

    def enable_chunked_encoding(self) -> None: ...
    def force_close(self) -> None: ...
    async def prepare(self, request: Any) -> Any: ...
    async def write(self, data: bytes) -> None: ...
    async def write_eof(self, data: bytes = b"") -> None: ...
    def end_written(self) -> None: ...


class StreamClient(Protocol):
    """The request side a stream needs: its HTTP version and its socket (None once gone)."""

    @property
    def version(self) -> Any: ...
    @property
    def transport(self) -> Any: ...


class _Opener:
    """Sends a stream's headers once. When the first event comes within the header grace (the
    common case) the handler sends them with it, so a stream costs no task and no timer besides
    the grace's; when the grace runs out first, a small task sends them and then SSE keep-alive
    comments until :meth:`open` is called, and the first-token bound starts."""

    __slots__ = ("_keepalive_s", "_metrics", "_request", "_sent", "_started", "_task", "late",
                 "response")

    def __init__(self, request: StreamClient, response: StreamAnswer, keepalive_s: float,
                 metrics: ServerMetrics) -> None:
        self._request = request
        self._keepalive_s = keepalive_s
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._started = self._sent = False  # the keep-alive task ran / sent the headers
        self.response = response
        #: True once the grace ran out: from then on an error is an SSE event, never a status.
        self.late = False

    def grace_over(self, deadline: asyncio.Timeout, first_token_timeout_s: float) -> None:
        """The grace timer's callback: headers and keep-alives from now on, and the first token
        bounded (``deadline`` cancels the waiting handler, which reports ``first_token_timeout``)."""
        self.late = True
        deadline.reschedule(asyncio.get_running_loop().time() + first_token_timeout_s)
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        self._started = True
        try:
            await self._prepare()
            await self.response.write(KEEPALIVE)  # the headers go out with it, at once
            self._sent = True
            while True:
                await asyncio.sleep(self._keepalive_s)
                await self.response.write(KEEPALIVE)
        except (ConnectionResetError, RuntimeError):
            return  # the client went away: the handler is being cancelled (or finds out on its write)

    @property
    def transport(self) -> asyncio.Transport | None:
        """The client's socket transport, once it is ours to write to (None if it went away)."""
        return self._request.transport  # type: ignore[return-value]

    async def _prepare(self) -> None:
        if not self.response.prepared:
            if self._request.version == HttpVersion11:  # stated, so relayed writes frame alike
                self.response.enable_chunked_encoding()
            else:  # no chunked framing before HTTP/1.1: the body ends with the connection
                self.response.force_close()  # (aiohttp kept a keep-alive one open, the end unseen)
            await self.response.prepare(self._request)
            self._metrics.streams_now += 1

    async def open(self) -> StreamAnswer:
        """The response with its headers sent, and no keep-alive pending."""
        task = self._task
        if task is not None:
            self._task = None
            task.cancel()
            # Not started: it never will. Headers sent: it only sleeps or writes a comment whole.
            # Only a task caught inside its first writes is waited for (never swallowing this
            # handler's own cancellation); the common late stream pays no loop turn here.
            if self._started and not self._sent and not task.done():
                await asyncio.wait((task,))
        await self._prepare()
        return self.response

    @property
    def committed(self) -> bool:
        """Whether the answer is a 200 stream by now (the grace ran out, or headers went out)."""
        return self.late or self.response.prepared

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.response.prepared:
            self._metrics.streams_now -= 1


#: Bytes waiting in a client's socket buffer above which it counts as reading slower than the
#: upstream writes (aiohttp's own drain threshold).
_CONGESTED = 0x10000


class _ClientSink:
    """One stream's way out to its client: the SSE bytes of a chunk (usage the client did not
    ask for counted, and left out), the silence bound moved as chunks pass, and, as a
    :class:`~blueprint.llm.raw.ChunkSink`, the chunks an engine relays from its read callback,
    written straight to the client's socket (framed as aiohttp frames them: HTTP/1.1 chunked),
    one write per upstream read, the stream's end with its last chunk."""

    __slots__ = ("_chunked", "_deadline", "_idle_s", "_include_usage", "_loop", "_moved", "_out",
                 "_response", "_rm", "_step", "transport")

    def __init__(self, opener: _Opener, rm: RouteMetrics, include_usage: bool,
                 deadline: asyncio.Timeout, idle_s: float) -> None:
        self._rm = rm
        self._include_usage = include_usage
        self._deadline = deadline
        self._idle_s = idle_s
        self._step = min(1.0, idle_s / 4)
        self._loop = asyncio.get_running_loop()
        self._moved = self._loop.time()
        deadline.reschedule(self._moved + idle_s)
        self._response = opener.response
        self._chunked = opener.response.chunked
        self._out: list[bytes] = []
        self.transport = opener.transport

    def encode(self, chunk: BaseModel) -> bytes | None:
        """The chunk's SSE event, or None when nothing of it is for the client."""
        usage = chunk.usage  # type: ignore[attr-defined]
        if usage is None or self._include_usage:
            if usage is not None:
                self._rm.usage(usage)
            if isinstance(chunk, RawChunk):  # the upstream's bytes, as they came
                return b"data: " + chunk.payload + b"\n\n"
            return sse_event(chunk.model_dump_json(exclude_none=True).encode())
        self._rm.usage(usage)  # usage the client did not ask for: counted, and left out
        if not (chunk.has_choices if isinstance(chunk, RawChunk) else chunk.choices):  # type: ignore[attr-defined]
            return None
        if isinstance(chunk, RawChunk):
            chunk = chunk.parsed()
        chunk.usage = None  # type: ignore[attr-defined]
        return sse_event(chunk.model_dump_json(exclude_none=True).encode())

    def progressed(self) -> None:
        """A chunk came: the silence bound starts again (the timer moves at most every step)."""
        now = self._loop.time()
        if now - self._moved >= self._step:
            self._deadline.reschedule(now + self._idle_s)
            self._moved = now

    def send(self, chunk: RawChunk) -> None:
        """ChunkSink: take ``chunk`` for the next write."""
        data = self.encode(chunk)
        if data is not None:
            self._out.append(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)

    def _write_out(self) -> bool:
        """Write what :meth:`send` took, in one write; False (dropped) if the client went away:
        the stream's own next write, or its end, finds out (499)."""
        transport = self.transport
        assert transport is not None
        out = self._out
        if transport.is_closing():
            out.clear()
            return False
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        return True

    def flush(self) -> bool:
        """ChunkSink: write what :meth:`send` took, at once; True when the client falls behind
        (or went away)."""
        if not self._write_out():
            return True
        self.progressed()
        return self.congested()

    def end(self) -> None:
        """ChunkSink: the last chunks, ``[DONE]`` and the body's end, in one write."""
        self._out.append(b"%x\r\n%b\r\n0\r\n\r\n" % (len(DONE), DONE) if self._chunked else DONE)
        if self._write_out():
            self._response.end_written()

    def congested(self) -> bool:
        transport = self.transport
        return transport is not None and transport.get_write_buffer_size() > _CONGESTED

    async def drained(self) -> None:
        """Until the client has read most of what waits for it (or went away). A short poll:
        aiohttp has no public wait for its socket to drain besides ``write`` past its own count,
        and only a client slower than the upstream ever waits here."""
        transport = self.transport
        while transport is not None and not transport.is_closing() \
                and transport.get_write_buffer_size() > _CONGESTED // 4:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def stream_sse(
    request: StreamClient,
    chunks: AsyncIterator[BaseModel],
    *,
    response: StreamAnswer | None = None,
    settings: ServerSettings,
    metrics: ServerMetrics,
    route: str,
    model: str,
    include_usage: bool,
    started: float,
    outcome: StreamOutcome,
) -> StreamAnswer:
    """Relay ``chunks`` as SSE through ``response`` (an aiohttp :class:`SseResponse` when None).
    ``include_usage`` is what the client asked for: the engine is always asked for usage (for
    the metrics), and it is passed on only when asked.

    The first event is awaited in the handler's own task (no extra task or hop per stream); a
    timer of ``stream_header_grace_s`` decides whether an error answers with its real status
    (before it fires) or as an SSE error event (after, when the headers went out)."""
    iterator = aiter(chunks)
    opener = _Opener(request, response if response is not None else SseResponse(headers=SSE_HEADERS),
                     settings.stream_keepalive_s, metrics)
    metrics.waiting_first_token_now += 1
    outcome.waiting = True
    try:
        await _relay(opener, iterator, settings, metrics, route, model, include_usage, started, outcome)
        return opener.response
    finally:
        if outcome.waiting:
            outcome.waiting = False
            metrics.waiting_first_token_now -= 1
        opener.close()
        await _close(iterator)


async def _relay(opener: _Opener, iterator: AsyncIterator[BaseModel], settings: ServerSettings,
                 metrics: ServerMetrics, route: str, model: str, include_usage: bool, started: float,
                 outcome: StreamOutcome) -> None:
    stage = "before_first_token"
    loop = asyncio.get_running_loop()
    try:
        # One Timeout for the whole stream, without a timer until one is needed: the first-token
        # bound once the grace ran out, then request_timeout_s on each silence between two chunks
        # (never on the whole stream: one that keeps producing is never cut). The silence timer
        # is moved at most every `step` (a chunk every few ms must not pay a timer each).
        async with asyncio.timeout(None) as deadline:
            grace = loop.call_later(settings.stream_header_grace_s, opener.grace_over, deadline,
                                    settings.first_token_timeout_s - settings.stream_header_grace_s)
            try:
                chunk = await anext(iterator, None)
            finally:
                grace.cancel()
            response = await opener.open()
            outcome.waiting = False
            metrics.waiting_first_token_now -= 1
            write = response.write
            if chunk is None:
                await response.write_eof(DONE)
                return
            rm = metrics.route(route, model)  # bound only now: the model is known to be served
            rm.first_token(time.perf_counter() - started)
            stage = "mid_stream"
            out = _ClientSink(opener, rm, include_usage, deadline, settings.request_timeout_s)
            asend = getattr(iterator, "asend", None)
            relay = out if asend is not None and out.transport is not None else None
            sent = False  # the headers wait for the first bytes the client gets (one send)
            try:
                while True:
                    data = out.encode(chunk)
                    if data is not None:
                        await write(data)
                        sent = True
                    if relay is not None:
                        if not sent:  # nothing for the client yet (a usage-only event it did
                            await write(b"")  # not ask for): the headers, before the relay
                            sent = True  # writes the rest straight to the socket
                        # Hand the chunks that follow to the engine's read callback (written from
                        # there as they are read: no task switch per chunk), unless this client
                        # reads slower than the upstream writes: then one at a time, at its pace.
                        if out.congested():
                            await out.drained()
                        chunk = await asend(relay)
                    else:
                        chunk = await anext(iterator)
                    out.progressed()
            except StopAsyncIteration:  # the end of the stream
                pass
        await response.write_eof(DONE)  # with the body's end: one send
    except TimeoutError:
        if not opener.committed:
            raise
        if opener.response.ended_by_relay:
            return  # the answer was whole before the bound ran out (see _fail)
        if stage == "mid_stream":
            error = BackendTimeoutError(f"The stream was silent for {settings.request_timeout_s:g} s.",
                                        code="request_timeout")
        else:
            error = BackendTimeoutError(f"No token within {settings.first_token_timeout_s:g} s.",
                                        code="first_token_timeout")
        outcome.status = error.http_status
        await _fail(opener, iterator, metrics, route, model, stage, error)
    except BlueprintError as exc:
        if not opener.committed:  # refused within the grace: answered with its real HTTP status
            raise
        if opener.response.ended_by_relay:
            log.warning("stream_failed_after_its_end", code=exc.code, route=route, model=model)
            await _close(iterator)
            return
        outcome.status = exc.http_status
        await _fail(opener, iterator, metrics, route, model, stage, exc)
    except (ConnectionResetError, asyncio.CancelledError):
        if not opener.response.ended_by_relay:  # a client gone after its whole answer: a 200
            outcome.status = 499
        raise
    except Exception:
        if not opener.committed:
            raise
        if opener.response.ended_by_relay:
            log.exception("stream_failed_after_its_end", route=route, model=model)
            await _close(iterator)
            return
        outcome.status = 500
        log.exception("stream failed unexpectedly")
        await _fail(opener, iterator, metrics, route, model, stage,
                    BlueprintError("Internal error while streaming."))


async def _fail(opener: _Opener, iterator: AsyncIterator[BaseModel], metrics: ServerMetrics,
                route: str, model: str, stage: str, exc: BlueprintError) -> None:
    """A stream that fails after its headers: one log line, one count, and the SSE error event
    (a mid-stream failure is what OpenRouter holds against a provider's uptime). The stream is
    closed first, freeing its node slot: the event's write may wait on a client that never
    reads (its silence is what timed out), and must not hold the slot meanwhile. Never called
    once the relay ended the answer: the client has it whole, and nothing failed for them."""
    log.warning("stream_failed", stage=stage, code=exc.code, status=exc.http_status, route=route,
                model=model)
    metrics.stream_failures.labels(route, model, stage, exc.code).inc()
    await _close(iterator)
    with contextlib.suppress(ConnectionResetError):
        response = await opener.open()
        await response.write(error_event(exc))
