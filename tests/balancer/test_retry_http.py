"""Retries over real HTTP: emulated OpenAI-compatible backends on loopback, reached through the
openai engine, one of them failing (500), hanging, or dying mid-stream."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from balancer_fakes import chat_request

from blueprint.balancer import Balancer, BalancerSettings
from blueprint.errors import StreamInterruptedError
from blueprint.llm.config import NodeConfig
from blueprint.llm.engines.openai_http import OpenAIHttpClient
from blueprint.llm.types import StreamOptions
from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions

FAST = {"prefill_s_per_token": 0.0, "decode_s_per_token": 0.0005, "model": "m"}


Cluster = tuple[Balancer, list[EmulatedBackend]]


@contextlib.asynccontextmanager
async def cluster(bad: dict[str, object], *, timeout_s: float = 30.0,
                  settings: dict[str, object] | None = None) -> AsyncIterator[Cluster]:
    backends = [EmulatedBackend(EmulatedOptions(**{**FAST, **bad})), EmulatedBackend(EmulatedOptions(**FAST))]
    for backend in backends:
        await backend.start()
    configs = [
        NodeConfig(name=f"n{i}", engine="openai", model="m", base_url=b.base_url, timeout_s=timeout_s,
                   options={"first_chunk_timeout_s": timeout_s})
        for i, b in enumerate(backends)
    ]
    base = {"strategy": "round_robin", "seed": 1,
            "retry": {"backoff_base_s": 0.01, "backoff_max_s": 0.02},
            "health": {"check_interval_s": 30}}
    balancer = Balancer([OpenAIHttpClient(c) for c in configs], BalancerSettings.model_validate(
        {**base, **(settings or {})}), node_configs={c.node_name: c for c in configs})
    await balancer.start()
    try:
        yield balancer, backends
    finally:
        await balancer.close()
        for backend in backends:
            await backend.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_retry_after_500_lands_on_second_node(stream: bool) -> None:
    async with cluster({"fail_rate": 1.0, "fail_status": 500}) as (balancer, backends):
        for _ in range(4):
            request = chat_request(max_tokens=4)
            if stream:
                chunks = [c async for c in balancer.chat_stream(request)]
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                text = (await balancer.chat(request)).choices[0].message.content
            assert text
        assert backends[0].stats.failures_injected >= 1
        assert backends[1].stats.requests == 4
        assert balancer.node("n0").errors_total >= 1


@pytest.mark.parametrize("stream", [False, True])
async def test_retry_when_first_node_hangs(stream: bool) -> None:
    # The engine's own timeouts bound the hung attempt (0.5 s), then the request moves on.
    async with cluster({"hang": True}, timeout_s=0.5) as (balancer, backends):
        started = time.perf_counter()
        request = chat_request(max_tokens=4)
        if stream:
            chunks = [c async for c in balancer.chat_stream(request)]
            assert any(c.choices and c.choices[0].delta.content for c in chunks)
        else:
            assert (await balancer.chat(request)).choices[0].message.content
        # round robin sends the first request to n0 (hung), the retry to n1
        assert backends[1].stats.requests == 1
        assert time.perf_counter() - started < 5


async def test_balancer_first_token_timeout_bounds_a_hung_stream() -> None:
    settings = {"retry": {"first_token_timeout_s": 0.3, "backoff_base_s": 0.0}}
    async with cluster({"hang": True}, settings=settings) as (balancer, backends):
        started = time.perf_counter()
        chunks = [c async for c in balancer.chat_stream(chat_request(max_tokens=3))]
        assert chunks and backends[1].stats.requests == 1
        assert time.perf_counter() - started < 3


async def test_death_mid_stream_is_reported_not_retried() -> None:
    async with cluster({"die_after_chunks": 2}) as (balancer, backends):
        request = chat_request(max_tokens=20, stream=True,
                               stream_options=StreamOptions(include_usage=True))
        received = []
        with pytest.raises(StreamInterruptedError):
            async for chunk in balancer.chat_stream(request):
                received.append(chunk)
        assert received  # the chunks before the failure were delivered
        assert backends[1].stats.requests == 0  # never retried after the first chunk
