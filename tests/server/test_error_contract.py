"""The error contract OpenRouter's uptime counts on: 429 and 503 carry ``Retry-After``; a
client's mistake is a 4xx, never a 5xx; a failure after the first streamed token is an SSE error
event, logged and counted as a mid-stream failure."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import openai

from blueprint.testing.emulated_backend import EmulatedOptions
from tests.server.conftest import API_KEY, TINY, LiveServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "emu", "messages": [{"role": "user", "content": "x"}]}


def test_429_and_503_carry_retry_after(emulated_server: Callable[..., LiveServer]) -> None:
    busy = emulated_server(EmulatedOptions(model="emu", fail_rate=1.0, fail_status=429, retry_after_s=3,
                                           trivial=True), node_overrides={"max_queue": 0},
                          admin_keys=[API_KEY])
    with httpx.Client(base_url=busy.url, headers=AUTH, timeout=10) as client:
        overloaded = client.post("/v1/chat/completions", json=CHAT)
        assert overloaded.status_code == 429 and int(overloaded.headers["Retry-After"]) >= 1
        assert client.post("/admin/nodes/emu-node/drain").status_code == 200
        unavailable = client.post("/v1/chat/completions", json=CHAT)
        assert unavailable.status_code == 503 and int(unavailable.headers["Retry-After"]) >= 1
        streamed = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert streamed.status_code == 503 and int(streamed.headers["Retry-After"]) >= 1
        not_ready = client.get("/ready")
        assert not_ready.status_code == 503 and int(not_ready.headers["Retry-After"]) >= 1


BAD_REQUESTS = [
    {"model": TINY, "messages": []},
    {"model": TINY, "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
    {"model": TINY, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function",
     "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}},
    {"model": TINY, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function",
     "function": {"name": "bad name!"}}]},
    {"model": TINY, "messages": [{"role": "user", "content": "x"}],
     "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "nope"}}},
    {"model": TINY, "messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}},
    {"model": TINY, "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}},
    {"model": TINY, "messages": [{"role": "tool", "content": "x"}]},
    {"model": TINY, "messages": [{"role": "user", "content": "x"}], "reasoning": {"effort": "extreme"}},
]


def test_client_mistakes_are_4xx_never_5xx(tiny_server: LiveServer) -> None:
    """Streamed too. A refusal the engine makes after work that can outlast the server's header
    grace (a schema compiled in a worker thread, on a loaded machine) may come as the stream's
    only event after 200 headers: then it must be that same client error, never a server one."""
    with httpx.Client(base_url=tiny_server.url, headers=AUTH, timeout=120) as client:
        for body in BAD_REQUESTS:
            for stream in (False, True):
                response = client.post("/v1/chat/completions", json={**body, "stream": stream})
                assert "Traceback" not in response.text
                if stream and response.status_code == 200:
                    events = [line for line in response.text.splitlines() if line.startswith("data: {")]
                    assert len(events) == 1, response.text
                    assert json.loads(events[0][6:])["error"]["type"] == "invalid_request_error"
                    continue
                assert 400 <= response.status_code < 500, (body, response.status_code, response.text)


def test_mid_stream_failure_is_an_sse_error_logged_and_counted(
        emulated_server: Callable[..., LiveServer]) -> None:
    live = emulated_server(EmulatedOptions(model="emu", die_after_chunks=2, default_max_tokens=20))
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0, timeout=10)
    pieces: list[str] = []
    error: Exception | None = None
    with client:
        try:
            for chunk in client.chat.completions.create(model="emu", messages=CHAT["messages"],
                                                        stream=True, max_tokens=20):
                pieces.extend(c.delta.content or "" for c in chunk.choices)
        except openai.APIError as exc:
            error = exc
    assert pieces and error is not None  # tokens arrived, then the SSE error event
    metrics = httpx.get(live.url + "/metrics").text
    failures = [line for line in metrics.splitlines()
                if line.startswith("blueprint_http_stream_failures_total{") and 'stage="mid_stream"' in line]
    assert failures and float(failures[0].rsplit(" ", 1)[1]) == 1.0
