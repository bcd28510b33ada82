"""RawChunk: an upstream chunk relayed as bytes, read only where a field is needed."""

from __future__ import annotations

from blueprint.llm.raw import RawChunk
from blueprint.llm.types import ChatCompletionChunk

TOKEN = (b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
         b'"delta":{"content":" hi"},"logprobs":null,"finish_reason":null}],"usage":null}')
USAGE = (b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
         b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}')


def test_a_token_chunk_has_choices_and_no_usage_without_being_parsed() -> None:
    chunk = RawChunk(TOKEN, ChatCompletionChunk)
    assert chunk.usage is None and chunk.has_choices
    assert chunk._parsed is None  # nothing parsed for the hot-path fields
    assert chunk.choices[0].delta.content == " hi"  # other fields: parsed once, on demand
    assert chunk.payload is TOKEN


def test_the_usage_chunk_is_read_from_its_bytes() -> None:
    chunk = RawChunk(USAGE, ChatCompletionChunk)
    assert not chunk.has_choices
    assert chunk.usage is not None and (chunk.usage.prompt_tokens, chunk.usage.completion_tokens) == (3, 2)
