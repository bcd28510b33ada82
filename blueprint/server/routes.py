"""The API's route table: one list that both the aiohttp router and the OpenAPI document are
built from, so the document cannot describe a route the server lacks (a test checks the reverse:
every route the app serves is documented)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from blueprint.llm.config import NodeConfig
from blueprint.llm.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChunk,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    ProviderModelList,
)
from blueprint.quoting.wire import QuoteRequest, QuoteResponse

Auth = Literal["none", "api", "admin"]

#: Statuses every authenticated route can answer with (besides its own).
AUTH_ERRORS = (401, 429)
INFERENCE_ERRORS = (400, 401, 404, 413, 429, 500, 503, 504)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One endpoint: how it is routed, guarded, counted and documented."""

    method: str
    path: str
    name: str  # also the handler's method name and the metrics ``route`` label
    summary: str
    auth: Auth = "api"
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    stream_chunk: type[BaseModel] | None = None  # SSE chunks when the request sets stream
    response_type: str = "application/json"
    success: int = 200
    errors: tuple[int, ...] = ()
    #: Counted in ``blueprint_http_in_flight`` and the request metrics.
    tracked: bool = True


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("POST", "/v1/chat/completions", "chat_completions", "Create a chat completion.",
              request=ChatCompletionRequest, response=ChatCompletion, stream_chunk=ChatCompletionChunk,
              errors=INFERENCE_ERRORS),
    RouteSpec("POST", "/v1/completions", "completions", "Create a text completion.",
              request=CompletionRequest, response=Completion, stream_chunk=CompletionChunk,
              errors=INFERENCE_ERRORS),
    RouteSpec("POST", "/v1/embeddings", "embeddings", "Create embeddings.",
              request=EmbeddingRequest, response=EmbeddingResponse, errors=INFERENCE_ERRORS),
    RouteSpec("GET", "/v1/models", "models",
              "List served models (OpenRouter's typed provider document 2.4, or the legacy flat format).",
              response=ProviderModelList, errors=AUTH_ERRORS),
    RouteSpec("POST", "/v1/quote", "quote",
              "Price a job and sign a TNT Core SignedJobQuote for submitJobFromQuote (503 without an "
              "operator key).", auth="none", request=QuoteRequest, response=QuoteResponse,
              errors=(400, 404, 413, 429, 503)),
    RouteSpec("GET", "/health", "health", "Liveness: the process answers.", auth="none", tracked=False),
    RouteSpec("GET", "/ready", "ready", "Readiness: at least one node is loaded and healthy.",
              auth="none", errors=(503,), tracked=False),
    RouteSpec("GET", "/metrics", "metrics", "Prometheus metrics.", auth="none",
              response_type="text/plain", tracked=False),
    RouteSpec("GET", "/openapi.json", "openapi", "This document.", auth="none", tracked=False),
    RouteSpec("GET", "/admin/nodes", "admin_list_nodes", "List LLM nodes and their state.",
              auth="admin", errors=AUTH_ERRORS),
    RouteSpec("POST", "/admin/nodes", "admin_add_node", "Add (and start) an LLM node.", auth="admin",
              request=NodeConfig, success=201, errors=(400, 401, 429, 500)),
    RouteSpec("POST", "/admin/nodes/{name}/drain", "admin_drain_node",
              "Stop routing new requests to a node; running ones finish.", auth="admin",
              errors=(401, 404, 429)),
    RouteSpec("DELETE", "/admin/nodes/{name}", "admin_remove_node", "Remove a node (after draining it).",
              auth="admin", errors=(401, 404, 429)),
)

BY_NAME: dict[str, RouteSpec] = {spec.name: spec for spec in ROUTES}
