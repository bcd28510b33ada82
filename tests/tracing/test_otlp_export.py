"""Tracing switched on by configuration exports real OTLP/HTTP protobuf to the configured
endpoint (a collector stand-in on loopback that decodes what it receives), and is off again
after shutdown."""

from __future__ import annotations

import asyncio

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from blueprint import tracing
from blueprint.tracing import TracingSettings


async def test_configured_endpoint_receives_the_spans() -> None:
    received: list[ExportTraceServiceRequest] = []
    headers: list[str | None] = []

    async def collect(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        headers.append(request.headers.get("x-collector-token"))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        assert tracing.configure_tracing(TracingSettings()) is False and not tracing.active()
        settings = TracingSettings(otlp_endpoint=f"http://127.0.0.1:{port}/v1/traces", service_name="op-test",
                                   headers={"x-collector-token": "t0k"})
        assert tracing.configure_tracing(settings) is True and tracing.active()
        with tracing.span("tangle.job", {"tangle.call_id": 7}), tracing.span("tangle.job.handle"):
            pass
        await asyncio.to_thread(tracing.shutdown_tracing)  # flushes the batch to the collector
        assert not tracing.active()
    finally:
        tracing.use_provider(None)
        await runner.cleanup()
    spans = [span for message in received for resource in message.resource_spans
             for scope in resource.scope_spans for span in scope.spans]
    assert {span.name for span in spans} == {"tangle.job", "tangle.job.handle"}
    resource = received[0].resource_spans[0].resource
    resource_attrs = {kv.key: kv.value.string_value for kv in resource.attributes}
    assert resource_attrs["service.name"] == "op-test"
    assert headers[0] == "t0k"
    by_name = {span.name: span for span in spans}
    assert by_name["tangle.job.handle"].parent_span_id == by_name["tangle.job"].span_id
