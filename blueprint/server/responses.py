"""JSON responses and OpenAI-shaped error responses, built with as little work as possible."""

from __future__ import annotations

import json
import math

from aiohttp import web
from pydantic import BaseModel

from blueprint.errors import BlueprintError
from blueprint.llm.raw import RawChunk

JSON = "application/json"


def model_response(model: BaseModel, status: int = 200) -> web.Response:
    """A pydantic model as a JSON body (``None`` fields left out, as OpenAI does); an upstream's
    answer relayed as is (:class:`~blueprint.llm.raw.RawChunk`) goes out as its own bytes."""
    body = model.payload if isinstance(model, RawChunk) else model.model_dump_json(exclude_none=True).encode()
    return web.Response(body=body, status=status, content_type=JSON)


#: Seconds a 429 or 503 without its own estimate asks the client to wait.
DEFAULT_RETRY_AFTER_S = 5.0


def error_response(exc: BlueprintError) -> web.Response:
    """``{"error": {...}}`` with the error's status; ``Retry-After`` (whole seconds) on every 429
    and 503, as OpenRouter asks: the error's own estimate where it has one."""
    response = web.Response(body=json.dumps(exc.to_error_object()).encode(), status=exc.http_status,
                            content_type=JSON)
    if exc.http_status in (429, 503):
        retry_after = getattr(exc, "retry_after", None) or DEFAULT_RETRY_AFTER_S
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


class HttpStatusError(BlueprintError):
    """An HTTP-level refusal (unknown path, wrong method) in the OpenAI error shape."""

    error_type = "invalid_request_error"

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message, code=code)
        self.http_status = status


class UnsafeBindError(BlueprintError):
    """Serving on a public address without any API key, and without the explicit opt-out."""

    code = "unsafe_bind"
