"""The real ``openai`` package (sync and async, streamed and not) against the API, backed by the
tiny transformers model."""

from __future__ import annotations

import openai
import pytest

from tests.server.conftest import API_KEY, TINY, LiveServer


def _sync(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30)


def _async(server: LiveServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30)


def test_sync_chat_completion(tiny_server: LiveServer) -> None:
    with _sync(tiny_server) as client:
        result = client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": "Hello"}], max_tokens=5, temperature=0)
    assert result.object == "chat.completion"
    assert result.model == TINY
    assert result.choices[0].message.role == "assistant"
    assert isinstance(result.choices[0].message.content, str)
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.usage is not None and 0 < result.usage.completion_tokens <= 5
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_sync_chat_stream_matches_usage(tiny_server: LiveServer) -> None:
    with _sync(tiny_server) as client:
        stream = client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": "Hello"}], max_tokens=6, temperature=0,
            stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
    assert chunks, "no chunk streamed"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")


async def test_async_completion_streamed_and_not(tiny_server: LiveServer) -> None:
    async with _async(tiny_server) as client:
        whole = await client.completions.create(model=TINY, prompt="The operator", max_tokens=4,
                                                temperature=0)
        stream = await client.completions.create(model=TINY, prompt="The operator", max_tokens=4,
                                                 temperature=0, stream=True)
        pieces = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert whole.object == "text_completion"
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    # Greedy decoding: the streamed pieces make up the non-streamed answer.
    assert "".join(pieces) == whole.choices[0].text


async def test_async_chat_stream_without_usage_request(tiny_server: LiveServer) -> None:
    async with _async(tiny_server) as client:
        stream = await client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True)
        chunks = [chunk async for chunk in stream]
    # Usage was not asked for: no chunk carries it and none has empty choices.
    assert chunks and all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_embeddings(tiny_server: LiveServer) -> None:
    with _sync(tiny_server) as client:
        result = client.embeddings.create(model=TINY, input=["hello world", "bonjour"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) > 0 and all(isinstance(x, float) for x in result.data[0].embedding)
    assert result.usage.prompt_tokens > 0


def test_models_list_is_openai_and_openrouter_shaped(tiny_server: LiveServer) -> None:
    with _sync(tiny_server) as client:
        models = list(client.models.list())
    assert [m.id for m in models] == [TINY]
    extra = models[0].model_dump()
    for field in ("schema_version", "name", "created", "input_modalities", "output_modalities"):
        assert field in extra, field
    text_in = extra["input_modalities"][0]
    assert text_in["type"] == "text" and text_in["supported_inputs"]["max_context_length"]["value"] > 0


def test_unknown_model_is_openai_not_found(tiny_server: LiveServer) -> None:
    with _sync(tiny_server) as client, pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_bad_key_is_openai_authentication_error(tiny_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="wrong", max_retries=0)
    with client, pytest.raises(openai.AuthenticationError):
        client.models.list()
