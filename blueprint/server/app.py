"""The aiohttp application: one guard middleware (request id, auth, rate limit, errors, metrics)
and the endpoint handlers, all talking to LLMs only through the balancer. The inference routes
are also served without aiohttp, by :meth:`Api.serve_front` for :mod:`blueprint.server.front`,
which shares the guard's parts (key check, body bounds, answers, errors) with this path.

The hot path is kept lean on purpose (the gateway must add well under a millisecond): the body is
parsed once by pydantic from bytes, responses are serialised once by pydantic, metric children are
pre-bound, and nothing is logged per request above debug.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from pydantic import BaseModel

from blueprint import tracing
from blueprint.errors import (
    AuthenticationError,
    BackendTimeoutError,
    BlueprintError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestTooLargeError,
)
from blueprint.llm.config import NodeConfig
from blueprint.llm.raw import RELAY_RAW
from blueprint.llm.types import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelInfo,
    ModelList,
    StreamOptions,
    parse_request,
)
from blueprint.server.auth import KeyRing, RateLimiter
from blueprint.server.auth_failures import AuthFailures, HasTransport, peer_of
from blueprint.server.console import install_console
from blueprint.server.deadlines import Deadlines
from blueprint.server.metrics import NO_MODEL, ServerMetrics
from blueprint.server.openapi import build_openapi
from blueprint.server.provider_document import model_document
from blueprint.server.quote_route import handle_quote
from blueprint.server.request_tracing import request_tracing
from blueprint.server.responses import (
    DEFAULT_RETRY_AFTER_S,
    JSON,
    HttpStatusError,
    error_body,
    error_response,
    model_body,
    model_response,
    retry_after,
)
from blueprint.server.routes import BY_NAME, ROUTES, Auth, RouteSpec
from blueprint.server.settings import ServerSettings
from blueprint.server.sse import SSE_HEADERS, StreamAnswer, StreamClient, StreamOutcome, stream_sse

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from blueprint.balancer import Balancer
    from blueprint.balancer.node import NodeState
    from blueprint.server.front import FrontRequest

log = structlog.get_logger(__name__)

#: Request keys (aiohttp ``web.Request`` is a mutable mapping scoped to one request).
REQUEST_ID = web.RequestKey("request_id", str)
MODEL = web.RequestKey("model", str)
OUTCOME = web.RequestKey("outcome", StreamOutcome)
BALANCER_KEY = web.AppKey("balancer", object)
API_KEY = web.AppKey("api", object)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type=JSON)


def _node_row(node: NodeState) -> dict[str, Any]:
    """A node as plain data, for ``/admin/nodes`` and the per-node gauges of ``/metrics``."""
    row = node.describe()
    row["healthy"] = node.breaker.available()
    snapshot = node.metrics()
    row["queued"] = snapshot.queued
    row["tokens_per_second"] = snapshot.tokens_per_second
    return row


class Api:
    """The handlers and the guard, bound to one balancer and one settings object."""

    def __init__(self, balancer: Balancer, settings: ServerSettings) -> None:
        self.balancer = balancer
        self.settings = settings
        self.keys = KeyRing(settings.api_key_values())
        self.admin_keys = KeyRing(settings.admin_key_values())
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        #: Failed key checks per client address (API, admin and the console's login share it).
        self.auth_failures = AuthFailures(settings.auth_failures_per_minute, settings.auth_failure_burst)
        self.quote_limiter = RateLimiter(settings.quote_rate_per_minute, settings.quote_burst,
                                         what="/v1/quote from this address")
        self.telemetry = ServerMetrics(self.node_rows)
        #: ``request_timeout_s`` of non-streamed requests (coarse: :mod:`blueprint.server.deadlines`).
        self._deadlines = Deadlines(settings.request_timeout_s)
        #: Accepts a request on the admin routes without a Bearer key (the console's session).
        self.admin_session: Callable[[web.Request], bool] | None = None
        self._openapi = json.dumps(build_openapi()).encode()
        #: Each model's ``created`` as first listed, so that it stays the same on every call.
        self._created: dict[str, int] = {}

    # ---- guard ------------------------------------------------------------------------------

    @web.middleware
    async def guard(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        started = time.perf_counter()
        rid = request.headers.get("X-Request-Id")
        if rid is None or not _REQUEST_ID_RE.match(rid):
            rid = os.urandom(16).hex()  # as unique as uuid4().hex, a tenth of its cost
        request[REQUEST_ID] = rid
        structlog.contextvars.bind_contextvars(request_id=rid)
        spec: RouteSpec | None = BY_NAME.get(request.match_info.route.name or "")
        tracked = spec is not None and spec.tracked
        if tracked:
            self.telemetry.in_flight_now += 1
        status = 499
        try:
            if spec is not None and spec.auth != "none":
                self._authorize(request, spec)
            response = await handler(request)
            if type(response) is web.Response:  # whole answers: only a stream has an outcome
                status = response.status
            else:
                outcome: StreamOutcome | None = request.get(OUTCOME)
                status = outcome.status if outcome is not None else response.status
            return response
        except BlueprintError as exc:
            status = exc.http_status
            if isinstance(exc, ModelNotFoundError):  # keep unknown names out of the metric labels
                request[MODEL] = NO_MODEL
            if status >= 500:
                log.warning("request failed", code=exc.code, status=status)
            return error_response(exc)
        except ConnectionResetError:  # a write found the client gone: close, answer nothing
            status = 499
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=499)  # aiohttp's write of it fails on the closing socket
        except web.HTTPException as exc:
            status = exc.status
            if status == 413:
                error: BlueprintError = RequestTooLargeError(
                    f"Request body larger than {self.settings.max_body_bytes} bytes.")
            else:
                error = HttpStatusError(status, exc.reason, _HTTP_CODES.get(status, "http_error"))
            return error_response(error)
        except Exception:
            status = 500
            log.exception("unhandled error")
            return error_response(BlueprintError("Internal server error."))
        finally:
            if tracked:
                self.telemetry.in_flight_now -= 1
                try:  # (a mapping's get is two Python calls: this is the hot path)
                    model = request[MODEL]
                except KeyError:
                    model = NO_MODEL
                self.telemetry.route(spec.name, model).finished(  # type: ignore[union-attr]
                    status, time.perf_counter() - started)

    def _authorize(self, request: web.Request, spec: RouteSpec) -> None:
        if spec.auth == "admin" and self.admin_session is not None and self.admin_session(request):
            return
        self._check_key(spec.auth, request.headers.get("Authorization"), request)

    def _check_key(self, auth: Auth, authorization: str | None, request: HasTransport) -> None:
        """The key check of both paths. The client's address is looked up only when some address
        is blocked or this check fails: a correct key costs nothing more here."""
        keys = self.admin_keys if auth == "admin" else self.keys
        if not keys.enabled:
            if auth == "admin":
                raise AuthenticationError(
                    "The admin API is off: the operator has configured no server.admin_keys.",
                    code="admin_disabled")
            return
        failures = self.auth_failures
        if failures.blocked:
            failures.refuse_if_blocked(peer_of(request))
        try:
            index = keys.check(authorization)
        except AuthenticationError:
            if authorization and failures.enabled:  # a key presented and wrong (none is no guess)
                failures.failed(peer_of(request))
            raise
        if self.limiter.enabled:
            self.limiter.check(index if auth == "api" else -1 - index)

    @staticmethod
    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        try:
            response.headers["X-Request-Id"] = request[REQUEST_ID]
        except KeyError:  # a request the guard never saw
            pass

    # ---- inference --------------------------------------------------------------------------

    async def _body(self, request: web.Request, limit: int | None = None) -> bytes:
        limit = limit or self.settings.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise RequestTooLargeError(f"Request body larger than {limit} bytes.")
        if request.content.is_eof():  # all of it arrived with the headers: take it as it is
            body = request.content.read_nowait()
        else:
            try:  # a client trickling its body (slowloris) must not hold a handler forever
                async with asyncio.timeout(self.settings.body_timeout_s):
                    body = await request.read()
            except TimeoutError:
                raise HttpStatusError(408, f"The request body did not arrive within "
                                           f"{self.settings.body_timeout_s:g} s.", "body_timeout") from None
        if len(body) > limit:
            raise RequestTooLargeError(f"Request body larger than {limit} bytes.")
        if request.content_type != "application/json":
            _refuse_content_type(request.headers.get("Content-Type"))
        return body


    async def _call(self, call: Awaitable[BaseModel]) -> BaseModel:
        try:
            return await self._deadlines.bound(call)
        except TimeoutError:
            raise BackendTimeoutError(f"The request ran past {self.settings.request_timeout_s:g} s.",
                                      code="request_timeout") from None

    async def _stream(self, request: StreamClient, response: StreamAnswer | None,
                      req: ChatCompletionRequest | CompletionRequest, route: str,
                      stream: Callable[[Any], AsyncIterator[BaseModel]],
                      outcome: StreamOutcome) -> StreamAnswer:
        started = time.perf_counter()
        wants_usage = req.wants_usage_in_stream()
        if not wants_usage:  # always ask the engine, for the token metrics
            req = req.model_copy(update={"stream_options": StreamOptions(include_usage=True)})
        return await stream_sse(request, stream(req), response=response, settings=self.settings,
                                metrics=self.telemetry, route=route, model=req.model,
                                include_usage=wants_usage, started=started, outcome=outcome)

    async def _once(self, req: BaseModel, route: str,
                    once: Callable[[Any], Awaitable[BaseModel]]) -> BaseModel:
        RELAY_RAW.set(True)  # this request's task only: a proxy node may answer with its bytes
        result = await self._call(once(req))
        self.telemetry.route(route, req.model).usage(getattr(result, "usage", None))  # type: ignore[attr-defined]
        return result

    async def _generate(self, request: web.Request, req: ChatCompletionRequest | CompletionRequest,
                        route: str, once: Callable[[Any], Awaitable[BaseModel]],
                        stream: Callable[[Any], AsyncIterator[BaseModel]]) -> web.StreamResponse:
        if req.stream:
            outcome = StreamOutcome()
            request[OUTCOME] = outcome
            return await self._stream(request, None, req, route, stream, outcome)  # type: ignore[return-value]
        result = await self._once(req, route, once)
        with tracing.span("http.encode_response"):
            return model_response(result)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        req = parse_request(ChatCompletionRequest, await self._body(request))
        request[MODEL] = req.model
        return await self._generate(request, req, "chat_completions", self.balancer.chat,
                                    self.balancer.chat_stream)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        req = parse_request(CompletionRequest, await self._body(request))
        request[MODEL] = req.model
        return await self._generate(request, req, "completions", self.balancer.complete,
                                    self.balancer.complete_stream)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        req = parse_request(EmbeddingRequest, await self._body(request))
        request[MODEL] = req.model
        result = await self._call(self.balancer.embed(req))
        self.telemetry.route("embeddings", req.model).usage(getattr(result, "usage", None))
        return model_response(result)

    # ---- the front (blueprint.server.front) -------------------------------------------------

    async def serve_front(self, request: FrontRequest) -> None:
        """A request the front took (chat, completions, embeddings): the guard's and the
        handler's work of the aiohttp path, in the same order, with the same checks, metrics,
        answers and errors, and no aiohttp request or response objects."""
        started = time.perf_counter()
        rid = request.request_id
        if rid is None or not _REQUEST_ID_RE.match(rid):
            rid = os.urandom(16).hex()
        structlog.contextvars.bind_contextvars(request_id=rid)
        route = request.route
        self.telemetry.in_flight_now += 1
        status = 499
        model = NO_MODEL
        headers = [("Content-Type", JSON), ("X-Request-Id", rid)]
        try:
            self._check_key("api", request.authorization, request)
            body = await request.read_body(self.settings.max_body_bytes, self.settings.body_timeout_s)
            if request.content_type is None or \
                    request.content_type.partition(";")[0].strip().lower() != "application/json":
                _refuse_content_type(request.content_type)
            if route == "embeddings":
                embedding = parse_request(EmbeddingRequest, body)
                model = embedding.model
                result = await self._once(embedding, route, self.balancer.embed)
            else:
                if route == "chat_completions":
                    req: ChatCompletionRequest | CompletionRequest = parse_request(
                        ChatCompletionRequest, body)
                    once, stream = self.balancer.chat, self.balancer.chat_stream
                else:
                    req = parse_request(CompletionRequest, body)
                    once, stream = self.balancer.complete, self.balancer.complete_stream
                model = req.model
                if req.stream:
                    outcome = StreamOutcome()
                    try:
                        answer = request.sse_response({**SSE_HEADERS, "X-Request-Id": rid})
                        await self._stream(request, answer, req, route, stream, outcome)
                        if answer.prepared:  # after an error event: the body's end, as aiohttp writes it
                            with contextlib.suppress(ConnectionResetError):
                                await answer.write_eof()
                    finally:
                        status = outcome.status
                    return
                result = await self._once(req, route, once)
            request.respond(200, model_body(result), headers)
            status = 200
        except BlueprintError as exc:
            status = exc.http_status
            if isinstance(exc, ModelNotFoundError):  # keep unknown names out of the metric labels
                model = NO_MODEL
            if status >= 500:
                log.warning("request failed", code=exc.code, status=status)
            wait = retry_after(exc)
            if wait is not None:
                headers.append(("Retry-After", wait))
            request.respond(status, error_body(exc), headers)
        except ConnectionResetError:  # a write found the client gone: the front closes
            status = 499
        except Exception:
            status = 500
            log.exception("unhandled error")
            if not request.committed:  # never a second head inside a stream that began
                request.respond(500, error_body(BlueprintError("Internal server error.")), headers)
        finally:
            self.telemetry.in_flight_now -= 1
            self.telemetry.route(route, model).finished(status, time.perf_counter() - started)

    # ---- catalog and probes -----------------------------------------------------------------

    def catalog(self) -> list[ModelInfo]:
        """The balancer's models with the operator's ``model_catalog`` extras laid over them;
        ``created`` is fixed at a model's first listing (engines that cannot tell report the
        time of asking), unless the operator declared it."""
        extras = self.settings.model_catalog
        infos = []
        for info in self.balancer.models():
            created = self._created.setdefault(info.id, info.created)
            if created != info.created:
                info = info.model_copy(update={"created": created})
            infos.append(extras[info.id].apply(info) if info.id in extras else info)
        return infos

    async def models(self, request: web.Request) -> web.StreamResponse:
        catalog = self.catalog()
        if self.settings.models_document == "legacy":
            return model_response(ModelList(data=catalog))
        extras = self.settings.model_catalog
        documents = [model_document(info, extras[info.id].policy() if info.id in extras else None)
                     for info in catalog]
        return _json({"data": documents})

    async def health(self, request: web.Request) -> web.StreamResponse:
        return _json({"status": "ok"})

    def node_rows(self) -> list[dict[str, Any]]:
        return [_node_row(state) for state in self.balancer.nodes()]

    async def ready(self, request: web.Request) -> web.StreamResponse:
        rows = self.node_rows()
        healthy = [row["name"] for row in rows if row.get("healthy") and not row.get("draining")]
        body = {"status": "ready" if healthy else "not_ready", "healthy_nodes": healthy,
                "nodes": len(rows)}
        response = _json(body, 200 if healthy else 503)
        if not healthy:
            response.headers["Retry-After"] = str(int(DEFAULT_RETRY_AFTER_S))
        return response

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.telemetry.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._openapi, content_type=JSON)

    async def quote(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/quote`` (:mod:`blueprint.server.quote_route`; 503 until ``enable_quotes``).
        It needs no key, so it is bounded per client address and by its own body size."""
        if self.quote_limiter.enabled:
            self.quote_limiter.check(request.remote or "unknown")
        return await handle_quote(request.app, await self._body(request, self.settings.quote_max_body_bytes))

    # ---- admin ------------------------------------------------------------------------------

    async def admin_list_nodes(self, request: web.Request) -> web.StreamResponse:
        return _json({"data": self.node_rows()})

    def _one_process(self) -> None:
        """Node changes over HTTP reach one worker only: refused when there are several."""
        if self.settings.workers > 1:
            raise HttpStatusError(409, f"This server runs {self.settings.workers} worker processes and "
                                       "an admin call reaches one: change nodes in balancer.nodes_file.",
                                  "multiple_workers")

    async def admin_add_node(self, request: web.Request) -> web.StreamResponse:
        from blueprint.llm.registry import create_client

        self._one_process()
        config = parse_request(NodeConfig, await self._body(request))
        client = create_client(config, import_paths=False)  # never import what a request names
        await self.balancer.add_node(client, config)
        log.info("node added", node=config.node_name, engine=config.engine, model=config.model)
        return _json({"name": config.node_name, "models": [m.id for m in client.models()]}, 201)

    def _row(self, name: str) -> dict[str, Any]:
        for row in self.node_rows():
            if row.get("name") == name:
                return row
        raise HttpStatusError(404, f"No node named {name!r}.", "node_not_found")

    async def admin_drain_node(self, request: web.Request) -> web.StreamResponse:
        self._one_process()
        name = request.match_info["name"]
        self._row(name)
        await self.balancer.drain_node(name)
        log.info("node draining", node=name)
        return _json(self._row(name))

    async def admin_remove_node(self, request: web.Request) -> web.StreamResponse:
        self._one_process()
        name = request.match_info["name"]
        self._row(name)
        await self.balancer.remove_node(name)
        log.info("node removed", node=name)
        return _json({"name": name, "removed": True})


