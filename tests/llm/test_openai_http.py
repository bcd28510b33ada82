"""The OpenAI-compatible HTTP engine against real HTTP servers on loopback ports: the emulated
backend (healthy, failing, hanging, dying mid-stream) and a tiny aiohttp app that sends error
events inside a stream."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from blueprint.errors import (
    BackendError,
    BackendTimeoutError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    StreamInterruptedError,
)
from blueprint.llm.config import NodeConfig
from blueprint.llm.engines.openai_http import OpenAIHttpClient, map_http_error, parse_prometheus
from blueprint.llm.types import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_request,
)
from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions
from tests.loopback import serve_upstream

BACKEND_MODEL = "org/backend-model"
OUR_MODEL = "our-model"

ClientFactory = Callable[..., Awaitable[OpenAIHttpClient]]


def chat_request(text: str = "Tell me about chains", **extra: Any) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, {
        "model": OUR_MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 12, **extra,
    })


@pytest.fixture
async def backend() -> AsyncIterator[EmulatedBackend]:
    eb = EmulatedBackend(EmulatedOptions(model=BACKEND_MODEL, max_model_len=3000,
                                         prefill_s_per_token=0.0, decode_s_per_token=0.001))
    await eb.start()
    try:
        yield eb
    finally:
        await eb.stop()


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    clients: list[OpenAIHttpClient] = []

    async def factory(base_url: str, **fields: Any) -> OpenAIHttpClient:
        fields.setdefault("served_model", BACKEND_MODEL)
        config = NodeConfig(engine="openai", model=OUR_MODEL, base_url=base_url, **fields)
        client = OpenAIHttpClient(config)
        clients.append(client)
        await client.start()
        return client

    yield factory
    for client in clients:
        await client.close()


async def test_chat_maps_model_both_ways_and_counts_usage(backend: EmulatedBackend,
                                                         make_client: ClientFactory) -> None:
    client = await make_client(backend.base_url)
    answer = await client.chat(chat_request())
    assert answer.model == OUR_MODEL
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 12
    assert answer.usage.prompt_tokens > 0
    metrics = client.metrics()
    assert metrics.requests_total == 1 and metrics.in_flight == 0 and metrics.errors_total == 0
    assert metrics.completion_tokens_total == 12


async def test_chat_stream_relays_chunks_that_add_up_to_the_whole_answer(
        backend: EmulatedBackend, make_client: ClientFactory) -> None:
    client = await make_client(backend.base_url)
    whole = await client.chat(chat_request(seed=7))
    chunks = [c async for c in client.chat_stream(
        chat_request(seed=7, stream=True, stream_options={"include_usage": True}))]
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 5
    assert all(c.model == OUR_MODEL for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


async def test_stream_without_include_usage_hides_usage_but_still_counts_tokens(
        backend: EmulatedBackend, make_client: ClientFactory) -> None:
    client = await make_client(backend.base_url)
    chunks = [c async for c in client.chat_stream(chat_request(stream=True))]
    assert all(c.usage is None for c in chunks)
    metrics = client.metrics()
    assert metrics.completion_tokens_total == 12
    assert metrics.ttft_s is not None and metrics.ttft_s > 0


async def test_text_completion_whole_and_streamed(backend: EmulatedBackend,
                                                  make_client: ClientFactory) -> None:
    client = await make_client(backend.base_url)
    request = parse_request(CompletionRequest, {"model": OUR_MODEL, "prompt": "Once upon a time",
                                                "max_tokens": 8})
    whole = await client.complete(request)
    assert whole.model == OUR_MODEL and whole.usage is not None and whole.usage.completion_tokens == 8
    chunks = [c async for c in client.complete_stream(request.model_copy(update={"stream": True}))]
    assert len([c for c in chunks if c.choices and c.choices[0].text]) == 8
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text


async def test_stop_sequence_and_output_cap_reach_the_backend(backend: EmulatedBackend,
                                                              make_client: ClientFactory) -> None:
    client = await make_client(backend.base_url, max_output_tokens=5)
    capped = await client.chat(chat_request())  # asks 12, the node allows 5
    assert capped.usage is not None and capped.usage.completion_tokens == 5
    words = capped.choices[0].message.content or ""
    stop_word = words.split()[2]
    stopped = await client.chat(chat_request(stop=[" " + stop_word]))
    assert stopped.choices[0].finish_reason == "stop"
    assert stop_word not in (stopped.choices[0].message.content or "").split()


async def test_embeddings(backend: EmulatedBackend, make_client: ClientFactory) -> None:
    client = await make_client(backend.base_url, options={"embeddings": True})
    result = await client.embed(EmbeddingRequest(model=OUR_MODEL, input=["a b c", "d e"]))
    assert result.model == OUR_MODEL
    assert [e.index for e in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 32 and result.data[0].embedding != result.data[1].embedding
    plain = await make_client(backend.base_url)
    with pytest.raises(InvalidRequestError):
        await plain.embed(EmbeddingRequest(model=OUR_MODEL, input="x"))


async def test_models_read_context_length_and_config_merges(backend: EmulatedBackend,
                                                            make_client: ClientFactory) -> None:
    client = await make_client(backend.base_url, quantization="bf16", display_name="Our Model",
                               pricing={"prompt": "0.000001", "completion": "0.000002"})
    info = client.models()[0]
    assert info.id == OUR_MODEL and info.context_length == 3000 and info.is_ready is True
    assert info.quantization == "bf16" and info.name == "Our Model"
    assert info.pricing.completion == "0.000002"
    override = await make_client(backend.base_url, context_length=1024)
    assert override.models()[0].context_length == 1024
    assert await client.health_check() is True


async def test_backend_metrics_are_read_into_node_metrics(make_client: ClientFactory) -> None:
    options = EmulatedOptions(model=BACKEND_MODEL, decode_s_per_token=0.02, max_num_seqs=1)
    async with EmulatedBackend(options) as eb:
        client = await make_client(eb.base_url)
        assert await client.refresh_backend_metrics() is True
        assert client.metrics().queued == 0

        async def drain() -> None:
            async for _ in client.chat_stream(chat_request(stream=True, max_tokens=10)):
                pass

        tasks = [asyncio.create_task(drain()) for _ in range(3)]
        for _ in range(100):  # until one runs and two wait (bounded: about 1 s)
            await asyncio.sleep(0.01)
            if eb.stats.running == 1 and eb.stats.waiting == 2:
                break
        assert await client.refresh_backend_metrics() is True
        metrics = client.metrics()
        assert metrics.queued == 2
        assert metrics.in_flight == 3  # ours (3) beats the backend's running count (1)
        assert metrics.kv_cache_usage is not None and 0 < metrics.kv_cache_usage < 1
        await asyncio.gather(*tasks)


def test_prometheus_parsing_accepts_old_names_and_several_engines() -> None:
    text = (
        "# HELP vllm:num_requests_running x\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 3.0\n'
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.25\n'
        "vllm:num_requests_waiting 4\n"
        'other_metric{a="b"} 9\n'
    )
    found = parse_prometheus(text, {"vllm:num_requests_running", "vllm:num_requests_waiting",
                                    "vllm:gpu_cache_usage_perc"})
    assert found == {"vllm:num_requests_running": [2.0, 3.0], "vllm:num_requests_waiting": [4.0],
                     "vllm:gpu_cache_usage_perc": [0.25]}


@pytest.mark.parametrize(("status", "error_type"), [
    (500, BackendError), (503, BackendError), (429, OverloadedError), (400, InvalidRequestError),
])
async def test_backend_error_statuses_map_to_our_errors(status: int, error_type: type[Exception],
                                                        make_client: ClientFactory) -> None:
    options = EmulatedOptions(model=BACKEND_MODEL, fail_rate=1.0, fail_status=status, retry_after_s=7)
    async with EmulatedBackend(options) as eb:
        client = await make_client(eb.base_url)
        with pytest.raises(error_type) as caught:
            await client.chat(chat_request())
        assert type(caught.value) is error_type
        if status == 429:
            assert caught.value.retry_after == 7.0  # type: ignore[attr-defined]
        with pytest.raises(error_type):  # streams map the same way before the first chunk
            async for _ in client.chat_stream(chat_request(stream=True)):
                pass
        assert client.metrics().errors_total == 2 and client.metrics().in_flight == 0
        eb.options.fail_rate = 0.0  # the node keeps serving once the backend recovers
        assert (await client.chat(chat_request())).choices


async def test_unknown_model_and_context_overflow(backend: EmulatedBackend,
                                                  make_client: ClientFactory) -> None:
    wrong = await make_client(backend.base_url, served_model="no/such-model")
    assert wrong.models()[0].is_ready is False
    with pytest.raises(ModelNotFoundError) as caught:
        await wrong.chat(chat_request())
    assert caught.value.model == OUR_MODEL
    client = await make_client(backend.base_url)
    with pytest.raises(ModelNotFoundError):  # not ours: refused without a round trip
        await client.chat(chat_request().model_copy(update={"model": "other"}))
    with pytest.raises(ContextLengthExceededError):
        await client.chat(chat_request("word " * 3000))


async def test_hanging_backend_times_out_within_the_bound(make_client: ClientFactory) -> None:
    async with EmulatedBackend(EmulatedOptions(model=BACKEND_MODEL, hang=True)) as eb:
        client = await make_client(eb.base_url, timeout_s=0.5,
                                   options={"first_chunk_timeout_s": 0.4, "health_timeout_s": 0.3})
        began = time.perf_counter()
        with pytest.raises(BackendTimeoutError):
            await client.chat(chat_request())
        assert time.perf_counter() - began < 1.5
        began = time.perf_counter()
        with pytest.raises(BackendTimeoutError):
            async for _ in client.chat_stream(chat_request(stream=True)):
                pass
        assert time.perf_counter() - began < 1.5
        assert await client.health_check() is False
        assert client.metrics().in_flight == 0


async def test_stream_cut_midway_raises_stream_interrupted(make_client: ClientFactory) -> None:
    async with EmulatedBackend(EmulatedOptions(model=BACKEND_MODEL, die_after_chunks=3)) as eb:
        client = await make_client(eb.base_url)
        received = []
        with pytest.raises(StreamInterruptedError):
            async for chunk in client.chat_stream(chat_request(stream=True)):
                received.append(chunk)
        assert len(received) >= 3  # the role chunk and three tokens came through first
        with pytest.raises(BackendError) as caught:  # not streamed: a plain, retryable failure
            await client.chat(chat_request())
        assert caught.value.retryable


async def test_unreachable_backend_is_not_ready_and_fails_cleanly(make_client: ClientFactory) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = await make_client(f"http://127.0.0.1:{port}/v1")
    assert client.models()[0].is_ready is False
    assert await client.refresh_backend_metrics() is False
    with pytest.raises(BackendError):
        await client.chat(chat_request())


async def test_connections_are_reused_across_sequential_requests(backend: EmulatedBackend,
                                                                 make_client: ClientFactory) -> None:
    client = await make_client(backend.base_url)
    backend.reset()
    for i in range(10):
        await client.chat(chat_request(f"question {i}"))
    for i in range(10):
        async for _ in client.chat_stream(chat_request(f"streamed {i}", stream=True)):
            pass
    assert backend.stats.requests == 20
    assert backend.connections_seen == 1


def _sse(*events: str) -> bytes:
    return b"".join(f"data: {e}\n\n".encode() for e in events)


async def _scripted_server(body: bytes) -> tuple[web.AppRunner, str]:
    """A server that answers every chat request with the given SSE body."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        return response

    return await _chat_server(handler)


