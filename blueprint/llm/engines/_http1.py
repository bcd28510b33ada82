"""A lean HTTP/1.1 keep-alive client for the one hot call of a proxy node: POST a JSON body to
the upstream and read its answer (whole, or as it streams).

Why not aiohttp's client here: per request it builds a request object, a response object, a
timer set, trace hooks and a stream reader, which cost more CPU than the rest of the gateway's
per-request work; a profile of the gateway put a third of each request in it. This client keeps
one :class:`asyncio.Protocol` per pooled connection, writes the request in one ``write`` and
parses the answer in ``data_received`` (status line, headers, a ``Content-Length`` or chunked
body), handing body bytes to the reader as they arrive. Everything else (health checks, model
lists, metrics) stays on aiohttp.

Connections are reused while the server keeps them alive, up to ``keepalive_s`` idle (below the
server's own idle timeout, so we never write to a connection it is closing). A request that fails
on a reused connection before any byte of the answer came back is sent once more on a fresh one:
the server closed the idle connection as we wrote, and never saw the request.

What an upstream can make us hold is bounded (it is a peer we do not control): the head (64 KiB),
each trailer line of a chunked body (64 KiB; endless short ones end at the read timeout), a whole
answer (:meth:`_Connection.read_all`, the pool's ``max_answer_bytes``: cut as soon as it is
crossed, a ``Content-Length`` over it refused before reading), and the bytes that arrived but
nobody has read yet (a slow consumer of a stream): past :data:`READ_HIGH_WATER` the connection
stops reading, so TCP holds the upstream back, and resumes when they are read. A stream's total
is not bounded (a long stream is legitimate); its events are, by the reader that parses them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import weakref
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from blueprint.bounded import MIB, AnswerTooLargeError

#: Unread body bytes past which a connection stops reading until they are taken (flow control).
READ_HIGH_WATER = MIB
#: Default bound on a whole answer read with :meth:`_Connection.read_all`. The largest legitimate
#: answers are embeddings: 2,048 inputs (the most a request holds) of 4,096 dimensions written as
#: JSON floats come to about 180 MiB.
DEFAULT_MAX_ANSWER_BYTES = 256 * MIB
#: Head and trailer bytes an upstream may send before their end.
_MAX_HEAD = 65536


class Http1Error(ConnectionError):
    """The upstream broke the HTTP exchange (closed early, or sent something unparseable)."""


def _field(lowered: bytes, name: bytes) -> bytes | None:
    """The value of the last ``name`` field (``\\r\\nname:``, lower case) in a lowered head."""
    at = lowered.rfind(name)
    if at < 0:
        return None
    start = at + len(name)
    end = lowered.find(b"\r\n", start)
    return lowered[start:end if end >= 0 else len(lowered)].strip()


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the answer being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_answer: int = DEFAULT_MAX_ANSWER_BYTES) -> None:
        self.loop = loop
        self.max_answer = max_answer
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the pending timer fires
        self._deadline: float | None = None  # when the armed wait expires; None: disarmed
        #: Called when body bytes arrive, before the reader would be woken: it takes them with
        #: :meth:`take_body` right in the read callback (a relaying stream) and returns True to
        #: let the reader sleep on. The end of the answer, an error or a timeout still wake it.
        self.listener: Callable[[], bool] | None = None
        self._reset()

    def _reset(self) -> None:
        self._buffer = b""
        self._head_done = False
        self.status = 0
        self._fields = b""
        self._length: int | None = None  # Content-Length; None with chunked or until close
        self._chunked = False
        self._chunk_left = -1  # bytes left of the current chunk; -1: a size line comes next
        self._trailers = False
        self.complete = False
        self.keep_alive = True
        self.received_any = False
        self._body: list[bytes] = []
        self._unread = 0  # bytes received since the body was last taken (flow control)
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            if self._length is None and not self._chunked and self._head_done:
                self.complete = True  # a body delimited by the connection's close
            elif self._error is None:  # a timeout that closed it keeps its own error
                self._error = exc or Http1Error("the upstream closed the connection mid-answer")
        self._wake()

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self._unread += len(data)
        try:
            self._feed(data)
        except Http1Error as exc:
            self._error = exc
            self.close()
        listener = self.listener
        if listener is not None:
            if listener() and self._error is None and not self.complete:
                return  # taken, and more is wanted: the reader sleeps on
            self.listener = None
        if self._unread > READ_HIGH_WATER and not self._paused and not self.closed:
            self._paused = True  # nobody reads: let TCP hold the upstream back
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    # ---- parsing

    def _feed(self, data: bytes) -> None:
        if not self._head_done:
            data = self._buffer + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > _MAX_HEAD:
                    raise Http1Error("the upstream's response headers are too large")
                self._buffer = data
                return
            self._parse_head(data[:end])
            self._head_done = True
            self._buffer = b""
            data = data[end + 4:]
            if self._length == 0 or self.status in (204, 304):
                self.complete = True
                return
        if self._chunked:
            self._feed_chunked(data)
        elif self._length is not None:
            if data:
                self._body.append(data[:self._length])
                self._length -= len(data)
            if self._length <= 0:
                self.complete = True
        elif data:
            self._body.append(data)

    def _parse_head(self, head: bytes) -> None:
        """The status and the three framing fields (found with byte searches: a loop over every
        header line cost more than the rest of reading the answer); the other fields are
        parsed only if asked for (:attr:`headers`)."""
        line, _, fields = head.partition(b"\r\n")
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise Http1Error(f"not an HTTP/1.x answer: {line[:80]!r}")
        try:
            self.status = int(parts[1])
        except ValueError:
            raise Http1Error(f"bad status line: {line[:80]!r}") from None
        self._fields = fields
        lowered = b"\r\n" + fields.lower()
        encoding = _field(lowered, b"\r\ntransfer-encoding:")
        length = _field(lowered, b"\r\ncontent-length:")
        if encoding is not None and encoding.endswith(b"chunked"):
            self._chunked = True
        elif length is not None:
            try:
                self._length = int(length)
            except ValueError:
                raise Http1Error("bad Content-Length") from None
        connection = _field(lowered, b"\r\nconnection:") or b""
        if connection == b"close" or (parts[0] == b"HTTP/1.0" and connection != b"keep-alive"):
            self.keep_alive = False
        if not self._chunked and self._length is None:
            self.keep_alive = False  # the body ends when the connection does

    @property
    def headers(self) -> dict[str, str]:
        """The answer's header fields, names lower-cased (the last of a repeated one wins)."""
        headers: dict[str, str] = {}
        for line in self._fields.split(b"\r\n"):
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        return headers

    def _feed_chunked(self, data: bytes) -> None:
        data = self._buffer + data if self._buffer else data
        self._buffer = b""
        pos, size = 0, len(data)
        while pos < size:
            if self._trailers:  # after the last chunk: trailer lines until an empty one
                end = data.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > _MAX_HEAD:
                        raise Http1Error("the upstream's trailer fields are too large")
                    self._buffer = data[pos:]
                    return
                if end == pos:
                    self.complete = True
                    return
                pos = end + 2
                continue
            if self._chunk_left < 0:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > 1024:
                        raise Http1Error("bad chunk size line")
                    self._buffer = data[pos:]
                    return
                try:
                    self._chunk_left = int(data[pos:end].split(b";", 1)[0], 16)
                except ValueError:
                    raise Http1Error("bad chunk size") from None
                pos = end + 2
                if self._chunk_left == 0:
                    self._trailers = True
                continue
            if self._chunk_left > 0:
                take = min(self._chunk_left, size - pos)
                self._body.append(data[pos:pos + take])
                self._chunk_left -= take
                pos += take
                if self._chunk_left:
                    return
            # the CRLF after a chunk's data
            if size - pos < 2:
                self._buffer = data[pos:]
                return
            if data[pos:pos + 2] != b"\r\n":
                raise Http1Error("missing CRLF after a chunk")
            pos += 2
            self._chunk_left = -1

    # ---- deadlines: one timer handle, moved lazily (a stream re-arms at every read)

    def arm(self, seconds: float) -> None:
        """Fail the exchange with TimeoutError (and close the connection) unless the next
        :meth:`disarm` or :meth:`arm` comes within ``seconds``. Re-arming only moves a
        deadline: the one timer checks it when it fires, and is replaced only when the new
        deadline comes earlier (no timer created and cancelled per read)."""
        deadline = self.loop.time() + seconds
        self._deadline = deadline
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    def disarm(self) -> None:
        self._deadline = None

    def _cancel_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_deadline(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:  # moved on since this timer was set
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._check_deadline)
            return
        self._expire()

    def _expire(self) -> None:
        self._deadline = None
        if self._error is None:
            self._error = TimeoutError("the upstream did not answer in time")
        self.close()
        self._wake()

    # ---- reading

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_head(self) -> None:
        while not self._head_done and self._error is None and not self.closed:
            await self._wait()
        if not self._head_done:
            raise self._error or Http1Error("the upstream closed the connection before answering")

    def _resume(self) -> None:
        self._paused = False
        if not self.closed:
            self.transport.resume_reading()  # type: ignore[union-attr]

    def take_body(self) -> bytes:
        """Body bytes that arrived since the last call, without waiting (b"" when none)."""
        self._unread = 0
        if self._paused:
            self._resume()
        body = self._body
        if not body:
            return b""
        self._body = []
        return body[0] if len(body) == 1 else b"".join(body)

    def failure(self) -> BaseException | None:
        """Why the exchange broke (a timeout, a reset, an unparseable answer), if it did."""
        return self._error

    async def wait(self) -> None:
        """Until the reader is woken: the end of the answer, an error, a timeout, or more body
        bytes (only while no :attr:`listener` takes them)."""
        await self._wait()

    async def read_some(self) -> bytes:
        """Body bytes that arrived since the last call (waiting for some); b"" at the end."""
        while not self._body:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            await self._wait()
        return self.take_body()

    async def read_all(self, limit: int | None = None) -> bytes:
        """The whole body; :class:`AnswerTooLargeError` (and the connection closed) as soon as
        it passes ``limit`` bytes (the pool's ``max_answer_bytes`` when None)."""
        limit = limit or self.max_answer
        if self._length is not None and self._length > limit:  # declared: refused unread
            self.close()
            raise AnswerTooLargeError(limit)
        parts = []
        total = 0
        while True:
            data = await self.read_some()
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > limit:
                self.close()
                raise AnswerTooLargeError(limit)
            parts.append(data)

    def send(self, payload: bytes) -> None:
        if self._paused:  # the last answer ended while its reader lagged: read this one
            self._resume()
        self._reset()
        assert self.transport is not None
        self.transport.write(payload)

    def close(self) -> None:
        self._cancel_timer()
        self.listener = None
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


