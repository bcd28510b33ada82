"""Job handlers: chat completion (0), text completion (1), embeddings (2).

A handler takes the decoded job inputs and the context, and returns an OpenAI-compatible
response. It never sees the chain: the router decodes the ABI and encodes the answer, the daemon
submits it.

Rules applied to every request that comes from the chain, decided here once:

* **The model is the one in the inputs.** It is what the caller paid for and what the service
  manager checked in ``onJobCall``. The request JSON may omit ``model``; when it names a
  *different* model the job is rejected (``model_mismatch``) rather than silently served by
  another model, because a caller who wrote two different names has a bug we should surface.
* **``maxTokens`` is the paid ceiling, and it clamps.** The request is validated first (strict
  integers: ``"400"`` or ``400.0`` is refused, never coerced), then its token limit becomes
  "at most the ceiling": absent, or above ``maxTokens / (n x prompts)``, it is set to that share,
  so the whole answer never exceeds what was paid and a cut choice ends with
  ``finish_reason: "length"``. The payment is spent either way, so the caller gets what it paid
  for rather than a refusal; only a ceiling below one token per choice is refused
  (``max_tokens_exceeds_paid``).
* **Jobs are not streamed.** A job result is one transaction, so ``stream`` is turned off.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel

from blueprint import safejson
from blueprint.errors import InvalidRequestError
from blueprint.jobs.codec import JobInputs
from blueprint.llm.types import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    parse_request,
)


class LlmBackend(Protocol):
    """What a handler needs from the context's balancer (non-streaming calls only)."""

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion: ...

    async def complete(self, request: CompletionRequest) -> Completion: ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse: ...


class HandlerContext(Protocol):
    """The part of :class:`blueprint.context.Context` a handler uses."""

    @property
    def balancer(self) -> LlmBackend: ...


def _body(inputs: JobInputs) -> dict[str, Any]:
    """The request JSON as an object, with the model of the inputs filled in or checked."""
    try:
        body = safejson.loads(inputs.request)
    except ValueError as exc:
        raise InvalidRequestError(f"The job's request is not valid JSON: {exc}",
                                  code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The job's request must be a JSON object.", code="invalid_json")
    if not inputs.model:
        raise InvalidRequestError("The job's inputs name no model.", param="model")
    named = body.get("model")
    if named is not None and named != inputs.model:
        raise InvalidRequestError(
            f"The request names model {named!r} but the job paid for {inputs.model!r}.",
            code="model_mismatch", param="model",
        )
    body["model"] = inputs.model
    body["stream"] = False
    body.pop("stream_options", None)
    return body


def _per_choice(ceiling: int, fanout: int) -> int:
    """Tokens each choice may generate under the paid ceiling (``fanout`` choices in all)."""
    per_choice = ceiling // fanout
    if per_choice < 1:
        raise InvalidRequestError(
            f"The job paid for {ceiling} output tokens (maxTokens), less than one for each of its "
            f"{fanout} choices.", code="max_tokens_exceeds_paid", param="max_tokens")
    return per_choice


def _clamped(asked: int | None, limit: int) -> int:
    return limit if asked is None else min(asked, limit)


def prepare_chat(inputs: JobInputs) -> ChatCompletionRequest:
    """The validated chat request with its token limit clamped to the paid ceiling."""
    request = parse_request(ChatCompletionRequest, _body(inputs))
    limit = _per_choice(inputs.max_tokens, request.n)
    update: dict[str, int | None] = {"max_tokens": _clamped(request.max_tokens, limit)}
    if request.max_completion_tokens is not None:  # it wins over max_tokens: clamp it too
        update["max_completion_tokens"] = min(request.max_completion_tokens, limit)
    return request.model_copy(update=update)


def prepare_completion(inputs: JobInputs) -> CompletionRequest:
    """The validated completion request with ``max_tokens`` clamped to the paid ceiling (absent,
    it is the ceiling, not the wire default of 16)."""
    request = parse_request(CompletionRequest, _body(inputs))
    fanout = max(request.n, request.best_of or 1) * len(request.prompts())
    limit = _per_choice(inputs.max_tokens, fanout)
    asked = request.max_tokens if "max_tokens" in request.model_fields_set else None
    return request.model_copy(update={"max_tokens": _clamped(asked, limit)})


def prepare_embeddings(inputs: JobInputs) -> EmbeddingRequest:
    """Embeddings generate no tokens: ``maxTokens`` is not consulted (clients send 0)."""
    body = _body(inputs)
    body.pop("stream", None)
    return parse_request(EmbeddingRequest, body)


async def chat_completion(inputs: JobInputs, ctx: HandlerContext) -> BaseModel:
    """Job 0."""
    return await ctx.balancer.chat(prepare_chat(inputs))


async def text_completion(inputs: JobInputs, ctx: HandlerContext) -> BaseModel:
    """Job 1."""
    return await ctx.balancer.complete(prepare_completion(inputs))


async def embeddings(inputs: JobInputs, ctx: HandlerContext) -> BaseModel:
    """Job 2."""
    return await ctx.balancer.embed(prepare_embeddings(inputs))
