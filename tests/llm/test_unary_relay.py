"""The non-streamed answer of an ``openai`` node relayed as the upstream's bytes (``RELAY_RAW``,
set by the HTTP server): what must still hold when the answer is not re-encoded."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from blueprint.errors import BackendError
from blueprint.llm.config import NodeConfig
from blueprint.llm.engines.openai_http import OpenAIHttpClient
from blueprint.llm.raw import RELAY_RAW, RawChunk
from blueprint.llm.types import ChatCompletionRequest, parse_request
from tests.loopback import serve_upstream

BACKEND_MODEL = "org/backend-model"
OUR_MODEL = "our-model"


def _request() -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, {
        "model": OUR_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


@pytest.fixture
async def answering() -> AsyncIterator[Callable[[bytes], Awaitable[OpenAIHttpClient]]]:
    """A client of a loopback server that answers every chat request 200 with the given body."""
    runners: list[web.AppRunner] = []
    clients: list[OpenAIHttpClient] = []

    async def start(body: bytes) -> OpenAIHttpClient:
        async def handler(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=body, content_type="application/json")

        runner, base_url = await serve_upstream(post={"/v1/chat/completions": handler})
        runners.append(runner)
        client = OpenAIHttpClient(NodeConfig(engine="openai", model=OUR_MODEL, served_model=BACKEND_MODEL,
                                             base_url=base_url))
        await client.start()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()
    for runner in runners:
        await runner.cleanup()


async def _relayed(client: OpenAIHttpClient) -> Any:
    """``client.chat`` as the HTTP server calls it: in a context where RELAY_RAW is set."""
    context = contextvars.copy_context()
    context.run(RELAY_RAW.set, True)
    return await asyncio.create_task(client.chat(_request()), context=context)


@pytest.mark.parametrize("body", [
    b'{"id":"x","object":"chat.completion","model":"org/backend-model","choices":[{"index":0,',  # cut
    b'{"id":"x","model":"org/backend-model","choices":"not a list"}',
    b'["choices"]',
    b'{"id":"x","model":"org/backend-model","choices":[],"usage":{"prompt_tokens":"many"}}',
])
async def test_a_malformed_answer_is_a_backend_error_never_relayed(
        body: bytes, answering: Callable[[bytes], Awaitable[OpenAIHttpClient]]) -> None:
    """Relaying bytes must not relay garbage: a client would get a 200 it cannot parse (and the
    node would look healthy). The answer is a 502-class BackendError, as when it was parsed."""
    client = await answering(body)
    with pytest.raises(BackendError, match="malformed"):
        await _relayed(client)
    assert client.metrics().errors_total == 1 and client.metrics().in_flight == 0


async def test_a_well_formed_answer_is_relayed_with_usage_read(
        answering: Callable[[bytes], Awaitable[OpenAIHttpClient]]) -> None:
    body = (b'{"id":"x","object":"chat.completion","created":1,"model":"org/backend-model",'
            b'"choices":[{"index":0,"message":{"role":"assistant","content":"hey"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7},"kv_transfer_params":null}')
    client = await answering(body)
    relayed = await _relayed(client)
    assert isinstance(relayed, RawChunk)
    assert relayed.payload == body.replace(b'"model":"org/backend-model"', b'"model":"our-model"')
    usage = relayed.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 2)
    assert client.metrics().completion_tokens_total == 2
