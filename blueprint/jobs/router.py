"""The router: job index -> handler, and the guarantee that every job gets an answer.

``Router.route`` never raises for anything a job can cause: malformed ABI, bad JSON, an unknown
job index or model, a ceiling exceeded, an engine failure or a timeout all become an OpenAI-style
error object, encoded as the job's result like any response.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel

from blueprint import tracing
from blueprint.errors import BackendError, BackendTimeoutError, BlueprintError, InvalidRequestError
from blueprint.jobs import handlers
from blueprint.jobs.codec import JobIndex, JobInputs, decode_inputs, encode_result

log = structlog.get_logger(__name__)

Handler = Callable[[JobInputs, Any], Awaitable[BaseModel | dict[str, Any]]]

DEFAULT_HANDLERS: dict[int, Handler] = {
    JobIndex.CHAT: handlers.chat_completion,
    JobIndex.COMPLETION: handlers.text_completion,
    JobIndex.EMBEDDINGS: handlers.embeddings,
}


@dataclass(frozen=True, slots=True)
class RouteOutcome:
    """What a job produced: the encoded result, and whether it is an error object."""

    output: bytes
    response: str
    error_code: str | None
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.error_code is None


class Router:
    """Maps job indices to handlers. ``timeout_s`` bounds one handler call (None: unbounded)."""

    def __init__(self, routes: Mapping[int, Handler] | None = None, *,
                 timeout_s: float | None = 300.0) -> None:
        self._routes: dict[int, Handler] = dict(DEFAULT_HANDLERS if routes is None else routes)
        self.timeout_s = timeout_s

    def add(self, job_index: int, handler: Handler) -> None:
        self._routes[int(job_index)] = handler

    @property
    def job_indices(self) -> list[int]:
        return sorted(self._routes)

    async def route(self, job_index: int, inputs: bytes, ctx: Any) -> RouteOutcome:
        """Run the job's handler and encode its answer; errors become error objects."""
        started = time.perf_counter()
        try:
            with tracing.span("tangle.job.handle"):
                response = await self._call(job_index, inputs, ctx)
            if isinstance(response, BaseModel):
                with tracing.span("tangle.job.encode_result"):
                    text = response.model_dump_json(exclude_none=True)
            else:
                text = json.dumps(response, separators=(",", ":"))
            error_code = None
        except BlueprintError as exc:
            text, error_code = _error_text(exc), exc.code
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine bug must not stop the daemon: answer and go on
            log.exception("job_handler_crashed", job_index=job_index)
            error = BackendError(f"The engine failed: {type(exc).__name__}: {exc}")
            text, error_code = _error_text(error), error.code
        return RouteOutcome(output=encode_result(text), response=text, error_code=error_code,
                            elapsed_s=time.perf_counter() - started)

    @staticmethod
    def refuse(error: BlueprintError) -> RouteOutcome:
        """The outcome of a job answered with ``error`` without running its handler."""
        text = _error_text(error)
        return RouteOutcome(output=encode_result(text), response=text, error_code=error.code,
                            elapsed_s=0.0)

    async def _call(self, job_index: int, inputs: bytes, ctx: Any) -> BaseModel | dict[str, Any]:
        handler = self._routes.get(job_index)
        if handler is None:
            known = ", ".join(str(i) for i in self.job_indices)
            raise InvalidRequestError(f"Unknown job index {job_index} (this blueprint serves {known}).",
                                      code="unknown_job")
        decoded = decode_inputs(inputs)
        if self.timeout_s is None:
            return await handler(decoded, ctx)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await handler(decoded, ctx)
        except TimeoutError:
            raise BackendTimeoutError(f"The job did not finish within {self.timeout_s:g}s.") from None


def _error_text(error: BlueprintError) -> str:
    return json.dumps(error.to_error_object(), separators=(",", ":"))
