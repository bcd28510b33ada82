"""Timeouts bound waits, not streams (issue 14): the ``openai`` engine's ``timeout_s`` and the
server's ``request_timeout_s`` bound the wait for the first token and each silence between chunks,
never the length of a stream that keeps producing.

Time is scaled 1:200 so the test takes seconds: a 12-minute stream with a chunk every 3 s is 240
chunks 15 ms apart (3.6 s), the engine's 2-minute ``timeout_s`` is 0.6 s and the server's
10-minute ``request_timeout_s`` is 3 s, both shorter than the whole stream. The real ``openai``
client reads it through the real server; the backend is the emulated one on loopback."""

from __future__ import annotations

import time
from collections.abc import Callable

import openai
import pytest

from blueprint.testing.emulated_backend import EmulatedOptions
from tests.server.conftest import API_KEY, LiveServer

SCALE = 1 / 200
CHUNKS = 240  # 12 minutes at one chunk every 3 s
GAP_S = 3.0 * SCALE
ENGINE_TIMEOUT_S = 120.0 * SCALE
SERVER_TIMEOUT_S = 600.0 * SCALE
MSG = [{"role": "user", "content": "a long answer please"}]


def _server(emulated_server: Callable[..., LiveServer], **backend: object) -> LiveServer:
    options = EmulatedOptions(model="emu", prefill_s_per_token=0.0, decode_s_per_token=GAP_S,
                              batch_penalty=0.0, max_model_len=100_000, **backend)  # type: ignore[arg-type]
    return emulated_server(options, node_overrides={"timeout_s": ENGINE_TIMEOUT_S},
                           request_timeout_s=SERVER_TIMEOUT_S, first_token_timeout_s=ENGINE_TIMEOUT_S)


def test_a_twelve_minute_stream_that_keeps_producing_is_not_cut(
        emulated_server: Callable[..., LiveServer]) -> None:
    live = _server(emulated_server)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    began = time.perf_counter()
    stream = client.chat.completions.create(model="emu", messages=MSG, max_tokens=CHUNKS, stream=True)  # type: ignore[arg-type]
    pieces, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    took = time.perf_counter() - began
    assert len(pieces) == CHUNKS and finish == "length"
    assert took > SERVER_TIMEOUT_S > ENGINE_TIMEOUT_S  # longer than every bound, and not cut


def test_a_stream_that_goes_silent_is_cut_after_timeout_s(emulated_server: Callable[..., LiveServer]) -> None:
    live = _server(emulated_server, stall_after_chunks=5)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    began = time.perf_counter()
    pieces = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model="emu", messages=MSG, max_tokens=CHUNKS,  # type: ignore[arg-type]
                                                    stream=True):
            pieces.extend(c.delta.content for c in chunk.choices if c.delta.content)
    took = time.perf_counter() - began
    assert len(pieces) == 5  # what came before the silence was delivered
    assert "mid-stream" in str(caught.value) or "failed" in str(caught.value)
    assert ENGINE_TIMEOUT_S <= took < ENGINE_TIMEOUT_S + 2.0
