"""A lean HTTP/1.1 front for the inference routes, with aiohttp behind it for everything else.

Every connection starts here. A request for ``POST /v1/chat/completions``, ``/v1/completions`` or
``/v1/embeddings`` whose head falls in a strict, unambiguous subset of HTTP/1.1 (one request
line of those exact bytes, visible-ASCII header lines, at most one ``Content-Length`` of digits,
no ``Transfer-Encoding`` or ``Upgrade``, no ``Expect`` but ``100-continue``, no duplicate of a
header we read) is served
here: the head is split by hand, the answer written straight to the socket. Anything else (another
route, a query string, a chunked body, HTTP/1.0, a malformed or merely unusual head) hands the
connection, with every byte it sent so far, to aiohttp's own protocol, which then serves it to
its end as it always did. So the front never interprets a head two ways (no request smuggling
between two parsers): it either takes a head whole and plainly, or leaves it untouched.

Why: aiohttp's request and response objects, middleware chain and per-connection task cost about
60 µs a request on this path (measured against a bare protocol on uvloop: 145 against 88 µs a
round trip at one connection), a tenth of what the gateway adds at c=1 (issue 15). The guard's
work (request id, key, rate limit, body bounds, metrics, errors) is the API's own
(:meth:`blueprint.server.app.Api.serve_front`), shared with the aiohttp path, so both answer alike.

Connection behaviour mirrors the aiohttp path: a connection with no whole request head for
``idle_timeout_s`` is closed; a body must arrive within ``body_timeout_s`` (408); a client that
goes away cancels its handler (as ``handler_cancellation``); pipelined requests are answered in
order; ``max_connections`` counts both kinds of connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

import structlog
from aiohttp import HttpVersion11
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import SINGLETON_HEADERS
from aiohttp.tcp_helpers import tcp_keepalive, tcp_nodelay

from blueprint.errors import RequestTooLargeError
from blueprint.server.responses import HttpStatusError

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

    from blueprint.server.connections import GuardedServer

log = structlog.get_logger(__name__)

#: The routes the front serves, by their request line.
_REQUEST_LINE = re.compile(rb"POST (/v1/chat/completions|/v1/completions|/v1/embeddings) HTTP/1\.1\r\n")
_ROUTE_NAMES = {b"/v1/chat/completions": "chat_completions", b"/v1/completions": "completions",
                b"/v1/embeddings": "embeddings"}
#: One header line: a token, a colon, a value of visible ASCII (spaces and tabs inside).
_HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e]*")
#: A head larger than this, with more lines, or with a longer line, is aiohttp's to judge (and
#: refuse: its parser takes lines of 8,190 bytes and 128 headers at most).
MAX_HEAD_BYTES = 16384
MAX_HEADER_LINES = 100
MAX_HEADER_LINE_BYTES = 8190
#: Headers taken once: those the front reads, and those aiohttp's parser refuses twice (its
#: ``SINGLETON_HEADERS``: ``Host``, ``User-Agent``...). A second copy sends the request to aiohttp.
_ONCE = frozenset((b"authorization", b"content-type", b"content-length", b"x-request-id",
                   b"connection", b"expect", *(name.encode() for name in SINGLETON_HEADERS)))
#: Headers whose presence sends the request to aiohttp (framing or protocol it handles).
_REFUSED = frozenset((b"transfer-encoding", b"upgrade"))
#: The interim answer to ``Expect: 100-continue`` (curl sends it with any body over 1 KiB and
#: waits for it), written as aiohttp's default expect handler does: before the guard runs.
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Bytes of pipelined requests held while one is answered, beyond which reading pauses.
_MAX_HELD = 1 << 16
#: An answer sent before its body came whole (a 401, a 413, a 408) is followed by reading and
#: dropping the rest of that body, until it is whole, the client is quiet for
#: ``_LINGER_QUIET_S``, or ``_LINGER_S`` passed, and only then the close: closing a socket with
#: unread bytes makes the kernel reset the connection, which fails the send of a client still
#: writing its body and can destroy the answer in flight (aiohttp's lingering close, 10 s).
_LINGER_S = 10.0
_LINGER_QUIET_S = 1.0
#: Each status line, made once: the standard library's phrases, which aiohttp sends too.
_STATUS_LINES = {status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
                 for status in HTTPStatus}


class _Clock:
    """The ``Date`` header, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_CLOCK = _Clock()
