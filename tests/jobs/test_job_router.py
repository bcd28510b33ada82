"""The router and handlers: every job gets an answer, the model and the paid ceiling are enforced.

The balancer here is a recording double (the real balancer and engines are exercised by the
end-to-end tests): it lets these tests see exactly which request a handler sends.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from blueprint.errors import ModelNotFoundError, NoHealthyNodeError
from blueprint.jobs.codec import decode_result_json, encode_inputs
from blueprint.jobs.router import Router
from blueprint.llm.types import (
    ChatChoice,
    ChatCompletion,
    ChatMessage,
    Completion,
    CompletionChoice,
    Embedding,
    EmbeddingResponse,
    Usage,
)


@dataclass
class RecordingBalancer:
    models: tuple[str, ...] = ("tiny",)
    fail_with: Exception | None = None
    delay_s: float = 0.0
    seen: list[Any] = field(default_factory=list)

    async def _check(self, request: Any) -> None:
        self.seen.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        if request.model not in self.models:
            raise ModelNotFoundError(request.model)

    async def chat(self, request: Any) -> ChatCompletion:
        await self._check(request)
        return ChatCompletion(model=request.model, usage=Usage.of(3, 2), choices=[
            ChatChoice(message=ChatMessage(role="assistant", content="ok"), finish_reason="stop")])

    async def complete(self, request: Any) -> Completion:
        await self._check(request)
        return Completion(model=request.model, usage=Usage.of(3, 2),
                          choices=[CompletionChoice(text="ok", finish_reason="length")])

    async def embed(self, request: Any) -> EmbeddingResponse:
        await self._check(request)
        return EmbeddingResponse(model=request.model, data=[Embedding(index=0, embedding=[0.5, 0.25])])


@dataclass
class Ctx:
    balancer: RecordingBalancer = field(default_factory=RecordingBalancer)


CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def run(job: int, inputs: bytes, ctx: Ctx | None = None, router: Router | None = None):
    ctx = ctx or Ctx()
    outcome = await (router or Router()).route(job, inputs, ctx)
    return outcome, decode_result_json(outcome.output), ctx


async def test_chat_fills_model_and_ceiling() -> None:
    outcome, result, ctx = await run(0, encode_inputs("tiny", 32, CHAT))
    assert outcome.ok and result["object"] == "chat.completion" and result["usage"]["total_tokens"] == 5
    request = ctx.balancer.seen[0]
    assert request.model == "tiny" and request.requested_max_tokens() == 32 and request.stream is False


async def test_completion_default_is_the_ceiling_not_16() -> None:
    outcome, result, ctx = await run(1, encode_inputs("tiny", 40, {"prompt": "Hello"}))
    assert outcome.ok and result["choices"][0]["text"] == "ok"
    assert ctx.balancer.seen[0].max_tokens == 40


async def test_ceiling_split_over_choices_and_prompts() -> None:
    _, _, ctx = await run(1, encode_inputs("tiny", 40, {"prompt": ["a", "b"], "n": 2}))
    assert ctx.balancer.seen[0].max_tokens == 10


@pytest.mark.parametrize(("job", "body", "sent"), [
    (0, {**CHAT, "max_tokens": 33}, 32), (0, {**CHAT, "max_completion_tokens": 100}, 32),
    (0, {**CHAT, "max_tokens": 20, "n": 2}, 16), (1, {"prompt": ["a", "b"], "max_tokens": 100}, 16),
    (1, {"prompt": "a", "max_tokens": 9, "n": 3}, 9), (0, {**CHAT, "max_tokens": 5}, 5),
])
async def test_the_paid_ceiling_clamps(job: int, body: dict, sent: int) -> None:
    """Issue 13 point 3: asking for more than was paid means "at most what was paid" (``n`` and
    prompts share it), never a refusal; the engine reports ``finish_reason: "length"`` when cut."""
    outcome, _result, ctx = await run(job, encode_inputs("tiny", 32, body))
    assert outcome.ok
    assert ctx.balancer.seen[0].requested_max_tokens() == sent


@pytest.mark.parametrize("field", [{"max_tokens": "400"}, {"max_tokens": 400.0}, {"max_tokens": True},
                                   {"n": "16"}, {"n": 2.0}, {"max_completion_tokens": "9"},
                                   {"seed": "7"}, {"top_k": 5.0}, {"temperature": "0.5"}])
async def test_integers_are_integers(field: dict) -> None:
    """Issue 11 row 4: a quote paid for 1 output token produced 83 because ``"max_tokens": "400"``
    slipped past the paid-ceiling check and was then coerced. Such values are refused."""
    outcome, result, ctx = await run(0, encode_inputs("tiny", 1, {**CHAT, **field}))
    assert not outcome.ok and result["error"]["type"] == "invalid_request_error", result
    assert ctx.balancer.seen == []


async def test_less_than_a_token_per_choice_is_refused() -> None:
    _, result, ctx = await run(1, encode_inputs("tiny", 3, {"prompt": ["a", "b"], "n": 2}))
    assert result["error"]["code"] == "max_tokens_exceeds_paid" and ctx.balancer.seen == []


async def test_zero_ceiling_for_a_generating_job() -> None:
    _, result, _ = await run(0, encode_inputs("tiny", 0, CHAT))
    assert result["error"]["code"] == "max_tokens_exceeds_paid"


async def test_embeddings_ignore_max_tokens() -> None:
    outcome, result, _ctx = await run(2, encode_inputs("tiny", 0, {"input": "hello"}))
    assert outcome.ok and result["data"][0]["embedding"] == [0.5, 0.25]


async def test_model_mismatch_rejected() -> None:
    _, result, ctx = await run(0, encode_inputs("tiny", 8, {**CHAT, "model": "other"}))
    assert result["error"]["code"] == "model_mismatch" and ctx.balancer.seen == []


@pytest.mark.parametrize(("job", "inputs", "code"), [
    (0, b"\x01\x02", "malformed_inputs"),
    (0, encode_inputs("tiny", 8, "{not json"), "invalid_json"),
    (0, encode_inputs("tiny", 8, "[1, 2]"), "invalid_json"),
    (0, encode_inputs("tiny", 8, {"messages": []}), "invalid_request"),
    (0, encode_inputs("nope", 8, CHAT), "model_not_found"),
    (7, encode_inputs("tiny", 8, CHAT), "unknown_job"),
])
async def test_every_failure_is_an_error_result(job: int, inputs: bytes, code: str) -> None:
    outcome, result, _ = await run(job, inputs)
    assert outcome.error_code == code
    assert set(result) == {"error"} and result["error"]["code"] == code and result["error"]["message"]


async def test_engine_failures_are_answered() -> None:
    ctx = Ctx(RecordingBalancer(fail_with=NoHealthyNodeError("all nodes down")))
    _, result, _ = await run(0, encode_inputs("tiny", 8, CHAT), ctx)
    assert result["error"] == {"message": "all nodes down", "type": "server_error", "code": "no_healthy_node"}
    ctx = Ctx(RecordingBalancer(fail_with=RuntimeError("CUDA exploded")))
    _, result, _ = await run(0, encode_inputs("tiny", 8, CHAT), ctx)
    assert result["error"]["code"] == "backend_error" and "CUDA exploded" in result["error"]["message"]


async def test_timeout_is_answered() -> None:
    ctx = Ctx(RecordingBalancer(delay_s=5))
    outcome, result, _ = await run(0, encode_inputs("tiny", 8, CHAT), ctx, Router(timeout_s=0.05))
    assert result["error"]["code"] == "backend_timeout" and outcome.elapsed_s < 2


async def test_custom_route() -> None:
    async def echo(inputs, ctx):
        return {"echo": json.loads(inputs.request)}

    router = Router({9: echo})
    _, result, _ = await run(9, encode_inputs("m", 1, {"a": 1}), router=router)
    assert result == {"echo": {"a": 1}} and router.job_indices == [9]
