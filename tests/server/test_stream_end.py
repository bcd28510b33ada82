"""A relayed stream ends for its client when the upstream's ``[DONE]`` arrives: the last chunk,
``[DONE]`` and the body's end leave together from the upstream's read callback. What the upstream
does after its ``[DONE]`` (holding the end of its chunked body, or closing the connection without
it) never delays nor spoils an answer the client already has whole; it only decides whether the
upstream connection is reused. Against a raw upstream on loopback whose framing the test writes
byte by byte, through the real server, read by a raw HTTP/1.1 client on one keep-alive socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from blueprint.balancer import Balancer
from blueprint.llm import create_client
from blueprint.llm.config import NodeConfig
from blueprint.server import start_server
from blueprint.server.settings import ServerSettings
from tests.loopback import read_request

KEY = "sk-stream-end"
TOKENS = ["a", "b", "c"]


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _events(model: str) -> bytes:
    out = b""
    for token in TOKENS:
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                 "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]}
        out += _frame(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    usage = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
             "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
    return out + _frame(b"data: " + json.dumps(usage).encode() + b"\n\n") + _frame(b"data: [DONE]\n\n")


class RawUpstream:
    """Answers every streamed chat request with three tokens and ``[DONE]``, then, after
    ``tail``: ``"hold"`` waits ``hold_s`` before the chunked body's end, ``"cut"`` closes the
    connection without it, ``"end"`` ends it at once (all in one write)."""

    def __init__(self, tail: str, hold_s: float = 2.0, events: bytes | None = None) -> None:
        self.tail, self.hold_s = tail, hold_s
        self.events = _events("m") if events is None else events
        self.requests = 0
        self.connections = 0  # connections that carried a chat request
        self.server: asyncio.Server | None = None
        self.base_url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = False
        try:
            while True:
                head, _ = await read_request(reader)
                if head.startswith(b"GET"):
                    body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
                                 b"\r\n\r\n%b" % (len(body), body))
                    continue
                self.requests += 1
                if not counted:
                    counted, self.connections = True, self.connections + 1
                answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n" + self.events)
                if self.tail == "end":
                    writer.write(answer + b"0\r\n\r\n")
                    continue
                writer.write(answer)
                await writer.drain()
                if self.tail == "cut":
                    writer.close()
                    return
                await asyncio.sleep(self.hold_s)
                writer.write(b"0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def __aenter__(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """Start the real server over one ``openai`` node pointing at the given upstream."""
    started: list[tuple[Balancer, Any]] = []

    async def start(upstream: RawUpstream) -> tuple[Balancer, int]:
        config = NodeConfig(name="raw", engine="openai", model="ours", served_model="m",
                            base_url=upstream.base_url)
        balancer = Balancer([create_client(config)], node_configs={config.node_name: config})
        await balancer.start()
        server = await start_server(balancer, ServerSettings(host="127.0.0.1", port=0, api_keys=[KEY],
                                                             shutdown_timeout_s=1.0))
        started.append((balancer, server))
        return balancer, server.port

    yield start
    for balancer, server in started:
        await server.close()
        await balancer.close()


async def _stream_twice(port: int) -> tuple[list[bytes], list[float]]:
    """Two streamed requests, one after the other, on one keep-alive HTTP/1.1 socket: each
    answer's decoded body, and how long each took to arrive whole (its chunked end included)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"model": "ours", "stream": True, "max_tokens": 3,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
               + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    bodies, took = [], []
    try:
        for _ in range(2):
            sent = time.perf_counter()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
            decoded = b""
            while True:
                size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))[:-2], 16)
                data = await asyncio.wait_for(reader.readexactly(size + 2), 5)
                if size == 0:
                    assert data == b"\r\n"
                    break
                decoded += data[:-2]
            took.append(time.perf_counter() - sent)
            bodies.append(decoded)
        # Nothing follows the second answer's end (no second terminator written by anyone).
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.2)
    finally:
        writer.close()
    return bodies, took


def _tokens_and_end(body: bytes) -> tuple[list[str], bytes]:
    events = [e for e in body.split(b"\n\n") if e]
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(chunk["model"] == "ours" for chunk in chunks)
    return [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"]], events[-1]


async def test_the_client_has_the_whole_stream_while_the_upstream_holds_its_end(serve: Any) -> None:
    async with RawUpstream("hold", hold_s=2.0) as upstream:
        _, port = await serve(upstream)
        bodies, took = await _stream_twice(port)
    for body in bodies:
        assert _tokens_and_end(body) == (TOKENS, b"data: [DONE]")
    assert max(took) < 1.0, f"the answers took {took}: held until the upstream ended its body"


async def test_an_upstream_that_closes_after_its_done_still_gave_a_whole_answer(serve: Any) -> None:
    async with RawUpstream("cut") as upstream:
        balancer, port = await serve(upstream)
        bodies, _ = await _stream_twice(port)
        assert upstream.requests == 2
    for body in bodies:
        assert _tokens_and_end(body) == (TOKENS, b"data: [DONE]")  # no error event after [DONE]
    node = balancer.nodes()[0]
    assert node.client.metrics().errors_total == 0
    assert node.breaker.state == "closed"


async def test_answers_whose_upstream_ended_at_once_reuse_both_connections(serve: Any) -> None:
    async with RawUpstream("end") as upstream:
        _, port = await serve(upstream)
        bodies, _ = await _stream_twice(port)
        assert upstream.requests == 2 and upstream.connections == 1  # the upstream's, reused
    for body in bodies:
        assert _tokens_and_end(body) == (TOKENS, b"data: [DONE]")


async def test_an_upstream_end_that_comes_later_still_returns_its_connection(serve: Any) -> None:
    async with RawUpstream("hold", hold_s=0.3) as upstream:
        balancer, port = await serve(upstream)
        await _stream_twice(port)  # the second came before the first's end: a second connection
        await asyncio.sleep(0.8)  # both ends have come by now: both connections back in the pool
        await _stream_twice(port)
        assert upstream.requests == 4 and upstream.connections == 2
    assert balancer.nodes()[0].client.metrics().errors_total == 0


def _event(data: dict[str, Any]) -> bytes:
    return _frame(b"data: " + json.dumps(data).encode() + b"\n\n")


USAGE_ONLY = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
              "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}}
TOKEN = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}


@pytest.mark.parametrize("events", [
    _event(USAGE_ONLY) + _frame(b"data: [DONE]\n\n"),
    _event(USAGE_ONLY) + _event(TOKEN) + _event(TOKEN) + _frame(b"data: [DONE]\n\n"),
], ids=["usage-only-then-done", "usage-only-then-tokens"])
async def test_a_first_event_the_client_does_not_get_still_sends_the_headers_first(
        serve: Any, events: bytes) -> None:
    """The headers leave with the first bytes the client gets. When the first event has none for
    it (a usage-only event it did not ask for), they must still leave before the relay writes the
    rest straight to the socket: else the client reads a body without a status line."""
    async with RawUpstream("end", events=events) as upstream:
        _, port = await serve(upstream)
        bodies, _ = await _stream_twice(port)  # asserts "HTTP/1.1 200" and chunked, twice
    tokens = events.count(b'"content"')
    for body in bodies:
        assert body.endswith(b"data: [DONE]\n\n")
        assert body.count(b'"content": "a"') + body.count(b'"content":"a"') == tokens
        assert b'"usage"' not in body