async def _chat_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> tuple[web.AppRunner, str]:
    """A loopback server whose ``/v1/chat/completions`` is ``handler``: its runner and base URL."""
    return await serve_upstream(post={"/v1/chat/completions": handler})


CHUNK = json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": BACKEND_MODEL,
                    "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]})


@pytest.mark.parametrize(("body", "error_type", "chunks_before"), [
    # an error event before any chunk keeps its meaning (vLLM puts the HTTP status in "code")
    (_sse('{"error":{"message":"bad temperature","type":"BadRequestError","code":400}}'),
     InvalidRequestError, 0),
    (_sse('{"object":"error","message":"engine dead","code":500}'), BackendError, 0),
    # after the first chunk any failure interrupts the stream
    (_sse(CHUNK, '{"error":{"message":"engine dead","code":500}}'), StreamInterruptedError, 1),
    (_sse(CHUNK, "not json"), StreamInterruptedError, 1),
    (_sse(CHUNK), StreamInterruptedError, 1),  # the body ended without [DONE]
])
async def test_error_events_inside_a_stream(body: bytes, error_type: type[Exception], chunks_before: int,
                                            make_client: ClientFactory) -> None:
    runner, base_url = await _scripted_server(b": comment\n\n" + body)
    try:
        client = await make_client(base_url)
        received = []
        with pytest.raises(error_type) as caught:
            async for chunk in client.chat_stream(chat_request(stream=True)):
                received.append(chunk)
        assert type(caught.value) is error_type
        assert len(received) == chunks_before
    finally:
        await runner.cleanup()


