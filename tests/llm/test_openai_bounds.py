"""The ``openai`` engine against an upstream on loopback that answers too much: a non-streamed body
over ``max_answer_bytes`` (declared, chunked without end, or as an error body), an SSE event that
never ends (before and after the first chunk, and while relaying into a sink), and ``/models`` and
``/metrics`` answers without end; and once through the HTTP API (a 502 to the client). Each is cut
as soon as the bound is crossed (the upstream is still writing when we close), ends in a clear
error naming the node and the bound, and the next request on the same node is served. A long
stream of small events is never cut."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from blueprint.balancer import Balancer, BalancerSettings
from blueprint.errors import (
    AnswerTooLargeBackendError,
    BackendError,
    InvalidRequestError,
    StreamInterruptedError,
)
from blueprint.llm import create_client
from blueprint.llm.config import NodeConfig
from blueprint.llm.engines.openai_http import OpenAIHttpClient
from blueprint.llm.raw import RawChunk
from blueprint.llm.types import ChatCompletionRequest, parse_request
from blueprint.server import ServerSettings, create_app, start_server
from tests.loopback import read_request, serve_upstream

BACKEND_MODEL = "org/backend-model"
OUR_MODEL = "our-model"
NODE = "edge"
BOUND = 64 * 1024  # the tests' bound (64 KiB): small, so a test pours little to cross it
PIECE = b"x" * 16384
POURED = 4096  # pieces an oversized answer has (64 MiB): it would take long to finish


def chat_request(**extra: Any) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, {
        "model": OUR_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra})


def answer(text: str = "fine") -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "created": 1, "model": BACKEND_MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def event(text: str) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": BACKEND_MODEL,
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class Upstream:
    """One OpenAI-like server whose next answers are set by ``mode``; ``outcomes`` records, for
    every oversized answer, whether it was written to its end ("finished") or cut by us ("cut")."""

    def __init__(self) -> None:
        self.mode = "normal"
        self.outcomes: list[str] = []

    async def _pour(self, request: web.Request, response: web.StreamResponse,
                    first: bytes = b"") -> web.StreamResponse:
        await response.prepare(request)
        try:
            if first:
                await response.write(first)
            for _ in range(POURED):
                await response.write(PIECE)
        except ConnectionError:
            self.outcomes.append("cut")
            return response
        self.outcomes.append("finished")
        return response

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        streamed = bool(body.get("stream"))
        mode = "normal" if body["messages"][0]["content"] == "normal" else self.mode
        if mode == "declared":  # Content-Length says 64 MiB
            declared = web.StreamResponse(headers={"Content-Length": str(len(PIECE) * POURED)})
            return await self._pour(request, declared)
        if mode == "chunked":  # no length: only counting tells
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            return await self._pour(request, response)
        if mode == "error":  # a 500 whose body does not stop
            response = web.StreamResponse(status=500)
            response.enable_chunked_encoding()
            return await self._pour(request, response, b'{"error": {"message": "')
        if mode in ("endless_event", "endless_event_later"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            first = event("a") if mode == "endless_event_later" else b""
            return await self._pour(request, response, first + b"data: ")
        if mode == "long_stream":  # many small events, together far over the bound
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for _ in range(3000):
                await response.write(event("word "))
            await response.write(b"data: [DONE]\n\n")
            return response
        if streamed:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for text in ("all ", "good"):
                await response.write(event(text))
            await response.write(b"data: [DONE]\n\n")
            return response
        return web.json_response(answer())

    async def models(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "models":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            return await self._pour(request, response, b'{"data": [{"id": "')
        return web.json_response({"object": "list", "data": [{"id": BACKEND_MODEL, "max_model_len": 4096}]})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "metrics":
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            response.enable_chunked_encoding()
            return await self._pour(request, response, b"# HELP ")
        return web.Response(text="vllm:num_requests_running 1\nvllm:num_requests_waiting 2\n")

    async def until_cut(self, count: int) -> None:
        """Until ``count`` oversized answers have ended (the upstream learns of our close at its
        next write); bounded: two seconds."""
        for _ in range(200):
            if len(self.outcomes) >= count:
                return
            await asyncio.sleep(0.01)


Served = tuple[Upstream, OpenAIHttpClient]


@pytest.fixture
async def upstream() -> AsyncIterator[Served]:
    server = Upstream()
    runner, base_url = await serve_upstream(
        post={"/v1/chat/completions": server.chat},
        get={"/v1/models": server.models, "/metrics": server.metrics})
    client = OpenAIHttpClient(NodeConfig(engine="openai", name=NODE, model=OUR_MODEL, base_url=base_url,
                                         served_model=BACKEND_MODEL, timeout_s=5,
                                         options={"max_answer_bytes": BOUND, "max_event_bytes": BOUND}))
    await client.start()
    try:
        yield server, client
    finally:
        await client.close()
        await runner.cleanup()


async def _served_normally(client: OpenAIHttpClient) -> None:
    """The node still serves, whole and streamed (on the same pool)."""
    whole = await client.chat(chat_request())
    assert whole.choices[0].message.content == "fine"
    texts = [c.choices[0].delta.content async for c in client.chat_stream(chat_request(stream=True))]
    assert texts == ["all ", "good"]


@pytest.mark.parametrize("mode", ["declared", "chunked", "error"])
async def test_a_whole_answer_over_the_bound_is_a_clear_error_and_the_node_serves_on(
        upstream: Served, mode: str) -> None:
    server, client = upstream
    server.mode = mode
    started = time.monotonic()
    normal = chat_request(messages=[{"role": "user", "content": "normal"}])
    with structlog.testing.capture_logs() as logs:  # a request beside it, on the same node, is served
        failed, beside = await asyncio.gather(client.chat(chat_request()), client.chat(normal),
                                              return_exceptions=True)
    assert not isinstance(beside, BaseException) and beside.choices[0].message.content == "fine"
    assert type(failed) is AnswerTooLargeBackendError and failed.http_status == 502 and not failed.retryable
    assert failed.message.startswith(
        f"Backend {NODE!r} sent an answer over 64 KiB (the node's max_answer_bytes)")
    assert time.monotonic() - started < 2
    await server.until_cut(1)
    assert server.outcomes == ["cut"]  # closed while the upstream was still writing
    assert [e for e in logs if e["event"] == "openai_backend_answer_too_large"] == [
        {"event": "openai_backend_answer_too_large", "log_level": "warning", "node": NODE,
         "what": "an answer", "bound": BOUND, "option": "max_answer_bytes"}]
    server.mode = "normal"
    await _served_normally(client)
    metrics = client.metrics()
    assert metrics.errors_total == 1 and metrics.in_flight == 0


async def test_memory_stays_bounded_while_an_answer_pours_in(upstream: Served) -> None:
    server, client = upstream
    server.mode = "chunked"
    tracemalloc.start()
    try:
        with pytest.raises(BackendError, match="max_answer_bytes"):
            await client.chat(chat_request())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the answer was 64 MiB; we held at most the bound and a read's worth


async def test_an_sse_event_that_never_ends_fails_the_stream(upstream: Served) -> None:
    server, client = upstream
    server.mode = "endless_event"  # before any chunk: the request fails (and may be retried)
    with pytest.raises(BackendError) as caught:
        async for _ in client.chat_stream(chat_request(stream=True)):
            pass
    assert type(caught.value) is AnswerTooLargeBackendError
    assert caught.value.message.startswith(
        f"Backend {NODE!r} sent an SSE event over 64 KiB (the node's max_event_bytes)")

    server.mode = "endless_event_later"  # after the first chunk: the stream is interrupted
    stream = client.chat_stream(chat_request(stream=True))
    first = await anext(stream)
    assert first.choices[0].delta.content == "a"
    with pytest.raises(StreamInterruptedError, match="max_event_bytes"):
        await anext(stream)
    await server.until_cut(2)
    assert server.outcomes == ["cut", "cut"]
    server.mode = "normal"
    await _served_normally(client)


async def test_an_sse_event_that_never_ends_fails_a_relay_into_a_sink(
        upstream: Served) -> None:
    """The server relays a stream's chunks from the read callback: the bound holds there too,
    and the failure reaches the generator instead of escaping into the event loop."""
    server, client = upstream
    server.mode = "endless_event_later"
    handed: list[RawChunk] = []

    class Sink:
        def send(self, chunk: RawChunk) -> None:
            handed.append(chunk)

        def flush(self) -> bool:
            return False

        def end(self) -> None:
            raise AssertionError("the stream never ended")

    stream = client.chat_stream(chat_request(stream=True))
    await anext(stream)
    with pytest.raises(StreamInterruptedError, match="max_event_bytes"):
        await stream.asend(Sink())  # type: ignore[attr-defined]
    assert handed == []
    await server.until_cut(1)
    assert server.outcomes == ["cut"]
    server.mode = "normal"
    await _served_normally(client)


async def test_a_long_stream_of_small_events_is_never_cut(upstream: Served) -> None:
    server, client = upstream
    server.mode = "long_stream"  # about 500 KiB of events: the bounds are per answer and per event
    chunks = [c async for c in client.chat_stream(chat_request(stream=True))]
    assert len(chunks) == 3000


async def test_models_and_metrics_answers_without_end_are_cut(upstream: Served) -> None:
    server, client = upstream
    server.mode = "models"
    started = time.monotonic()
    with pytest.raises(BackendError, match="sent a /models answer over 4 MiB"):
        await client.refresh_models()
    assert client.models()[0].is_ready is False
    server.mode = "metrics"
    assert await client.refresh_backend_metrics() is False
    assert time.monotonic() - started < 2
    await server.until_cut(2)
    assert server.outcomes == ["cut", "cut"]
    server.mode = "normal"
    await client.refresh_models()
    assert client.models()[0].is_ready is True
    assert await client.refresh_backend_metrics() is True and client.metrics().queued == 2
    await _served_normally(client)


@pytest.mark.parametrize("value", ["64MiB", 0, -5, 1.5, True, 1000])
def test_bounds_are_checked_when_the_node_is_built(value: object) -> None:
    for option in ("max_answer_bytes", "max_event_bytes"):
        config = NodeConfig(engine="openai", name=NODE, model=OUR_MODEL, base_url="http://127.0.0.1:9/v1",
                            options={option: value})
        with pytest.raises(InvalidRequestError, match=f"options.{option}"):
            OpenAIHttpClient(config)


async def test_the_api_client_gets_a_502_and_the_daemon_serves_on() -> None:
    """Through the HTTP API: the request answered without end is a 502 naming the node and the
    bound; another node's model, and the same node afterwards, are served."""
    hostile, healthy = Upstream(), Upstream()
    runners, nodes = [], []
    for name, model, server in ((NODE, OUR_MODEL, hostile), ("good", "other-model", healthy)):
        runner, base_url = await serve_upstream(post={"/v1/chat/completions": server.chat},
                                                get={"/v1/models": server.models})
        runners.append(runner)
        nodes.append(OpenAIHttpClient(NodeConfig(
            engine="openai", name=name, model=model, base_url=base_url, served_model=BACKEND_MODEL,
            timeout_s=5, options={"max_answer_bytes": BOUND})))
    balancer = Balancer(nodes, BalancerSettings.model_validate({"health": {"check_interval_s": 30}}))
    await balancer.start()
    try:
        async with TestClient(TestServer(create_app(balancer, ServerSettings()))) as http:
            hostile.mode = "chunked"
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            response = await http.post("/v1/chat/completions", json={"model": OUR_MODEL, **body})
            assert response.status == 502
            error = (await response.json())["error"]
            assert error["message"].startswith(
                f"Backend {NODE!r} sent an answer over 64 KiB (the node's max_answer_bytes)")
            response = await http.post("/v1/chat/completions", json={"model": "other-model", **body})
            assert response.status == 200
            hostile.mode = "normal"
            response = await http.post("/v1/chat/completions", json={"model": OUR_MODEL, **body})
            assert response.status == 200 and (await response.json())["model"] == OUR_MODEL
        assert hostile.outcomes and set(hostile.outcomes) == {"cut"}
    finally:
        await balancer.close()
        for runner in runners:
            await runner.cleanup()


