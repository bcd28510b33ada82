"""One trace per HTTP request: a server span around the whole response (a stream included),
continuing the caller's W3C ``traceparent`` when it sends one.

The middleware is installed by :func:`blueprint.server.app.create_app` only when tracing is on,
so an app built with tracing off has no extra layer at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from blueprint import tracing
from blueprint.tracing import attributes as attr

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def request_tracing(request_id_key: web.RequestKey[str]) -> list[Middleware]:
    """The tracing middleware when tracing is active, else nothing (``[*request_tracing(...)]``)."""
    if not tracing.active():
        return []
    from opentelemetry import propagate

    @web.middleware
    async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        parent = propagate.extract(request.headers)
        with tracing.span_in(f"{request.method} {route}", parent, {
            attr.HTTP_METHOD: request.method, attr.HTTP_ROUTE: route, attr.URL_PATH: request.path,
        }, kind="server") as span:
            trace_id = tracing.trace_id_hex(span)
            if trace_id is not None:
                structlog.contextvars.bind_contextvars(trace_id=trace_id)
            response = await handler(request)
            span.set_attribute(attr.HTTP_STATUS, response.status)
            rid = request.get(request_id_key)
            if rid is not None:
                span.set_attribute(attr.REQUEST_ID, rid)
            return response

    return [trace_request]