async def test_sse_split_at_odd_places_and_crlf_lines(make_client: ClientFactory) -> None:
    body = _sse(CHUNK, CHUNK).replace(b"\n", b"\r\n") + b"data: [DONE]\r\n\r\n"

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(0, len(body), 7):  # split inside lines and inside "data:"
            await response.write(body[i:i + 7])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    runner, base_url = await _chat_server(handler)
    try:
        client = await make_client(base_url)
        chunks = [c async for c in client.chat_stream(chat_request(stream=True))]
        assert [c.choices[0].delta.content for c in chunks] == ["hi", "hi"]
    finally:
        await runner.cleanup()


def test_error_mapping_table() -> None:
    assert isinstance(map_http_error(413, b"{}", None, "m"), ContextLengthExceededError)
    assert isinstance(map_http_error(
        400, b'{"error":{"message":"This model\'s maximum context length is 10 tokens"}}', None, "m"),
        ContextLengthExceededError)
    assert isinstance(map_http_error(404, b'{"message":"The model `x` does not exist."}', None, "m"),
                      ModelNotFoundError)
    assert type(map_http_error(404, b"Not Found", None, "m")) is BackendError
    assert isinstance(map_http_error(504, b"", None, "m"), BackendTimeoutError)
    overloaded = map_http_error(429, b"slow down", "3", "m")
    assert isinstance(overloaded, OverloadedError) and overloaded.retry_after == 3.0


