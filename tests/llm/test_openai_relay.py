"""The ``openai`` engine relaying a stream into a :class:`~blueprint.llm.raw.ChunkSink` (what the
HTTP server does for every stream after its first chunk): each chunk is handed over from the
upstream's read callback (no task runs it), in order and exactly once, the consumer's congestion
hands the rest back to the generator, and failures and silences still end the stream with the
engine's errors. Against the emulated backend on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from blueprint.errors import StreamInterruptedError
from blueprint.llm.config import NodeConfig
from blueprint.llm.engines.openai_http import OpenAIHttpClient
from blueprint.llm.raw import RawChunk
from blueprint.llm.types import ChatCompletionRequest, parse_request
from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions
from tests.loopback import serve_upstream

MODEL = "relay-model"


class Sink:
    """Records what it is handed, and from which task (None: a read callback): the chunks, how
    many each flush passed on, and the end."""

    def __init__(self, congested_after: int | None = None) -> None:
        self.texts: list[str] = []
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.flushes: list[int] = []  # chunks passed on by each flush
        self.ends: list[asyncio.Task[Any] | None] = []
        self.congested_after = congested_after
        self._taken = 0

    def send(self, chunk: RawChunk) -> None:
        assert not self.ends, "a chunk after the end"
        self.tasks.append(asyncio.current_task())
        data = json.loads(chunk.payload)
        assert data["model"] == MODEL  # our model name, swapped in the bytes
        self.texts.append("".join(choice["delta"].get("content") or "" for choice in data["choices"]))
        self._taken += 1

    def flush(self) -> bool:
        self.flushes.append(self._taken)
        self._taken = 0
        return self.congested_after is not None and len(self.tasks) >= self.congested_after

    def end(self) -> None:
        self.ends.append(asyncio.current_task())


def request(tokens: int) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, {
        "model": MODEL, "messages": [{"role": "user", "content": "relay this"}], "max_tokens": tokens,
        "stream": True, "stream_options": {"include_usage": True}})


async def client_for(backend: EmulatedBackend, **options: Any) -> OpenAIHttpClient:
    client = OpenAIHttpClient(NodeConfig(engine="openai", model=MODEL, base_url=backend.base_url,
                                         options=options))
    await client.start()
    return client


@pytest.fixture
async def backend() -> AsyncIterator[EmulatedBackend]:
    async with EmulatedBackend(EmulatedOptions(model=MODEL, prefill_s_per_token=0.0,
                                               decode_s_per_token=0.002, batch_penalty=0.0)) as eb:
        yield eb


def text_of(chunk: Any) -> str:
    return "".join(choice.delta.content or "" for choice in chunk.choices)


async def test_relayed_chunks_come_from_the_read_callback_in_order(backend: EmulatedBackend) -> None:
    client = await client_for(backend)
    try:
        plain = [text_of(c) async for c in client.chat_stream(request(20))]
        stream = client.chat_stream(request(20))
        first = await anext(stream)
        sink = Sink()
        with pytest.raises(StopAsyncIteration):
            await stream.asend(sink)  # type: ignore[attr-defined]
        assert [text_of(first), *sink.texts] == plain  # the same text, each piece once, in order
        assert len(sink.tasks) >= 15 and set(sink.tasks) == {None}  # no task ran any of them
        assert sink.ends == [None]  # the end too, once, from the read callback
        assert sum(sink.flushes) + sink._taken == len(sink.texts)
        metrics = client.metrics()
        assert metrics.in_flight == 0 and metrics.errors_total == 0
        assert metrics.completion_tokens_total == 40  # usage counted for both streams
    finally:
        await client.close()


async def test_a_congested_consumer_gets_the_rest_one_by_one(backend: EmulatedBackend) -> None:
    client = await client_for(backend)
    try:
        plain = [text_of(c) async for c in client.chat_stream(request(20))]
        stream = client.chat_stream(request(20))
        texts = [text_of(await anext(stream))]
        sink = Sink(congested_after=3)
        yielded = await stream.asend(sink)  # type: ignore[attr-defined]  # relays 3+, then yields
        assert len(sink.tasks) >= 3 and sum(sink.flushes) == len(sink.tasks)
        assert len(sink.tasks) - sink.flushes[-1] < 3  # it stopped at the flush that saw congestion
        assert not sink.ends
        texts += [*sink.texts, text_of(yielded)]
        texts += [text_of(c) async for c in stream]
        assert texts == plain
    finally:
        await client.close()


async def test_an_upstream_dying_while_relayed_ends_the_stream_with_its_error() -> None:
    async with EmulatedBackend(EmulatedOptions(model=MODEL, prefill_s_per_token=0.0,
                                               decode_s_per_token=0.002, die_after_chunks=6)) as eb:
        client = await client_for(eb)
        try:
            stream = client.chat_stream(request(50))
            await anext(stream)
            sink = Sink()
            with pytest.raises(StreamInterruptedError):
                await stream.asend(sink)  # type: ignore[attr-defined]
            assert sink.texts
            assert client.metrics().errors_total == 1 and client.metrics().in_flight == 0
        finally:
            await client.close()


async def test_a_silence_while_relayed_is_bounded_by_the_read_timeout() -> None:
    async with EmulatedBackend(EmulatedOptions(model=MODEL, prefill_s_per_token=0.0,
                                               decode_s_per_token=0.002, stall_after_chunks=4)) as eb:
        client = await client_for(eb, read_timeout_s=0.3)
        try:
            stream = client.chat_stream(request(50))
            await anext(stream)
            sink = Sink()
            started = asyncio.get_running_loop().time()
            with pytest.raises(StreamInterruptedError):
                await asyncio.wait_for(stream.asend(sink), 5)  # type: ignore[attr-defined]
            assert 0.25 <= asyncio.get_running_loop().time() - started < 3.0
            assert client.metrics().in_flight == 0
        finally:
            await client.close()


async def test_a_consumer_that_stops_listening_frees_the_connection(backend: EmulatedBackend) -> None:
    client = await client_for(backend)
    try:
        stream = client.chat_stream(request(500))  # a second of tokens
        await anext(stream)
        relay = asyncio.ensure_future(stream.asend(Sink()))  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        relay.cancel()
        with pytest.raises(asyncio.CancelledError):
            await relay
        await stream.aclose()  # type: ignore[attr-defined]
        metrics = client.metrics()
        assert metrics.in_flight == 0 and metrics.errors_total == 0  # not the backend's fault
        for _ in range(100):
            if backend.stats.running == 0:
                break
            await asyncio.sleep(0.02)
        assert backend.stats.running == 0  # the upstream saw the connection go
    finally:
        await client.close()


async def test_what_one_read_brings_is_handed_over_together_with_the_end() -> None:
    """An upstream that writes its whole answer at once: every chunk after the first, and the
    end, reach the sink in one go (one write to the client), with no flush between them (here
    from the relay's start, in the consumer's task: they were all read with the first)."""
    events = [{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
               "choices": [{"index": 0, "delta": {"content": t}}]} for t in "abcdef"]
    wire = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"

    async def chat(http_request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(http_request)
        await response.write(wire)
        return response

    runner, base_url = await serve_upstream(post={"/v1/chat/completions": chat})
    client = OpenAIHttpClient(NodeConfig(engine="openai", model=MODEL, base_url=base_url))
    await client.start()
    try:
        stream = client.chat_stream(request(6))
        assert text_of(await anext(stream)) == "a"
        sink = Sink()
        with pytest.raises(StopAsyncIteration):
            await stream.asend(sink)  # type: ignore[attr-defined]
        assert sink.texts == list("bcdef") and sink.flushes == [] and len(sink.ends) == 1
    finally:
        await client.close()
        await runner.cleanup()