BREAKER_KEY = "sk-review"


async def _sized_upstream(hits: list[str], name: str) -> tuple[asyncio.Server, str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, body = await read_request(reader)
                if not head.startswith(b"GET"):
                    hits.append(name)
                if head.startswith(b"GET"):
                    out = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
                else:
                    # The answer's size is the client's choice (n, max_tokens, logprobs): 'big' asks for much.
                    text = "x" * (20000 if b"big" in body else 5)
                    out = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": text}}],
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                "total_tokens": 2}}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
                             b"\r\n\r\n%b" % (len(out), out))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


async def test_answers_too_large_for_one_client_do_not_open_every_nodes_breaker() -> None:
    """How large an answer is can be the caller's choice (n, max_tokens, logprobs): one caller's
    oversized answers are their own 502s, not the nodes' failures. Not retried on another node
    (which would make it again), not counted against the node, and another caller is served."""
    servers, configs, hits = [], [], []
    for name in ("a", "b"):
        server, url = await _sized_upstream(hits, name)
        servers.append(server)
        configs.append(NodeConfig(name=name, engine="openai", model="ours", served_model="m", base_url=url,
                                  options={"max_answer_bytes": 16384}))
    balancer = Balancer([create_client(c) for c in configs], node_configs={c.node_name: c for c in configs})
    await balancer.start()
    api = await start_server(balancer, ServerSettings(host="127.0.0.1", port=0, api_keys=[BREAKER_KEY],
                                                      shutdown_timeout_s=1.0))
    url = f"http://127.0.0.1:{api.port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {BREAKER_KEY}"}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(5):  # one client's oversized asks
                async with session.post(url, headers=headers, json={
                        "model": "ours", "messages": [{"role": "user", "content": "big"}]}) as response:
                    assert response.status == 502
            async with session.post(url, headers=headers, json={
                    "model": "ours", "messages": [{"role": "user", "content": "hi"}]}) as response:
                status = response.status
        assert status == 200, f"another client's ordinary request got {status}"
        assert len(hits) == 6  # each oversized answer made once, never again on the other node
        assert {n.name: n.breaker.state for n in balancer.nodes()} == {"a": "closed", "b": "closed"}
    finally:
        await api.close()
        await balancer.close()
        for server in servers:
            server.close()
