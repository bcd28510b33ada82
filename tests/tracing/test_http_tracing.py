"""One trace per HTTP request: the server span, admission and routing, the GenAI client span of
the engine call with its first-chunk span, and the response encoding; the request id comes from
``x-request-id`` (or is generated) and is returned and recorded. With tracing off the app has no
tracing layer and a span costs next to nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.trace import SpanKind

from blueprint import tracing
from blueprint.balancer import Balancer
from blueprint.llm.config import NodeConfig
from blueprint.llm.registry import create_client
from blueprint.server import ServerSettings, create_app
from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions
from tests.tracing.conftest import Spans

CHAT = {"model": "emu", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 5}


@asynccontextmanager
async def _served_app() -> AsyncIterator[TestClient]:
    """The API over one emulated `openai` node, built now (tracing's middleware is installed, or
    not, when the app is built)."""
    backend = EmulatedBackend(EmulatedOptions(model="emu"))
    await backend.start()
    config = NodeConfig(name="emu-node", engine="openai", model="emu", base_url=backend.base_url)
    balancer = Balancer([create_client(config)], node_configs={config.node_name: config})
    await balancer.start()
    test_client = TestClient(TestServer(create_app(balancer, ServerSettings())))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()
        await balancer.close()
        await backend.stop()


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    async with _served_app() as test_client:
        yield test_client


@pytest.fixture
async def traced_client(spans: Spans) -> AsyncIterator[TestClient]:
    """The app built while tracing is on (the middleware is installed at build time)."""
    async with _served_app() as test_client:
        yield test_client


async def test_streamed_chat_request_is_one_trace(traced_client: TestClient, spans: Spans) -> None:
    response = await traced_client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                                        headers={"x-request-id": "req-trace-1"})
    assert response.status == 200
    assert response.headers["X-Request-Id"] == "req-trace-1"
    await response.read()

    root = spans.one("POST /v1/chat/completions")
    assert root.parent is None and root.kind is SpanKind.SERVER
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.route"] == "/v1/chat/completions"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["blueprint.request_id"] == "req-trace-1"
    assert {span.context.trace_id for span in spans.all()} == {root.context.trace_id}

    admission = spans.child(root, "balancer.admission")
    assert admission.attributes["gen_ai.request.model"] == "emu"
    assert admission.attributes["blueprint.admission.queued"] is False
    route = spans.child(admission, "balancer.route")
    assert route.attributes["blueprint.node"] == "emu-node"
    assert route.attributes["blueprint.route.strategy"] == "least_loaded"
    assert "only candidate" in route.attributes["blueprint.route.reason"]

    generation = spans.child(root, "chat emu")
    assert generation.kind is SpanKind.CLIENT
    attrs = generation.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "emu"
    assert attrs["gen_ai.request.max_tokens"] == 5
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] == 5
    assert 0 < attrs["gen_ai.response.time_to_first_chunk"] < 5
    first = spans.child(generation, "gen_ai.first_chunk")
    assert first.start_time >= generation.start_time and first.end_time <= generation.end_time
    assert admission.end_time <= generation.start_time <= generation.end_time <= root.end_time


async def test_unary_chat_request_spans_and_generated_request_id(traced_client: TestClient,
                                                                 spans: Spans) -> None:
    response = await traced_client.post("/v1/chat/completions", json=CHAT)
    assert response.status == 200
    body = await response.json()
    rid = response.headers["X-Request-Id"]
    assert len(rid) == 32

    root = spans.one("POST /v1/chat/completions")
    assert root.attributes["blueprint.request_id"] == rid
    generation = spans.child(root, "chat emu")
    assert generation.attributes["gen_ai.response.id"] == body["id"]
    assert generation.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert generation.attributes["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"]
    spans.child(root, "balancer.admission")
    spans.child(root, "http.encode_response")


async def test_caller_traceparent_is_continued(traced_client: TestClient, spans: Spans) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = await traced_client.get("/v1/models",
                                       headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert response.status == 200
    root = spans.one("GET /v1/models")
    assert format(root.context.trace_id, "032x") == trace_id


async def test_tracing_off_costs_nothing(client: TestClient) -> None:
    assert not tracing.active()
    app = client.server.app
    assert len(app.middlewares) == 1  # the guard alone: no tracing layer
    assert tracing.span("x") is tracing.NO_SPAN and tracing.start_span("x") is tracing.NO_SPAN
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "plain-1"})
    assert response.status == 200 and response.headers["X-Request-Id"] == "plain-1"
    rounds = 100_000
    started = time.perf_counter()
    for _ in range(rounds):
        with tracing.span("x"):
            pass
    per_call = (time.perf_counter() - started) / rounds
    assert per_call < 5e-6, per_call  # ~0.1-0.8 us here; a real span costs tens of microseconds