def test_missing_base_url_is_a_configuration_error() -> None:
    with pytest.raises(InvalidRequestError, match="base_url"):
        OpenAIHttpClient(NodeConfig(engine="openai", model="m"))


async def test_consumer_leaving_early_frees_both_sides(make_client: ClientFactory) -> None:
    options = EmulatedOptions(model=BACKEND_MODEL, decode_s_per_token=0.01)
    async with EmulatedBackend(options) as eb:
        client = await make_client(eb.base_url)
        stream = client.chat_stream(chat_request(stream=True, max_tokens=50))
        received = [await anext(stream) for _ in range(3)]
        await stream.aclose()  # e.g. the HTTP client of our API hung up
        assert len(received) == 3
        metrics = client.metrics()
        assert metrics.in_flight == 0 and metrics.errors_total == 0
        for _ in range(100):  # the backend notices the closed connection and stops decoding
            if eb.stats.running == 0:
                break
            await asyncio.sleep(0.01)
        assert eb.stats.running == 0 and eb.stats.generation_tokens == 0
        assert (await client.chat(chat_request())).choices  # and the node keeps serving


async def test_refresh_models_picks_up_backend_changes(backend: EmulatedBackend,
                                                       make_client: ClientFactory) -> None:
    client = await make_client(backend.base_url)
    assert client.models()[0].context_length == 3000
    backend.options.max_model_len = 4096
    await client.refresh_models()
    assert client.models()[0].context_length == 4096


