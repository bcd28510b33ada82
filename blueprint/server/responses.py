"""JSON responses and OpenAI-shaped error responses, built with as little work as possible."""

from __future__ import annotations

import json
import math

from aiohttp import web
from pydantic import BaseModel

from blueprint.errors import BlueprintError
from blueprint.llm.raw import RawChunk

JSON = "application/json"


def model_body(model: BaseModel) -> bytes:
    """A pydantic model as a JSON body (``None`` fields left out, as OpenAI does); an upstream's
    answer relayed as is (:class:`~blueprint.llm.raw.RawChunk`) is its own bytes."""
    return model.payload if isinstance(model, RawChunk) else model.model_dump_json(exclude_none=True).encode()


def model_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=model_body(model), status=status, content_type=JSON)


#: Seconds a 429 or 503 without its own estimate asks the client to wait.
DEFAULT_RETRY_AFTER_S = 5.0


def error_body(exc: BlueprintError) -> bytes:
    return json.dumps(exc.to_error_object()).encode()


def retry_after(exc: BlueprintError) -> str | None:
    """``Retry-After`` (whole seconds) for every 429 and 503, as OpenRouter asks: the error's own
    estimate where it has one."""
    if exc.http_status not in (429, 503):
        return None
    return str(max(1, math.ceil(getattr(exc, "retry_after", None) or DEFAULT_RETRY_AFTER_S)))


def error_response(exc: BlueprintError) -> web.Response:
    """``{"error": {...}}`` with the error's status (and :func:`retry_after`)."""
    response = web.Response(body=error_body(exc), status=exc.http_status, content_type=JSON)
    wait = retry_after(exc)
    if wait is not None:
        response.headers["Retry-After"] = wait
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
