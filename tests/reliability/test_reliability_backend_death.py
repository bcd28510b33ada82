"""Backend death: two OpenAI-compatible nodes (emulated vLLM servers in subprocesses) behind the
balancer and the API server; one is killed -9 in the middle of a burst and in the middle of
streams, then restarted on the same port.

What must hold: requests that had sent nothing to the client move to the other node and succeed;
streams already started end with an SSE error event (never a silent truncation, never a fake
``[DONE]``); the dead node's breaker opens and traffic shifts; once back it is used again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from reliability_support import API_KEY, MODEL, BackendProcess, ThreadServer, openai_node

from blueprint.balancer import BalancerSettings, BreakerState
from blueprint.balancer.settings import HealthSettings, RetrySettings

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: 20 ms a token: a 60-token stream lasts over a second, long enough to be cut.
BACKEND_ARGS = ("--decode-s-per-token", "0.02", "--prefill-s-per-token", "0")
FAST_HEALTH = BalancerSettings(
    strategy="round_robin",
    health=HealthSettings(check_interval_s=0.3, check_timeout_s=1.0, failure_threshold=2,
                          open_base_s=0.5, open_max_s=1.0, jitter=0.0),
    retry=RetrySettings(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05),
)


def _chat(content: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": content}]}


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=AUTH) as reply:
        return reply.status, await reply.json(content_type=None)


async def _stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                  started: asyncio.Event | None = None) -> dict[str, Any]:
    """Read one SSE stream to its end: the chunks' text, whether [DONE] came, the error event."""
    out: dict[str, Any] = {"text": "", "done": False, "error": None, "chunks": 0}
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=AUTH) as reply:
        out["status"] = reply.status
        if reply.status != 200:
            out["error"] = (await reply.json(content_type=None))["error"]
            return out
        async for raw in reply.content:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            if payload == "[DONE]":
                out["done"] = True
                continue
            event = json.loads(payload)
            if "error" in event:
                out["error"] = event["error"]
                continue
            out["chunks"] += 1
            for choice in event.get("choices", []):
                out["text"] += choice.get("delta", {}).get("content") or ""
            if started is not None and out["chunks"] >= 3:
                started.set()
    return out


def _node(live: ThreadServer, name: str) -> Any:
    assert live.balancer is not None
    return live.balancer.node(name)


async def _wait_for(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


def _pair(backend_process: Callable[..., BackendProcess], thread_server: Callable[..., ThreadServer]
          ) -> tuple[BackendProcess, BackendProcess, ThreadServer]:
    a, b = backend_process(*BACKEND_ARGS), backend_process(*BACKEND_ARGS)
    live = thread_server([openai_node("node-a", a.base_url), openai_node("node-b", b.base_url)],
                         balancer=FAST_HEALTH)
    return a, b, live


async def test_kill_mid_burst_moves_requests_and_comes_back(backend_process: Any, thread_server: Any) -> None:
    a, _b, live = _pair(backend_process, thread_server)
    node_a, node_b = _node(live, "node-a"), _node(live, "node-b")
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        burst = [asyncio.create_task(_post(session, live.url, _chat(f"burst {i}", 30))) for i in range(24)]
        await _wait_for(lambda: node_a.in_flight >= 2, 5, "requests running on node-a")
        a.kill()
        results = await asyncio.gather(*burst)
        statuses = [status for status, _ in results]
        assert statuses == [200] * len(burst), [body for status, body in results if status != 200]
        assert all(body["usage"]["completion_tokens"] == 30 for _, body in results)
        assert node_a.retries_total + node_b.retries_total >= 1  # some were moved, not lucky

        # the dead node is cooled down (open, or half-open probing), and traffic shifts to node-b
        await _wait_for(lambda: node_a.breaker.state is not BreakerState.CLOSED, 5, "node-a breaker opens")
        before_a, before_b = node_a.requests_total, node_b.requests_total
        after = await asyncio.gather(*(_post(session, live.url, _chat(f"after {i}", 2)) for i in range(10)))
        assert [status for status, _ in after] == [200] * 10
        assert node_b.requests_total - before_b >= 9
        assert node_a.requests_total - before_a <= 1  # at most one half-open probe

        # back on the same port: the health check closes the breaker and node-a serves again
        a.start()
        await _wait_for(lambda: node_a.breaker.state is BreakerState.CLOSED, 10, "node-a breaker closes")
        before_a = node_a.requests_total
        again = await asyncio.gather(*(_post(session, live.url, _chat(f"again {i}", 2)) for i in range(10)))
        assert [status for status, _ in again] == [200] * 10
        assert node_a.requests_total - before_a >= 3, "the recovered node is not used again"


async def test_kill_mid_stream_ends_streams_with_an_error_event(backend_process: Any,
                                                                 thread_server: Any) -> None:
    a, _b, live = _pair(backend_process, thread_server)
    node_a = _node(live, "node-a")
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = [asyncio.Event() for _ in range(6)]
        streams = [asyncio.create_task(_stream(session, live.url, _chat(f"stream {i}", 80, stream=True), ev))
                   for i, ev in enumerate(started)]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in started)), 10)
        assert node_a.in_flight >= 1
        a.kill()
        outcomes = await asyncio.wait_for(asyncio.gather(*streams), 20)
        # streams started on node-a were streaming when it died (none of them can be moved)
        cut = [o for o in outcomes if not o["done"]]
        whole = [o for o in outcomes if o["done"]]
        assert cut, "no stream was on the killed node"
        assert whole, "no stream was on the surviving node"
        for o in cut:  # never a silent truncation: an OpenAI-style error event ends it
            assert o["error"] is not None and o["error"]["code"] == "stream_interrupted", o
            assert o["chunks"] >= 3
        for o in whole:
            assert o["error"] is None and o["chunks"] >= 80  # the whole answer, then [DONE]
        # and new streams go to the live node and complete
        more = await asyncio.gather(*(_stream(session, live.url, _chat(f"later {i}", 5, stream=True))
                                      for i in range(4)))
        assert all(o["done"] and o["error"] is None for o in more), more