async def test_a_relayed_answer_is_the_backends_bytes_with_our_model_name(backend: EmulatedBackend,
                                                                         make_client: ClientFactory) -> None:
    """The HTTP server sets RELAY_RAW for its requests: the answer is relayed, not re-encoded;
    other callers (job handlers) still get a pydantic answer."""
    from blueprint.llm.raw import RELAY_RAW, RawChunk
    from blueprint.llm.types import ChatCompletion

    client = await make_client(backend.base_url)
    plain = await client.chat(chat_request())
    assert isinstance(plain, ChatCompletion) and plain.model == OUR_MODEL
    RELAY_RAW.set(True)
    relayed = await client.chat(chat_request())
    assert isinstance(relayed, RawChunk)
    assert b'"model":"our-model"' in relayed.payload and BACKEND_MODEL.encode() not in relayed.payload
    assert relayed.usage is not None and relayed.usage.completion_tokens == 12
    assert relayed.choices[0].message.content == plain.choices[0].message.content
    assert client.metrics().completion_tokens_total == 24


def test_sse_reader_cuts_events_across_reads_and_line_endings() -> None:
    from blueprint.llm.engines.openai_http import _SseReader

    reader = _SseReader()
    assert reader.feed(b"data: a\n\n: keep-alive\n\ndata: b\ndata: c\n\nda") == [b"a", b"b\nc"]
    assert reader.feed(b"ta: d\r") == []  # half of a CRLF held back
    assert reader.feed(b"\n\r\ndata: e\r\n\r\n") == [b"d", b"e"]
    assert reader.feed(b"data: [DONE]") == [] and reader.flush() == [b"[DONE]"]


def test_sse_reader_reads_the_same_events_however_the_bytes_are_cut() -> None:
    """Every way of cutting a stream into reads (line ends LF, CRLF or CR, multi-line data,
    comments, a blank line split across two reads, a CRLF split in two) gives the events that
    reading it whole gives; a long event trickled in small reads is kept whole."""
    import random

    from blueprint.llm.engines.openai_http import _SseReader

    long = b"x" * 5000
    for newline in (b"\n", b"\r\n", b"\r"):
        stream = newline.join([b"data: a", b"", b": keep-alive", b"", b"data: b", b"data: c", b"",
                               b"event: x", b"data: " + long, b"", b"data: [DONE]", b"", b""])
        whole = _SseReader()
        expected = whole.feed(stream) + whole.flush()
        assert expected == [b"a", b"b\nc", long, b"[DONE]"]
        rng = random.Random(len(newline))
        for _ in range(200):
            reader, got, at = _SseReader(), [], 0
            while at < len(stream):
                step = rng.choice((1, 1, 2, 3, 7, 64, 1500))
                got += reader.feed(stream[at:at + step])
                at += step
            assert got + reader.flush() == expected, newline


def test_sse_reader_bounds_an_event_trickled_in_small_reads() -> None:
    from blueprint.bounded import AnswerTooLargeError
    from blueprint.llm.engines.openai_http import _SseReader

    reader = _SseReader(max_event=64 * 1024)
    assert reader.feed(b"data: a\n\ndata: ") == [b"a"]
    with pytest.raises(AnswerTooLargeError):
        for _ in range(1000):
            reader.feed(b"y" * 1460)
