"""Job handlers: chat completion (0), text completion (1), embeddings (2).

A handler takes the decoded job inputs and the context, and returns an OpenAI-compatible
response. It never sees the chain: the router decodes the ABI and encodes the answer, the daemon
submits it.

Rules applied to every request that comes from the chain, decided here once:

* **The model is the one in the inputs.** It is what the caller paid for and what the service
  manager checked in ``onJobCall``. The request JSON may omit ``model``; when it names a
  *different* model the job is rejected (``model_mismatch``) rather than silently served by
  another model, because a caller who wrote two different names has a bug we should surface.
* **``maxTokens`` is the paid ceiling.** Absent ``max_tokens``/``max_completion_tokens`` become
  the ceiling (split over ``n`` choices and prompts); a request that could generate more than the
  ceiling in all (``max_tokens * n * prompts``) is rejected (``max_tokens_exceeds_paid``), never
  truncated, so the caller is not billed for an answer it did not ask for.
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


def _apply_ceiling(body: dict[str, Any], keys: tuple[str, ...], ceiling: int, fanout: int) -> None:
    """Fill or check the token limit under the paid ceiling (see the module docstring)."""
    if ceiling <= 0:
        raise InvalidRequestError("The job paid for 0 output tokens (maxTokens = 0).",
                                  code="max_tokens_exceeds_paid", param="max_tokens")
    asked = [body[key] for key in keys if body.get(key) is not None]
    if not asked:
        per_choice = ceiling // fanout
        if per_choice < 1:
            raise InvalidRequestError(
                f"maxTokens {ceiling} is less than one token for each of {fanout} choices.",
                code="max_tokens_exceeds_paid", param="max_tokens",
            )
        body[keys[0]] = per_choice
        return
    for value in asked:
        if isinstance(value, int) and not isinstance(value, bool) and value * fanout > ceiling:
            raise InvalidRequestError(
                f"The request asks for up to {value * fanout} tokens "
                f"({value} x {fanout} choices) but the job paid for {ceiling}.",
                code="max_tokens_exceeds_paid", param="max_tokens",
            )


def _fanout(body: dict[str, Any], prompts: int = 1) -> int:
    n = body.get("n")
    best_of = body.get("best_of")
    count = max(n if isinstance(n, int) and n > 0 else 1, best_of if isinstance(best_of, int) else 1)
    return count * max(prompts, 1)


def prepare_chat(inputs: JobInputs) -> ChatCompletionRequest:
    body = _body(inputs)
    _apply_ceiling(body, ("max_tokens", "max_completion_tokens"), inputs.max_tokens, _fanout(body))
    return parse_request(ChatCompletionRequest, body)


def prepare_completion(inputs: JobInputs) -> CompletionRequest:
    body = _body(inputs)
    prompt = body.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) else 1
    _apply_ceiling(body, ("max_tokens",), inputs.max_tokens, _fanout(body, prompts))
    return parse_request(CompletionRequest, body)


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
