"""Conformance of tool calls and structured outputs, through the real API server and the real
``openai`` client, on the tiny random-weight model: every call's arguments and every JSON answer
must validate with ``jsonschema``, 100%, streamed and not.

A random model is the hardest case for validity (it never "wants" to close a string), so these
figures are a property of the grammar machinery, not of a model's skill."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import jsonschema
import openai
import pytest

from blueprint.llm.config import NodeConfig
from tests.devices import TEST_DEVICE
from tests.server.conformance_schemas import FUNCTIONS, RESPONSE_FORMATS
from tests.server.conftest import API_KEY, TINY, LiveServer, settings

#: Enough room for the tightest bounds of every schema here (the engine fits its bounds to it).
MAX_TOKENS = 320
MESSAGES = [{"role": "user", "content": "Call the tool, please."}]
TOOLS = [{"type": "function", "function": {"name": name, "description": f"The {name} tool.",
                                           "parameters": schema}}
         for name, schema in FUNCTIONS.items()]


def _offered(index: int) -> list[dict[str, Any]]:
    """Tool ``index`` and the next one (two definitions keep the prompt small)."""
    return [TOOLS[index], TOOLS[(index + 1) % len(TOOLS)]]


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The tiny model with a 2048-token context (its tokenizer spends many tokens on tool
    definitions), behind the API, batching 4 requests."""
    from blueprint.testing import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny-2k"), max_position_embeddings=2048)
    config = NodeConfig(name="tiny-node", engine="transformers", model=TINY, path=str(path),
                        device=TEST_DEVICE, dtype="float32", max_batch_size=4,
                        options={"torch_threads": 1})  # spinning threads crawl on a busy CPU
    live = LiveServer(lambda _: [config], settings()).start()
    try:
        yield live
    finally:
        live.stop()


def _validate(instance: Any, schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(instance)


async def _bounded(jobs: list[Callable[[], Awaitable[None]]], concurrency: int = 4) -> None:
    """Run the jobs a few at a time (the node batches them), failing on the first error."""
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


def _client(server: LiveServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_suite_is_big_enough() -> None:
    assert len(FUNCTIONS) >= 20 and len(RESPONSE_FORMATS) >= 20


async def test_named_tool_calls_validate_unstreamed(tiny_server: LiveServer) -> None:
    async with _client(tiny_server) as client:
        async def call(name: str, seed: int) -> None:
            result = await client.chat.completions.create(
                model=TINY, messages=MESSAGES, tools=_offered(seed), max_tokens=MAX_TOKENS, seed=seed,
                tool_choice={"type": "function", "function": {"name": name}})
            choice = result.choices[0]
            assert choice.finish_reason == "tool_calls", (name, choice)
            calls = choice.message.tool_calls or []
            assert len(calls) == 1 and calls[0].function.name == name
            _validate(json.loads(calls[0].function.arguments), FUNCTIONS[name])

        await _bounded([lambda n=name, s=i: call(n, s) for i, name in enumerate(FUNCTIONS)])


async def test_required_tool_calls_validate_streamed(tiny_server: LiveServer) -> None:
    """``required`` over two tools at a time, streamed: the deltas reassemble into calls (one or
    more, parallel calls allowed) whose arguments validate."""
    async with _client(tiny_server) as client:
        async def call(tools: list[dict[str, Any]], seed: int) -> None:
            stream = await client.chat.completions.create(
                model=TINY, messages=MESSAGES, tools=tools, tool_choice="required", stream=True,
                max_tokens=MAX_TOKENS, seed=seed)
            names: dict[int, str] = {}
            arguments: dict[int, str] = {}
            finish = None
            async for chunk in stream:
                for choice in chunk.choices:
                    for delta in choice.delta.tool_calls or []:
                        if delta.id is not None:
                            assert delta.function is not None and delta.function.name
                            names[delta.index] = delta.function.name
                        if delta.function is not None and delta.function.arguments:
                            arguments[delta.index] = arguments.get(delta.index, "") + delta.function.arguments
                    finish = choice.finish_reason or finish
            assert finish == "tool_calls" and names, (tools[0]["function"]["name"], finish)
            for index, name in names.items():
                _validate(json.loads(arguments[index]), FUNCTIONS[name])

        await _bounded([lambda s=i: call(_offered(s), s) for i in range(len(TOOLS))])


@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_formats_validate(tiny_server: LiveServer, stream: bool) -> None:
    async with _client(tiny_server) as client:
        async def answer(name: str, schema: dict[str, Any], seed: int) -> None:
            fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                          "strict": seed % 2 == 0}}
            if stream:
                chunks = await client.chat.completions.create(
                    model=TINY, messages=MESSAGES, response_format=fmt, max_tokens=MAX_TOKENS, seed=seed,
                    stream=True)
                text, finish = "", None
                async for chunk in chunks:
                    for choice in chunk.choices:
                        text += choice.delta.content or ""
                        finish = choice.finish_reason or finish
            else:
                result = await client.chat.completions.create(
                    model=TINY, messages=MESSAGES, response_format=fmt, max_tokens=MAX_TOKENS, seed=seed)
                text, finish = result.choices[0].message.content or "", result.choices[0].finish_reason
            assert finish == "stop", (name, finish, text)
            _validate(json.loads(text), schema)

        await _bounded([lambda n=name, s=schema, i=i: answer(n, s, i)
                        for i, (name, schema) in enumerate(RESPONSE_FORMATS.items())])


async def test_json_object_is_always_an_object(tiny_server: LiveServer) -> None:
    async with _client(tiny_server) as client:
        async def answer(seed: int) -> None:
            result = await client.chat.completions.create(
                model=TINY, messages=[{"role": "user", "content": "Reply in JSON."}], max_tokens=64,
                response_format={"type": "json_object"}, seed=seed, temperature=1.5)
            assert result.choices[0].finish_reason == "stop"
            assert isinstance(json.loads(result.choices[0].message.content or ""), dict)

        await _bounded([lambda s=seed: answer(s) for seed in range(8)])
