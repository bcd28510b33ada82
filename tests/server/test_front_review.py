"""Review of the lean HTTP/1.1 front: each test pins a client-visible behaviour the front must
share with the aiohttp path, against a real server on loopback over raw sockets."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import structlog

from tests.server.conftest import LiveServer
from tests.server.test_front import connect, post


@pytest.fixture
def served(emulated_server: Callable[..., LiveServer]) -> LiveServer:
    return emulated_server(idle_timeout_s=5.0)


@pytest.mark.parametrize("fast", [True, False], ids=["front", "aiohttp"])
@pytest.mark.parametrize("case", ["wrong key", "too large"])
def test_an_early_answer_lets_the_client_finish_sending_its_body(
        emulated_server: Callable[..., LiveServer], fast: bool, case: str) -> None:
    """A 401 (or 413) answered before the body came: the client, still sending it (as HTTP
    clients do: the whole body, then read), must not be reset. aiohttp reads and drops the rest
    (its lingering close); a close with unread bytes makes the kernel send an RST, which fails
    the client's send and can destroy the answer in flight."""
    live = emulated_server(fast_front=fast, max_body_bytes=1 << 20)
    size = 256 << 10 if case == "wrong key" else 2 << 20
    head = post("/v1/completions", b"", key="sk-wrong" if case == "wrong key" else "sk-test-0123456789abcdef",
                extra=f"Content-Length: {size}\r\n")
    with connect(live) as (sock, reader):
        sock.sendall(head + b"{" + b" " * 1023)
        answer = reader.answer()
        assert answer.status == (401 if case == "wrong key" else 413)
        sent = 1024
        chunk = b" " * (32 << 10)
        while sent < size:  # the rest of the body, at a client's pace
            part = chunk[:size - sent]
            sock.sendall(part)  # ConnectionResetError / BrokenPipeError: the server reset us
            sent += len(part)
            time.sleep(0.002)
        if fast:  # the answer said it closes: once the body is whole, it does
            assert reader.closed(within_s=3)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n\n", b"\n\r\n"])
def test_a_head_with_bare_line_feeds_is_refused_at_once(
        emulated_server: Callable[..., LiveServer], ending: bytes) -> None:
    """aiohttp answers a head whose lines end in a bare LF 400 at once; the front, seeing one of
    its request lines, must not sit on it waiting for a CRLF CRLF that never comes (a silent
    close after idle_timeout_s)."""
    live = emulated_server(idle_timeout_s=5.0)
    request = post()
    head, body = request.split(b"\r\n\r\n", 1)
    with connect(live) as (sock, reader):
        sock.settimeout(2)
        sock.sendall(head.replace(b"Host: t\r\n", b"Host: t\n") + ending + body)
        started = time.monotonic()
        assert reader.answer().status == 400
        assert time.monotonic() - started < 1


def test_a_pipelined_request_starts_with_none_of_the_previous_ones_context(served: LiveServer) -> None:
    """Each request's task starts from the connection's context, not from the task of the request
    before it (whose log fields, request id included, and context variables would carry over)."""
    front = served.server.front
    assert front is not None
    handler = front.handler
    seen: list[dict[str, object]] = []

    async def spy(request):  # type: ignore[no-untyped-def]
        seen.append(structlog.contextvars.get_contextvars())
        await handler(request)

    front.handler = spy
    with connect(served) as (sock, reader):
        sock.sendall(post(extra="X-Request-Id: first-one\r\n") + post(extra="X-Request-Id: second-one\r\n"))
        assert [reader.answer().status for _ in range(2)] == [200, 200]
    assert [fields.get("request_id") for fields in seen] == [None, None]


def test_a_connection_handed_over_after_a_pipelined_request_logs_none_of_its_fields(
        served: LiveServer, capfd: pytest.CaptureFixture[str]) -> None:
    with connect(served) as (sock, reader):
        sock.sendall(post(extra="X-Request-Id: leak-me\r\n")
                     + b"GET /health HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n")
        assert [reader.answer().status for _ in range(2)] == [200, 400]
    malformed = [line for line in capfd.readouterr().out.splitlines() if "http_malformed_request" in line]
    assert malformed and not any("leak-me" in line for line in malformed)
