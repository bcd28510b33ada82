"""``POST /v1/quote`` as the HTTP server hosts it: a :class:`QuoteService` attached to the app.

The server knows quotes only through this Protocol and the wire types
(:mod:`blueprint.quoting.wire`); pricing and signing live in :mod:`blueprint.quoting.quoter`,
which the daemon attaches with :func:`enable_quotes`. Without one the route answers 503.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from blueprint.llm.types import parse_request
from blueprint.quoting.wire import QuoteRequest, QuoteResponse, QuotesUnavailableError


class QuoteService(Protocol):
    """Prices and signs one quote (:class:`blueprint.quoting.quoter.Quoter`)."""

    async def quote(self, req: QuoteRequest) -> QuoteResponse: ...


QUOTER_KEY = web.AppKey("quoter", QuoteService)


def enable_quotes(app: web.Application, quoter: QuoteService) -> None:
    """Serve signed quotes on ``app`` (call before the app starts)."""
    app[QUOTER_KEY] = quoter


async def handle_quote(app: web.Application, body: bytes) -> web.Response:
    """The route's work (the app's guard maps errors to OpenAI error objects)."""
    quoter = app.get(QUOTER_KEY)
    if quoter is None:
        raise QuotesUnavailableError(
            "Quotes are disabled: this API runs without an operator key (quotes are served by "
            "`python -m blueprint run` with KEYSTORE_URI and SERVICE_ID).")
    response = await quoter.quote(parse_request(QuoteRequest, body))
    return web.Response(body=response.model_dump_json().encode(), content_type="application/json")
