"""The ``openai`` engine passes tools, tool choice, response formats and reasoning requests to
its backend as they came, returns the backend's tool calls, reasoning and usage details, and
declares only the features its configuration says the backend has."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from blueprint.llm.config import NodeConfig
from blueprint.llm.engines.openai_http import OpenAIHttpClient
from blueprint.llm.types import ChatCompletionRequest
from blueprint.server.provider_document import supported_parameters
from tests.loopback import serve_upstream

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ARGS = '{"city":"Oslo"}'
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}


@pytest.fixture
async def backend() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14,
                 "prompt_tokens_details": {"cached_tokens": 4},
                 "completion_tokens_details": {"reasoning_tokens": 2}}
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            chunks = [{"delta": {"role": "assistant", "reasoning": "hm"}},
                      {"delta": {"tool_calls": [{"index": 0, **CALL, "function": {"name": "get_weather",
                                                                                  "arguments": ""}}]}},
                      {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Oslo"}'}}]},
                       "finish_reason": "tool_calls"}]
            for i, choice in enumerate(chunks):
                data = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [{"index": 0, **choice}]}
                if i == len(chunks) - 1:
                    data["usage"] = usage
                await response.write(f"data: {json.dumps(data)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            return response
        return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                  "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                                      "role": "assistant", "content": None, "reasoning": "hm",
                                      "tool_calls": [CALL]}}], "usage": usage})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    runner, base_url = await serve_upstream(post={"/v1/chat/completions": chat}, get={"/v1/models": models})
    try:
        yield base_url, seen
    finally:
        await runner.cleanup()


async def test_tools_and_formats_pass_through_both_ways(backend: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = backend
    client = OpenAIHttpClient(NodeConfig(engine="openai", model="ours", served_model="m", base_url=url,
                                         options={"tools": True, "structured_outputs": True,
                                                  "json_mode": True, "reasoning": True}))
    await client.start()
    try:
        fields = {"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False,
                  "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                      "type": "object"}, "strict": True}}, "reasoning": {"effort": "low"}}
        request = ChatCompletionRequest.model_validate(
            {"model": "ours", "messages": [{"role": "user", "content": "hi"}], **fields})
        answer = await client.chat(request)
        sent = seen[-1]
        for key, value in fields.items():
            assert sent[key] == value, key
        message = answer.choices[0].message
        assert answer.choices[0].finish_reason == "tool_calls" and message.reasoning == "hm"
        assert message.tool_calls is not None and message.tool_calls[0].function.arguments == ARGS
        assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
        assert answer.usage.prompt_tokens_details.cached_tokens == 4
        streamed = [c async for c in client.chat_stream(request.model_copy(update={"stream": True}))]
        deltas = [d for c in streamed for ch in c.choices for d in (ch.delta.tool_calls or [])]
        assert deltas[0]["id"] == "call_1" and deltas[1]["function"]["arguments"] == '{"city":"Oslo"}'
        assert streamed[0].choices[0].delta.reasoning == "hm"
        caps = client.capabilities()
        assert caps.tools and caps.structured_outputs and caps.reasoning
        params = supported_parameters(client.models()[0])
        assert {"tools", "tool_choice", "structured_outputs", "reasoning"} <= set(params)
    finally:
        await client.close()


def test_undeclared_features_are_not_declared() -> None:
    client = OpenAIHttpClient(NodeConfig(engine="openai", model="ours", base_url="http://127.0.0.1:9/v1"))
    params = supported_parameters(client.models()[0])
    assert not {"tools", "tool_choice", "response_format", "structured_outputs", "reasoning"} & set(params)