_SERVER = SERVER_SOFTWARE.encode()


def response_head(status: int, headers: list[tuple[str, str]], framing: bytes, *, close: bool) -> bytes:
    """An HTTP/1.1 status line, ``headers``, the ``framing`` header line (``Content-Length`` or
    ``Transfer-Encoding``), and ``Date`` and ``Server`` as aiohttp sends them."""
    lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
    for name, value in headers:
        lines.append(b"%s: %s\r\n" % (name.encode(), value.encode("latin-1")))
    lines.append(b"%b\r\nDate: %b\r\nServer: %b\r\n" % (framing, _CLOCK.date(), _SERVER))
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class FrontRequest:
    """One request taken by the front: what the API's guard and handlers read of it, and the
    ways to answer it (:meth:`respond`, or :meth:`sse_response` for a stream)."""

    __slots__ = ("_body", "_body_parts", "_body_waiter", "_conn", "_held", "_length", "_received",
                 "authorization", "close", "committed", "content_type", "expects_continue", "finished",
                 "request_id", "route")

    version = HttpVersion11

    def __init__(self, conn: FrontConnection, route: str, length: int, close: bool,
                 authorization: str | None, content_type: str | None, request_id: str | None,
                 max_body_bytes: int) -> None:
        self._conn = conn
        #: Whether the body is kept: one over the bound is answered 413 unread, never held.
        self._held = length <= max_body_bytes
        self.route = route
        self._length = length
        self.close = close
        self.authorization = authorization
        self.content_type = content_type
        self.request_id = request_id
        self._body: bytes | None = None
        self._body_parts: list[bytes] = []
        self._received = 0
        self._body_waiter: asyncio.Future[None] | None = None
        #: The whole answer was written (a stream's end included): the connection may go on.
        self.finished = False
        #: A stream's head is made (it leaves with the first bytes): no other answer may follow.
        self.committed = False
        #: The client sent ``Expect: 100-continue``.
        self.expects_continue = False

    @property
    def content_length(self) -> int:
        return self._length

    @property
    def transport(self) -> asyncio.Transport | None:
        """The client's transport, or None once it went away."""
        return self._conn.transport

    # ---- body -------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> bytes:
        """Body bytes from the connection; returns what lies past this body (the next request)."""
        wanted = self._length - self._received
        part, rest = (data, b"") if len(data) <= wanted else (data[:wanted], data[wanted:])
        self._received += len(part)
        if self._held:
            self._body_parts.append(part)
        if self._received == self._length and self._held:
            self._body = b"".join(self._body_parts)
            self._body_parts.clear()
            if self._body_waiter is not None and not self._body_waiter.done():
                self._body_waiter.set_result(None)
        return rest

    @property
    def body_complete(self) -> bool:
        return self._received == self._length

    async def read_body(self, limit: int, timeout_s: float) -> bytes:
        """The whole body; ``RequestTooLargeError`` past ``limit`` (by its stated length, before
        any of it is waited for), a 408 when it does not arrive within ``timeout_s``."""
        if self._length > limit or not self._held:
            self.close = True  # its bytes are never read: the connection cannot go on
            raise RequestTooLargeError(f"Request body larger than {limit} bytes.")
        if self._body is None:
            self._body_waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._body_waiter
            except TimeoutError:
                self.close = True
                raise HttpStatusError(408, f"The request body did not arrive within {timeout_s:g} s.",
                                      "body_timeout") from None
        assert self._body is not None
        return self._body

    # ---- answers ----------------------------------------------------------------------------

    def respond(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        """A whole answer, in one write (``headers`` without framing or ``Date``)."""
        if not self._received == self._length:
            self.close = True  # answered before its body came whole (a 401, a 413)
        self._conn.write(response_head(status, headers, b"Content-Length: %d" % len(body),
                                       close=self.close) + body)
        self.finished = True

    def sse_response(self, headers: dict[str, str]) -> FrontStream:
        return FrontStream(self, headers)


class FrontStream:
    """An SSE answer written straight to the socket, with the small part of aiohttp's
    ``StreamResponse`` interface :mod:`blueprint.server.sse` uses: headers held until the first
    bytes (one send), HTTP/1.1 chunked framing, writes that wait while the client's socket
    buffer is full, an end the relay may write itself (:meth:`end_written`)."""

    __slots__ = ("_eof_sent", "_head", "_request", "chunked", "ended_by_relay", "headers",
                 "prepared", "status")

    def __init__(self, request: FrontRequest, headers: dict[str, str]) -> None:
        self._request = request
        self.headers = headers
        self.status = 200
        self.chunked = False
        self.prepared = False
        self.ended_by_relay = False
        self._eof_sent = False
        self._head: bytes | None = None

    def enable_chunked_encoding(self) -> None:
        self.chunked = True

    def force_close(self) -> None:
        self._request.close = True

    async def prepare(self, request: object) -> None:
        """Build the head; it leaves with the first write."""
        if self.prepared:
            return
        self.prepared = self._request.committed = True
        self._head = response_head(self.status, list(self.headers.items()),
                                   b"Transfer-Encoding: chunked", close=self._request.close)

    def _frame(self, data: bytes) -> bytes:
        framed = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        head = self._head
        if head is not None:
            self._head = None
            return head + framed
        return framed

    async def write(self, data: bytes) -> None:
        conn = self._request._conn
        if conn.transport is None or conn.transport.is_closing():
            raise ConnectionResetError("The client closed its connection.")
        conn.write(self._frame(data))
        await conn.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        conn = self._request._conn
        if conn.transport is None or conn.transport.is_closing():
            raise ConnectionResetError("The client closed its connection.")
        self._eof_sent = True
        conn.write(self._frame(data) + b"0\r\n\r\n")
        self._request.finished = True
        await conn.drain()

    def end_written(self) -> None:
        """The relay wrote the body's end itself (see ``_ClientSink.end``)."""
        self.ended_by_relay = True
        self._eof_sent = True
        self._request.finished = True


Handler = Callable[[FrontRequest], Awaitable[None]]


class Front:
    """The listening socket's protocol factory: front connections, the connection bound, and
    the hand-over to aiohttp (``server`` makes aiohttp's per-connection protocol)."""

    def __init__(self, handler: Handler, server: GuardedServer, *, idle_timeout_s: float,
                 max_connections: int, max_body_bytes: int) -> None:
        self.handler = handler
        self.server = server
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        self.connections: set[FrontConnection] = set()
        self.closing = False

    def __call__(self) -> FrontConnection:
        return FrontConnection(self)

    def open_count(self) -> int:
        return len(self.connections) + self.server.open_count()

    async def shutdown(self, timeout_s: float) -> None:
        """Close idle connections now, let answers in progress finish within ``timeout_s``
        (each connection closes after its answer), then close the rest."""
        self.closing = True
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        tasks = [conn.task for conn in self.connections if conn.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        for conn in list(self.connections):
            if conn.task is not None:
                conn.task.cancel()
            conn.close()


class FrontConnection(asyncio.Protocol):
    """One client connection while the front serves it (see the module's docstring)."""

    __slots__ = ("_buffer", "_context", "_drain", "_front", "_idle_since", "_last_read", "_linger",
                 "_linger_end", "_paused", "_reading_paused", "_request", "_scanned", "_timer", "task",
                 "transport")

    def __init__(self, front: Front) -> None:
        self._front = front
        self.transport: asyncio.Transport | None = None
        #: Bytes not yet taken: the next head (a bytearray while it grows, so that a client
        #: trickling its head costs linear time, as does the search for its end: ``_scanned``).
        self._buffer: bytes | bytearray = b""
        self._scanned = 0
        self._request: FrontRequest | None = None  # the request being answered
        self.task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._paused = False  # writing paused: the client's socket buffer is full
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._linger: asyncio.TimerHandle | None = None  # set while an unread body is dropped
        self._linger_end = self._last_read = 0.0
        #: The context each request's task (and aiohttp, on a hand-over) starts from: the
        #: connection's, never the previous request's task (its request id and context variables).
        self._context = contextvars.copy_context()

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        front = self._front
        open_now = front.open_count()
        if front.closing or open_now >= front.max_connections:
            front.server.shed(transport, open_now)
            return
        self.transport = transport  # type: ignore[assignment]
        tcp_nodelay(transport, True)  # type: ignore[arg-type]  # as aiohttp's protocol does
        tcp_keepalive(transport)  # type: ignore[arg-type]
        front.connections.add(self)
        self._idle_since = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(front.idle_timeout_s, self._check_idle)

    def data_received(self, data: bytes) -> None:
        request = self._request
        if request is not None and not request.body_complete:
            data = request._feed(data)
            if self._linger is not None:  # its answer went out: the rest is dropped, then the close
                self._last_read = time.monotonic()
                if request.body_complete and self.transport is not None:
                    self.transport.close()
                return
            if not data:
                return
        if not self._buffer:
            self._buffer = data
        else:
            if type(self._buffer) is bytes:
                self._buffer = bytearray(self._buffer)
            self._buffer += data
        if self.task is None:
            self._next()
        elif len(self._buffer) > _MAX_HELD and not self._reading_paused and self.transport is not None:
            self._reading_paused = True  # a client pipelining far ahead waits for its answers
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # the transport closes: connection_lost cancels an answer in progress

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._front.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self.task is not None:
            self.task.cancel()  # as aiohttp's handler_cancellation: a client gone frees its slot
        self._wake_drain()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    # ---- writing ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drain(self) -> None:
        """Until the client's socket buffer is below its high-water mark (or it went away)."""
        if self._paused and self.transport is not None:
            if self._drain is None or self._drain.done():
                self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # ---- requests ---------------------------------------------------------------------------

    def _next(self) -> None:
        """Take the next request from the buffer: answer it here, wait for more of its head, or
        hand the connection to aiohttp."""
        buffer = self._buffer
        if not buffer or self.transport is None:
            return
        end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3), MAX_HEAD_BYTES + 4)
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES or not _could_be_ours(buffer) \
                    or _bare_line_feed(buffer, self._scanned):
                self._context.copy().run(self._hand_over)
            else:
                self._scanned = len(buffer)
            return  # more of the head is coming (the idle timer bounds how long)
        self._scanned = 0
        if type(buffer) is bytearray:
            buffer = bytes(buffer)  # whole now (and bounded): parsed as bytes
        try:
            request = self._parse_head(buffer, end)
        except Exception:  # a defect here must not cost the client: aiohttp judges the head
            log.exception("front_head_failed")
            request = None
        if request is None:
            self._context.copy().run(self._hand_over)
            return
        self._buffer = b""
        if request.expects_continue:
            self.write(_CONTINUE)
        rest = buffer[end + 4:]
        if request.content_length == 0:
            request._feed(b"")
        elif rest:
            rest = request._feed(rest)
        self._buffer = rest
        self._request = request
        self.task = asyncio.get_running_loop().create_task(self._answer(request),
                                                           context=self._context.copy())

    def _parse_head(self, buffer: bytes, end: int) -> FrontRequest | None:
        """The request if its head is in the front's subset, else None (aiohttp's to serve)."""
        line = _REQUEST_LINE.match(buffer)
        if line is None:
            return None
        found: dict[bytes, bytes] = {}
        start = line.end()
        lines = 0
        while start < end + 2:
            stop = buffer.find(b"\r\n", start, end + 2)
            if stop - start > MAX_HEADER_LINE_BYTES or not _HEADER_LINE.fullmatch(buffer, start, stop):
                return None
            colon = buffer.index(b":", start, stop)
            name = buffer[start:colon].lower()
            if name in _REFUSED:
                return None
            if name in _ONCE:
                if name in found:
                    return None
                found[name] = buffer[colon + 1:stop].strip(b" \t")
            start = stop + 2
            lines += 1
            if lines > MAX_HEADER_LINES:
                return None
        length = 0
        stated = found.get(b"content-length")
        if stated is not None:
            if not stated.isdigit() or len(stated) > 15:
                return None
            length = int(stated)
        expect = found.get(b"expect")
        if expect is not None and expect.lower() != b"100-continue":
            return None  # aiohttp answers 417
        close = False
        connection = found.get(b"connection")
        if connection is not None:
            tokens = {token.strip().lower() for token in connection.split(b",")}
            if b"upgrade" in tokens:
                return None
            close = b"close" in tokens
        request = FrontRequest(self, _ROUTE_NAMES[line.group(1)], length, close or self._front.closing,
                               _text(found.get(b"authorization")), _text(found.get(b"content-type")),
                               _text(found.get(b"x-request-id")), self._front.max_body_bytes)
        request.expects_continue = expect is not None
        return request

    async def _answer(self, request: FrontRequest) -> None:
        try:
            await self._front.handler(request)
            if request.finished and not request.close:
                await self.drain()  # a client that does not read gets no further answers
        except asyncio.CancelledError:
            request.finished = False
        except Exception:  # the handler answers its own errors: this is a defect
            log.exception("front_request_failed")
            request.finished = False
        finally:
            self.task = None
            self._request = None
            self._after(request)

    def _after(self, request: FrontRequest) -> None:
        """After an answer: keep the connection for the next request, or close it."""
        if self.transport is None:
            return
        if not request.finished or request.close or self._front.closing:
            if request.finished and not request.body_complete and not self.transport.is_closing():
                self._start_linger(request)
            else:
                self.transport.close()
            return
        self._idle_since = time.monotonic()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        if self._buffer:
            self._next()

    def _start_linger(self, request: FrontRequest) -> None:
        """Read and drop the rest of ``request``'s body before closing (see ``_LINGER_S``)."""
        assert self.transport is not None
        request._held = False
        request._body_parts.clear()
        self._request = request
        self._buffer = b""
        now = time.monotonic()
        self._idle_since = self._last_read = now
        self._linger_end = now + _LINGER_S
        self._linger = asyncio.get_running_loop().call_later(_LINGER_QUIET_S, self._check_linger)
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def _check_linger(self) -> None:
        self._linger = None
        if self.transport is None:
            return
        now = time.monotonic()
        quiet_left = self._last_read + _LINGER_QUIET_S - now
        if quiet_left <= 0 or now >= self._linger_end:
            self.transport.close()
            return
        self._linger = asyncio.get_running_loop().call_later(min(quiet_left, self._linger_end - now),
                                                             self._check_linger)

    def _check_idle(self) -> None:
        """The idle timer: close a connection without a whole request head for ``idle_timeout_s``
        (one timer per connection, moved rather than re-made per request)."""
        self._timer = None
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        timeout = self._front.idle_timeout_s
        if self.task is not None:  # answering: idle again from the answer's end
            self._timer = loop.call_later(timeout, self._check_idle)
            return
        left = self._idle_since + timeout - time.monotonic()
        if left <= 0:
            self.transport.close()
            return
        self._timer = loop.call_later(left, self._check_idle)

    def _hand_over(self) -> None:
        """aiohttp serves this connection from here on, starting with what is buffered."""
        transport = self.transport
        assert transport is not None
        self._front.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        data, self._buffer = bytes(self._buffer), b""
        self.transport = None
        handler: RequestHandler = self._front.server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        if data:
            handler.data_received(data)


def _could_be_ours(partial: bytes | bytearray) -> bool:
    """Whether an unfinished head may still become one the front serves (else aiohttp waits for
    the rest itself): it starts like one of the front's request lines."""
    line_end = partial.find(b"\r\n")
    if line_end < 0:
        return any(candidate.startswith(partial[:len(candidate)]) for candidate in _LINES)
    return _REQUEST_LINE.match(partial) is not None


_LINES = tuple(b"POST %s HTTP/1.1\r\n" % path for path in _ROUTE_NAMES)


def _bare_line_feed(partial: bytes | bytearray, scanned: int) -> bool:
    """Whether an unfinished head has a line feed without its carriage return past ``scanned``:
    aiohttp may take that head as whole (a line ending in LF) and answers it 400 at once, while
    the front would wait for a CRLF CRLF that never comes; it is aiohttp's."""
    return partial.count(b"\n", scanned) != partial.count(b"\r\n", max(0, scanned - 1))


def _text(value: bytes | None) -> str | None:
    return value.decode("ascii") if value is not None else None