class Http1Pool:
    """Keep-alive connections to one ``http(s)://host:port``; ``post`` is the only verb."""

    def __init__(self, base_url: str, *, headers: dict[str, str], keepalive_s: float,
                 connect_timeout_s: float, max_idle: int = 256,
                 max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        host_header = self.host if parts.port is None else f"{self.host}:{self.port}"
        fixed = "".join(f"{name}: {value}\r\n" for name, value in headers.items()
                        if name.lower() not in ("host", "content-length", "connection"))
        self._head_tail = f"Host: {host_header}\r\n{fixed}Content-Length: ".encode("latin-1")
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle
        self._max_answer = max_answer_bytes
        self._idle: deque[_Connection] = deque()
        #: Connections awaiting the end of an answer already read (``release_when_ended``): still
        #: this pool's, so closing it closes them (weak: one that timed out closed itself).
        self._ending: weakref.WeakSet[_Connection] = weakref.WeakSet()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout_s):
            _, conn = await loop.create_connection(lambda: _Connection(loop, self._max_answer), self.host,
                                                   self.port, ssl=self._ssl)
        return conn

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        idle = self._idle
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be closing
            if not conn.closed and now - conn.idle_since < self._keepalive_s:
                return conn
            conn.close()
        return None

    async def post(self, path: str, body: bytes, timeout_s: float) -> _Connection:
        """Send the request; returns the connection once the answer's headers are in (read its
        body with ``read_some``/``read_all``, then hand it to :meth:`release`). The connection
        is armed with ``timeout_s`` from the send on (see :meth:`_Connection.arm`); the caller
        re-arms or disarms it."""
        payload = (b"POST " + (self._prefix + path).encode() + b" HTTP/1.1\r\n" + self._head_tail
                   + str(len(body)).encode() + b"\r\n\r\n" + body)
        conn = self._take_idle()
        if conn is not None:
            conn.send(payload)
            conn.arm(timeout_s)
            try:
                await conn.read_head()
                return conn
            except (ConnectionError, OSError):
                conn.close()
                if conn.received_any:
                    raise
                # the server closed the idle connection as we wrote: it never saw the request
        conn = await self._connect()
        try:
            conn.send(payload)
            conn.arm(timeout_s)
            await conn.read_head()
        except BaseException:
            conn.close()
            raise
        return conn

    def release(self, conn: _Connection) -> None:
        """Back to the pool when the answer was read to its end on a keep-alive connection;
        closed otherwise (unread bytes would corrupt the next answer)."""
        conn.disarm()
        conn.listener = None
        if conn.complete and conn.keep_alive and not conn.closed and conn._error is None \
                and len(self._idle) < self._max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def release_when_ended(self, conn: _Connection, within_s: float) -> None:
        """Back to the pool once the rest of its answer (whose content was all read: a stream's
        ``[DONE]`` came, the chunked body's end did not yet) has arrived, without anyone
        waiting for it; closed if that takes longer than ``within_s`` or the answer breaks."""
        if conn.complete or conn.closed or conn.failure() is not None:
            self.release(conn)
            return

        def on_data() -> bool:
            conn.take_body()  # whatever trails the last event: read, and dropped
            if conn.complete:
                self._ending.discard(conn)
                self.release(conn)  # (clears the listener)
                return False
            return True

        self._ending.add(conn)
        conn.listener = on_data
        conn.arm(within_s)  # its timer closes the connection

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
        for conn in list(self._ending):
            conn.close()
