"""Logprobs through the HTTP API with the real ``openai`` client: the tiny transformers model
behind our server, and the same server behind a second one through an ``openai`` engine node
(which must pass the fields through both ways)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from blueprint.llm.config import NodeConfig
from tests.server.conftest import API_KEY, TINY, LiveServer, settings

MESSAGES: list[Any] = [{"role": "user", "content": "Bonjour, 世界 🙂"}]


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def proxy_server(tiny_server: LiveServer) -> Iterator[LiveServer]:
    """Our API over an ``openai`` engine node whose backend is ``tiny_server``."""
    config = NodeConfig(name="proxy-node", engine="openai", model=TINY, base_url=tiny_server.url + "/v1",
                        api_key=API_KEY, options={"logprobs": True})
    live = LiveServer(lambda _: [config], settings()).start()
    try:
        yield live
    finally:
        live.stop()


def _chat_logprobs(server: LiveServer, *, stream: bool) -> tuple[list[Any], str, int]:
    """(per-token logprobs, text, completion tokens) of one greedy chat."""
    with _client(server) as client:
        if not stream:
            result = client.chat.completions.create(model=TINY, messages=MESSAGES, max_tokens=8,
                                                    temperature=0, logprobs=True, top_logprobs=4)
            choice = result.choices[0]
            assert choice.logprobs is not None and choice.logprobs.content is not None
            assert result.usage is not None
            return choice.logprobs.content, choice.message.content or "", result.usage.completion_tokens
        chunks = list(client.chat.completions.create(
            model=TINY, messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=4,
            stream=True, stream_options={"include_usage": True}))
    entries = [e for c in chunks for ch in c.choices if ch.logprobs and ch.logprobs.content
               for e in ch.logprobs.content]
    text = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
    usage = chunks[-1].usage
    assert usage is not None
    return entries, text, usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_over_http(tiny_server: LiveServer, stream: bool) -> None:
    entries, _, completion_tokens = _chat_logprobs(tiny_server, stream=stream)
    assert len(entries) == completion_tokens > 0
    for entry in entries:
        assert entry.logprob <= 0.0 and isinstance(entry.bytes, list)
        values = [alt.logprob for alt in entry.top_logprobs]
        assert len(values) == 4 and values == sorted(values, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the sampled token leads


def test_chat_stream_and_whole_agree_over_http(tiny_server: LiveServer) -> None:
    whole, whole_text, _ = _chat_logprobs(tiny_server, stream=False)
    streamed, streamed_text, _ = _chat_logprobs(tiny_server, stream=True)
    assert streamed_text == whole_text
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in whole]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole], abs=1e-5)


def test_completion_logprobs_over_http(tiny_server: LiveServer) -> None:
    with _client(tiny_server) as client:
        whole = client.completions.create(model=TINY, prompt="The operator", max_tokens=6,
                                          temperature=0, logprobs=2)
        chunks = list(client.completions.create(model=TINY, prompt="The operator", max_tokens=6,
                                                temperature=0, logprobs=2, stream=True))
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs and logprobs.top_logprobs
    assert whole.usage is not None and len(logprobs.tokens) == whole.usage.completion_tokens
    assert all(v <= 0.0 for v in logprobs.token_logprobs)
    assert all(t in top and len(top) <= 3 for t, top in zip(logprobs.tokens, logprobs.top_logprobs,
                                                            strict=True))
    streamed = [t for c in chunks for ch in c.choices if ch.logprobs for t in ch.logprobs.tokens or []]
    offsets = [o for c in chunks for ch in c.choices if ch.logprobs for o in ch.logprobs.text_offset or []]
    assert streamed == logprobs.tokens and offsets == logprobs.text_offset


def test_top_logprobs_without_logprobs_is_a_400(tiny_server: LiveServer) -> None:
    with _client(tiny_server) as client, pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=TINY, messages=MESSAGES, max_tokens=2, top_logprobs=3)


@pytest.mark.parametrize("stream", [False, True])
def test_an_openai_engine_node_passes_logprobs_through(tiny_server: LiveServer, proxy_server: LiveServer,
                                                       stream: bool) -> None:
    direct, direct_text, _ = _chat_logprobs(tiny_server, stream=stream)
    proxied, proxied_text, _ = _chat_logprobs(proxy_server, stream=stream)
    assert proxied_text == direct_text
    assert [(e.token, e.bytes, [a.token for a in e.top_logprobs]) for e in proxied] == \
        [(e.token, e.bytes, [a.token for a in e.top_logprobs]) for e in direct]
    assert [e.logprob for e in proxied] == pytest.approx([e.logprob for e in direct], abs=1e-5)
