"""The SSE writer alone (``blueprint.server.sse.stream_sse``) over a stream the test controls,
served by a real aiohttp server on loopback and read by a real client: each chunk reaches the
client before the next one exists (no buffering, no bunching), the whole stream runs in the
request's own task (no task hop per stream or per chunk), and the error contract around the
header grace (a refusal at once keeps its status, a later one is an SSE event)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from blueprint.errors import BlueprintError, OverloadedError, StreamInterruptedError
from blueprint.llm.raw import RawChunk
from blueprint.llm.types import ChatCompletionChunk
from blueprint.server.metrics import ServerMetrics
from blueprint.server.responses import error_response
from blueprint.server.settings import ServerSettings
from blueprint.server.sse import StreamOutcome, stream_sse

Stream = Callable[[], AsyncIterator[Any]]


def chunk(text: str, usage: str = "") -> RawChunk:
    payload = ('{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
               + ('[]' if usage else f'[{{"index":0,"delta":{{"content":"{text}"}}}}]') + usage + "}")
    return RawChunk(payload.encode(), ChatCompletionChunk)


class Served:
    """An aiohttp server whose one route streams what ``make_stream`` yields."""

    def __init__(self, make_stream: Stream, **settings: Any) -> None:
        self.make_stream = make_stream
        self.settings = ServerSettings(**{"stream_keepalive_s": 0.02, "stream_header_grace_s": 0.005,
                                          **settings})
        self.metrics = ServerMetrics()
        self.outcomes: list[StreamOutcome] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        outcome = StreamOutcome()
        self.outcomes.append(outcome)
        try:
            return await stream_sse(request, self.make_stream(), settings=self.settings,
                                    metrics=self.metrics, route="chat_completions", model="m",
                                    include_usage=False, started=time.perf_counter(), outcome=outcome)
        except BlueprintError as exc:
            outcome.status = exc.http_status
            return error_response(exc)

    async def __aenter__(self) -> Served:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def read_events(response: aiohttp.ClientResponse,
                      on_event: Callable[[bytes], Awaitable[None]] | None = None) -> list[bytes]:
    events = []
    async for line in response.content:
        line = line.rstrip(b"\r\n")
        if line:
            events.append(line)
            if on_event is not None:
                await on_event(line)
    return events


async def test_each_chunk_reaches_the_client_before_the_next_is_made() -> None:
    """The stream makes chunk i+1 only after the client has read chunk i: a writer that held a
    chunk back (buffered, or waited to bunch it with the next) would hang here."""
    seen: list[asyncio.Event] = [asyncio.Event() for _ in range(30)]

    open_while_streaming: list[str] = []

    async def stream() -> AsyncIterator[RawChunk]:
        for i in range(30):
            yield chunk(f"t{i}")
            await asyncio.wait_for(seen[i].wait(), 5)
            if i == 0:
                open_while_streaming.append(served.metrics.render().decode())

    async def on_event(line: bytes) -> None:
        if line.startswith(b"data: {"):
            text = json.loads(line[6:])["choices"][0]["delta"]["content"]
            seen[int(text[1:])].set()

    async with Served(stream) as served, aiohttp.ClientSession() as session, \
            session.post(served.url, json={}) as response:
        assert response.status == 200
        events = await asyncio.wait_for(read_events(response, on_event), 20)
    assert len(events) == 31 and events[-1] == b"data: [DONE]"
    assert served.outcomes[0].status == 200
    assert "blueprint_http_streams_open 1.0" in open_while_streaming[0]
    assert "blueprint_http_waiting_first_token 0.0" in open_while_streaming[0]
    assert served.metrics.streams_now == 0


async def test_the_whole_stream_runs_in_the_request_task() -> None:
    """No task hop per stream or per chunk: the first chunk is awaited by the handler itself,
    like every later one (a helper task for the first one cost a task and two loop turns)."""
    producers: list[asyncio.Task[Any] | None] = []

    async def stream() -> AsyncIterator[RawChunk]:
        for i in range(5):
            producers.append(asyncio.current_task())
            yield chunk(f"t{i}")

    async with Served(stream) as served, aiohttp.ClientSession() as session, \
            session.post(served.url, json={}) as response:
        events = await read_events(response)
    assert events[-1] == b"data: [DONE]" and len(events) == 6
    assert len(producers) == 5 and len(set(producers)) == 1


async def test_a_refusal_within_the_grace_keeps_its_status() -> None:
    async def stream() -> AsyncIterator[RawChunk]:
        raise OverloadedError("full")
        yield chunk("never")  # pragma: no cover

    async with Served(stream) as served, aiohttp.ClientSession() as session, \
            session.post(served.url, json={}) as response:
        assert response.status == 429
        assert (await response.json())["error"]["type"] == "rate_limit_error"
    assert served.metrics.streams_now == 0
    assert served.metrics.waiting_first_token_now == 0
    scraped = served.metrics.render().decode()  # the integers are what the gauges report
    assert "blueprint_http_streams_open 0.0" in scraped
    assert "blueprint_http_waiting_first_token 0.0" in scraped


async def test_a_failure_after_the_grace_is_an_sse_event_after_keep_alives() -> None:
    async def stream() -> AsyncIterator[RawChunk]:
        await asyncio.sleep(0.1)  # the grace (5 ms) ran out: the headers went out
        raise OverloadedError("full")
        yield chunk("never")  # pragma: no cover

    async with Served(stream) as served, aiohttp.ClientSession() as session, \
            session.post(served.url, json={}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        events = await read_events(response)
    assert events[0] == b": keep-alive"
    assert json.loads(events[-1][6:])["error"]["type"] == "rate_limit_error"
    failures = served.metrics.stream_failures.labels("chat_completions", "m", "before_first_token",
                                                     OverloadedError.code)
    assert failures._value.get() == 1
    assert served.outcomes[0].status == 429
    assert served.metrics.streams_now == 0


async def test_no_first_token_in_time_ends_the_stream_and_closes_it() -> None:
    closed = asyncio.Event()

    async def stream() -> AsyncIterator[RawChunk]:
        try:
            await asyncio.sleep(30)
            yield chunk("never")
        finally:
            closed.set()

    async with Served(stream, first_token_timeout_s=0.15) as served, aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.post(served.url, json={}) as response:
            events = await read_events(response)
        assert time.perf_counter() - started < 2.0
    assert events[0] == b": keep-alive"
    assert json.loads(events[-1][6:])["error"]["code"] == "first_token_timeout"
    assert closed.is_set()
    assert served.outcomes[0].status == 504


async def test_a_failure_mid_stream_is_an_sse_event() -> None:
    async def stream() -> AsyncIterator[RawChunk]:
        yield chunk("a")
        raise StreamInterruptedError("the node died")

    async with Served(stream) as served, aiohttp.ClientSession() as session, \
            session.post(served.url, json={}) as response:
        assert response.status == 200
        events = await read_events(response)
    assert events[0].startswith(b'data: {"id"')
    assert json.loads(events[-1][6:])["error"]["code"] == "stream_interrupted"
    failures = served.metrics.stream_failures.labels("chat_completions", "m", "mid_stream",
                                                     "stream_interrupted")
    assert failures._value.get() == 1


async def test_usage_the_client_did_not_ask_for_is_counted_not_sent() -> None:
    async def stream() -> AsyncIterator[RawChunk]:
        yield chunk("a")
        yield chunk("", usage=',"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}')

    async with Served(stream) as served, aiohttp.ClientSession() as session, \
            session.post(served.url, json={}) as response:
        events = await read_events(response)
    assert [e for e in events if b"usage" in e] == []
    assert len(events) == 2 and events[-1] == b"data: [DONE]"
    scraped = served.metrics.render().decode()
    assert 'blueprint_http_tokens_total{kind="completion",model="m"} 1.0' in scraped
    assert 'blueprint_http_tokens_total{kind="prompt",model="m"} 3.0' in scraped


async def test_a_client_that_hangs_up_cancels_the_stream() -> None:
    closed = asyncio.Event()

    async def stream() -> AsyncIterator[RawChunk]:
        try:
            for i in range(1000):
                yield chunk(f"t{i}")
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    async with Served(stream) as served:
        async with aiohttp.ClientSession() as session, session.post(served.url, json={}) as response:
            await response.content.readline()
        await asyncio.wait_for(closed.wait(), 5)
        for _ in range(100):
            if served.metrics.streams_now == 0:
                break
            await asyncio.sleep(0.01)
        assert served.metrics.streams_now == 0
        assert served.outcomes[0].status == 499