def _refuse_content_type(given: str | None) -> None:
    """A form post or text is never a request body."""
    raise InvalidRequestError(f"Send the body as JSON with 'Content-Type: application/json' (got "
                              f"{given or 'none'!r}).", code="unsupported_content_type")


def include_metrics(app: web.Application, *collectors: Collector) -> None:
    """Serve ``collectors`` on the app's ``GET /metrics`` next to the HTTP metrics (the daemon's
    job registry and chain collector); they are read at scrape time, on the event loop."""
    api: Api = app[API_KEY]  # type: ignore[assignment]
    for collector in collectors:
        api.telemetry.include(collector)


def create_app(balancer: Balancer, settings: ServerSettings | None = None) -> web.Application:
    """The API as an aiohttp app, ready to mount or to run (see :func:`blueprint.server.serve`).
    The balancer's lifetime is the caller's (start it before, close it after)."""
    settings = settings or ServerSettings()
    api = Api(balancer, settings)
    app = web.Application(middlewares=[*request_tracing(REQUEST_ID), api.guard],
                          client_max_size=settings.max_body_bytes)
    app[API_KEY] = api
    app[BALANCER_KEY] = balancer
    for spec in ROUTES:
        app.router.add_route(spec.method, spec.path, getattr(api, spec.name), name=spec.name)
    app.on_response_prepare.append(api.on_prepare)
    install_console(app, api)
    return app
