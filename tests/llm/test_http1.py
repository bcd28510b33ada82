"""The lean upstream HTTP/1.1 client against raw loopback servers that answer byte by byte:
chunked bodies split anywhere, Content-Length, close-delimited bodies, keep-alive reuse, a stale
idle connection, and garbage; and the bounds on what a broken or hostile upstream can make us
hold: a whole answer, the bytes nobody has read yet, and a chunked body's trailers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from blueprint.bounded import AnswerTooLargeError
from blueprint.llm.engines._http1 import READ_HIGH_WATER, Http1Error, Http1Pool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[Http1Pool, list[int]]]]]:
    servers: list[asyncio.Server] = []
    pools: list[Http1Pool] = []

    async def start(handler: Handler) -> tuple[Http1Pool, list[int]]:
        connections: list[int] = []

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        pool = Http1Pool(f"http://127.0.0.1:{port}/v1", headers={"Content-Type": "application/json"},
                         keepalive_s=5, connect_timeout_s=2)
        pools.append(pool)
        return pool, connections

    yield start
    for pool in pools:
        pool.close()
    for server in servers:
        server.close()


async def test_chunked_answers_split_at_every_byte_are_read_and_the_connection_reused(serve) -> None:  # type: ignore[no-untyped-def]
    body = b"data: one\n\ndata: two\n\n"
    wire = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Thing: 1\r\n\r\n"
            + b"%x;ext=1\r\n" % 9 + body[:9] + b"\r\n" + b"%x\r\n" % (len(body) - 9) + body[9:]
            + b"\r\n0\r\nTrailer: x\r\n\r\n")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            for i in range(len(wire)):  # one byte per write: every boundary is exercised
                writer.write(wire[i:i + 1])
                await writer.drain()

    pool, connections = await serve(handler)
    for _ in range(3):
        conn = await pool.post("/chat/completions", b"{}", 5)
        assert conn.status == 200 and conn.headers["x-thing"] == "1"
        assert await conn.read_all() == body
        pool.release(conn)
    assert len(connections) == 1


async def test_content_length_and_close_delimited_bodies(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        if request == b"length":
            writer.write(b"HTTP/1.1 429 Too Many\r\nContent-Length: 5\r\nRetry-After: 3\r\n\r\nhello")
            await writer.drain()
            await _read_request(reader)  # kept alive: a second request on the same connection
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        await writer.drain()

    pool, connections = await serve(handler)
    conn = await pool.post("/x", b"length", 5)
    assert (conn.status, await conn.read_all(), conn.headers["retry-after"]) == (429, b"hello", "3")
    pool.release(conn)
    conn = await pool.post("/x", b"again", 5)
    assert await conn.read_all() == b"ok"
    pool.release(conn)
    assert len(connections) == 1
    conn = await pool.post("/x", b"close", 5)
    assert await conn.read_all() == b"until the end" and not conn.keep_alive
    pool.release(conn)


async def test_a_stale_idle_connection_is_replaced_and_garbage_is_an_error(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        if request == b"garbage":
            writer.write(b"SMTP ready\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # then close: the pooled connection goes stale while idle

    pool, connections = await serve(handler)
    conn = await pool.post("/x", b"first", 5)
    assert await conn.read_all() == b"ok"
    pool.release(conn)
    await asyncio.sleep(0.05)
    conn = await pool.post("/x", b"second", 5)  # the idle one was closed by the server: a fresh one
    assert await conn.read_all() == b"ok"
    pool.release(conn)
    assert len(connections) == 2
    with pytest.raises(Http1Error):
        conn = await pool.post("/x", b"garbage", 5)


async def _pour(writer: asyncio.StreamWriter, piece: bytes, times: int) -> bool:
    """Write ``piece`` ``times`` times; False when the peer closed the connection first."""
    try:
        for _ in range(times):
            writer.write(piece)
            await writer.drain()
    except ConnectionError:
        return False
    return True


async def test_an_answer_over_the_bound_is_cut_as_soon_as_it_is_crossed(serve) -> None:  # type: ignore[no-untyped-def]
    piece = b"x" * 65536
    finished: list[bool] = []  # per oversized answer: did the upstream get to write all of it?

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        if request == b"small":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        elif request == b"declared":  # says 64 MiB up front: refused before any of it is read
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1024 * len(piece)))
            finished.append(await _pour(writer, piece, 1024))
        else:  # chunked: only counting tells
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            finished.append(await _pour(writer, b"%x\r\n%s\r\n" % (len(piece), piece), 1024))

    pool, connections = await serve(handler)
    for kind in (b"declared", b"chunked"):
        conn = await pool.post("/x", kind, 5)
        started = time.monotonic()
        with pytest.raises(AnswerTooLargeError) as caught:
            await conn.read_all(256 * 1024)
        assert caught.value.limit == 256 * 1024 and conn.closed
        pool.release(conn)  # closed: never back in the pool
        for _ in range(200):  # the upstream learns of the close at its next write
            if len(finished) == len(connections):
                break
            await asyncio.sleep(0.01)
        assert finished[-1] is False and time.monotonic() - started < 2
    conn = await pool.post("/x", b"small", 5)  # the pool still serves
    assert await conn.read_all(256 * 1024) == b"ok"
    pool.release(conn)


async def test_unread_body_bytes_stay_bounded_while_nobody_reads(serve) -> None:  # type: ignore[no-untyped-def]
    """A stream whose consumer is slow must not pile the upstream's bytes up in memory: the
    connection stops reading (TCP holds the upstream back) and resumes when read again."""
    piece, times = b"y" * 65536, 512  # 32 MiB
    done = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(piece) * times))
        if await _pour(writer, piece, times):
            done.set()

    pool, _ = await serve(handler)
    conn = await pool.post("/x", b"{}", 5)
    with pytest.raises(TimeoutError):  # held back: it cannot finish while we do not read
        await asyncio.wait_for(done.wait(), 0.5)
    held = len(conn.take_body())
    assert 0 < held <= 2 * READ_HIGH_WATER
    rest = await conn.read_all(len(piece) * times)
    assert held + len(rest) == len(piece) * times and done.is_set()
    pool.release(conn)


async def test_trailers_that_never_end_are_an_error(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: ")
        await _pour(writer, b"t" * 65536, 64)  # one trailer line of 4 MiB, no end
        await reader.read()  # held open: only a bound ends it

    pool, _ = await serve(handler)
    conn = await pool.post("/x", b"{}", 3)
    with pytest.raises(Http1Error, match="trailer"):
        await conn.read_all()
    pool.release(conn)


async def test_a_pool_closed_while_a_connection_awaits_its_end_holds_no_socket() -> None:
    """A connection waiting (off the request's path) for the end of an answer whose content was
    all read belongs to its pool: closing the pool (a node removed, the daemon stopping) closes
    it, and an end that comes later never puts it back into a closed pool."""
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(b"0\r\n\r\n")  # the end comes after the pool was closed
        await writer.drain()
        await reader.read()  # until we close
        closed.set()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Http1Pool(f"http://127.0.0.1:{port}", headers={}, keepalive_s=30, connect_timeout_s=2)
    conn = await pool.post("/x", b"{}", 5)
    assert await conn.read_some() == b"ok"
    pool.release_when_ended(conn, 5.0)
    pool.close()  # the node is removed / the daemon stops
    await asyncio.sleep(0.6)
    try:
        assert conn.closed, "still open after its pool was closed"
        assert not pool._idle, "back in a closed pool's idle list"
    finally:
        conn.close()
        server.close()
